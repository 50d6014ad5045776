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
