#!/usr/bin/env bash
# Run the headless widget tests under ipywidgets 7.7, the version Google Colab ships.
#
# A venv with --system-site-packages reuses everything already installed (torch, diffusers, the backends,
# pytest, quantkit itself) and adds only ipywidgets 7.7 (with its widgetsnbextension 3 / jupyterlab_widgets 1),
# which shadow the 8.x ones inside the venv. About 10 s to create, then the test time (~1 min on 2 cores).
#
# Usage: bash scripts/ci_ipywidgets7.sh [extra pytest args]     (VENV=... to choose where the venv goes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-${TMPDIR:-/tmp}/quantkit-ipywidgets7}"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    python -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'ipywidgets==7.7.*'
"$VENV/bin/python" -c "import ipywidgets, sys; v = ipywidgets.__version__; print('ipywidgets', v); sys.exit(not v.startswith('7.7'))"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_widgets.py "$@"
echo "ipywidgets 7.7 widget tests finished in $(( $(date +%s) - start )) s"
