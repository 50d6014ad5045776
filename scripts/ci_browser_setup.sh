#!/usr/bin/env bash
# Install what tests/test_browser.py needs: Debian's chromium package and the playwright Python package (pinned).
# The test drives /usr/bin/chromium through Playwright's executable_path, so `playwright install` (which downloads
# a browser build) is never run. About 1 minute on a fresh machine; seconds when both are already there.
#
# chromium is an OS package: it is installed (apt-get, as root or through sudo) only in CI (CI=true) or with
# --system. Otherwise this script says what is missing and stops; tests/test_browser.py then skips, with the reason.
#
# Usage: bash scripts/ci_browser_setup.sh [--system]
set -euo pipefail
PLAYWRIGHT_VERSION=1.65.2
PYTHON="${PYTHON:-python}"
CHROMIUM="${QUANTKIT_CHROMIUM:-/usr/bin/chromium}"
system="${CI:-false}"
for arg in "$@"; do
    case "$arg" in
        --system) system=true ;;
        *) echo "[browser] unknown argument '$arg'; allowed: --system" >&2; exit 2 ;;
    esac
done
say() { echo "[browser] $*"; }

if [ ! -x "$CHROMIUM" ]; then
    if [ "$system" != true ]; then
        say "$CHROMIUM is missing and OS packages are installed only with CI=true or --system:" \
            "tests/test_browser.py will be skipped. To install it: bash scripts/ci_browser_setup.sh --system"
        exit 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "$CHROMIUM is missing and there is no apt-get: install Chromium yourself (or set QUANTKIT_CHROMIUM)" >&2
        exit 1
    fi
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "apt-get needs root, and sudo is missing" >&2; exit 1; }
        as_root=(sudo)
    fi
    say "installing Debian's chromium and fonts-dejavu-core (apt-get${as_root[*]:+ through sudo})"
    export DEBIAN_FRONTEND=noninteractive
    ${as_root[@]+"${as_root[@]}"} apt-get update -qq
    ${as_root[@]+"${as_root[@]}"} apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
say "installing playwright==${PLAYWRIGHT_VERSION} (the Python package only; no browser download)"
"$PYTHON" -m pip install --quiet --disable-pip-version-check "playwright==${PLAYWRIGHT_VERSION}"
say "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM --version failed")"
"$PYTHON" -c "import importlib.metadata as m; print('[browser] playwright', m.version('playwright'))"
