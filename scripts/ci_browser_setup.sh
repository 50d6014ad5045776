#!/usr/bin/env bash
# Install what tests/test_browser.py needs on a fresh Debian machine: Debian's chromium package and the
# playwright Python package (pinned). The test drives /usr/bin/chromium through Playwright's executable_path,
# so `playwright install` (which downloads a browser build) is never run. About 1 minute on a fresh machine;
# seconds when both are already there.
set -euo pipefail
PLAYWRIGHT_VERSION=1.65.2
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
python -m pip install --quiet --disable-pip-version-check "playwright==${PLAYWRIGHT_VERSION}"
/usr/bin/chromium --version 2>/dev/null || true
python -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
