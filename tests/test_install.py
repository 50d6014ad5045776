"""A fresh virtualenv made by the active interpreter can install quantkit and run its tests, offline.

The newcomer's failure this guards against: `python -m venv --system-site-packages`, run from a venv, links the
*base* interpreter's packages (no torch, no pytest plugins), so the tests in it stopped on
`unrecognized arguments: --nbval-lax`. scripts/ci_ipywidgets7.sh therefore makes its venv see the active
environment through a .pth file; this test builds a venv the same way, installs quantkit into it (editable, no
dependencies, no build isolation, no index: nothing is downloaded) and runs tests/test_import.py with it.
About 15-30 s on 2 cores.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def active_site_dirs() -> list[str]:
    """The active environment's site folders, in sys.path order (what scripts/ci_ipywidgets7.sh adds)."""
    wanted = {*site.getsitepackages(), site.getusersitepackages()}
    return [d for d in sys.path if d in wanted]


def make_venv(folder: Path) -> Path:
    """A venv at `folder` (no pip of its own) that sees the active environment's packages after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = "; ".join(f"site.addsitedir({d!r})" for d in active_site_dirs())
    (Path(purelib) / "_quantkit_active_env.pth").write_text(f"import site; {lines}\n")
    return python


def run(cmd: list, cwd: Path, timeout: float = 80) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    return p.stdout


def test_a_fresh_venv_installs_quantkit_and_runs_its_tests(tmp_path):
    python = make_venv(tmp_path / "venv")
    # the active environment's packages are visible, the venv is its own prefix
    out = run([python, "-c", "import sys, torch, pytest, nbval; print(sys.prefix)"], cwd=tmp_path)
    assert Path(out.strip()) == tmp_path / "venv"

    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", REPO],
        cwd=tmp_path, timeout=120)  # fmt: skip
    # from outside the checkout, so that quantkit comes from the install, not from the current folder
    out = run([python, "-c", "import quantkit, sys; print(quantkit.__file__)"], cwd=tmp_path)
    assert Path(out.strip()).is_relative_to(REPO / "quantkit")
    out = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", REPO / "tests" / "test_import.py"],
        cwd=tmp_path,
    )
    assert "2 passed" in out
