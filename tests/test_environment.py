"""environment.yml, requirements-ci.txt and pyproject.toml name the same stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:  # Python 3.11+; requires-python is >= 3.10, where the same parser is the tomli package
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on 3.10 only
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*[=]{1,2}\s*([0-9][^\s#]*)\s*", str(line))
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_pins_match_ci_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {**_pins(conda), **_pins(pip)}
    ci_pins = _pins((ROOT / "requirements-ci.txt").read_text().splitlines())
    assert env_pins.pop("torch") == "2.13.0"
    env_pins.pop("python")
    assert env_pins == ci_pins


def test_pyproject_dependencies_are_all_pinned_for_ci():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!\[ ]", d)[0].lower().replace("_", "-") for d in project["dependencies"]]
    for extra in ("backends", "notebooks"):
        names += [
            re.split(r"[<>=!\[ ]", d)[0].lower().replace("_", "-") for d in project["optional-dependencies"][extra]
        ]
    ci = _pins((ROOT / "requirements-ci.txt").read_text().splitlines())
    missing = [n for n in names if n not in ci and n not in ("torch", "huggingface-hub")]
    assert missing == [], f"in pyproject.toml but not pinned in requirements-ci.txt / environment.yml: {missing}"


def _closure(names: set[str]) -> set[str]:
    """The distributions `names` install: themselves and everything they require, as importlib.metadata sees them."""
    from importlib import metadata

    seen, todo = set(), [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


def test_every_third_party_import_is_installed_by_ci_requirements():
    """A module the package, its tests or its notebook tools import comes from a pin in requirements-ci.txt (or from
    what those pins require): a missing pin fails here, not as a ModuleNotFoundError halfway through CI."""
    import ast
    import sys
    from importlib import metadata

    owners = metadata.packages_distributions()
    installed = _closure(set(_pins((ROOT / "requirements-ci.txt").read_text().splitlines())) | {"torch"})
    # optional, found with importlib.util.find_spec before use (LPIPS in quantkit.measure.quality); playwright is the
    # browser test's, installed by scripts/ci_browser_setup.sh
    optional = {"lpips", "torchmetrics", "playwright"}
    local = {"quantkit", "tests", "lab", "conftest"} | {p.stem for p in (ROOT / "tests").rglob("*.py")}
    local |= {p.stem for p in (ROOT / "notebooks" / "tools").glob("*.py")}
    missing: dict[str, str] = {}
    files = [*(ROOT / "quantkit").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "notebooks").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in local or top in optional or top == "tomli":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
                if not dists & installed:
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not installed by requirements-ci.txt (module: first file): {missing}"
