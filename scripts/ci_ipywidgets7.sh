#!/usr/bin/env bash
# Run the headless widget tests under ipywidgets 7.7, the version Google Colab ships.
#
# A throwaway venv, made by the active interpreter (`python` on PATH, or $PYTHON), sees every package of the
# active environment (torch, diffusers, the backends, pytest, quantkit itself) through a .pth file that adds the
# active environment's site-packages folders after its own; ipywidgets 7.7 (with widgetsnbextension 3 and
# jupyterlab_widgets 1) goes into the venv and shadows the 8.x there. This works when the active environment is
# itself a venv or a conda env (`python -m venv --system-site-packages` would link the *base* interpreter's
# packages instead, without torch or pytest). The venv is made under a new folder (mktemp -d) each run and
# removed on exit. About 5 s to set up, then the test time (~1 min on 2 cores).
#
# Usage: bash scripts/ci_ipywidgets7.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
start=$(date +%s)
work="$(mktemp -d "${TMPDIR:-/tmp}/quantkit-ipywidgets7.XXXXXX")"
trap 'rm -rf "$work"' EXIT
venv="$work/venv"

echo "[ipywidgets7] venv in $work, seeing the packages of $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m venv --without-pip "$venv"   # pip comes from the active environment, through the .pth below
"$PYTHON" - "$venv" <<'EOF'
import site, subprocess, sys
# the active environment's site folders, in its own order (user site included when it is on sys.path)
dirs = [d for d in sys.path if d in {*site.getsitepackages(), site.getusersitepackages()}]
venv_site = subprocess.run([sys.argv[1] + "/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           check=True, capture_output=True, text=True).stdout.strip()
# `import` lines of a .pth run at startup: addsitedir also runs those folders' own .pth files (editable installs)
with open(venv_site + "/_quantkit_active_env.pth", "w") as f:
    f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")
print("[ipywidgets7] the venv sees:", ", ".join(dirs))
EOF
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'ipywidgets==7.7.*'
"$venv/bin/python" -c "import ipywidgets, sys; v = ipywidgets.__version__; print('[ipywidgets7] ipywidgets', v, 'from', ipywidgets.__file__); sys.exit(not v.startswith('7.7'))"
# one process (addopts emptied: no -n): spread over 2 workers, each built the dashboard's pipeline fixture and the
# step took 87 s instead of 69
"$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_widgets.py "$@"
echo "[ipywidgets7] widget tests under ipywidgets 7.7 finished in $(( $(date +%s) - start )) s"
