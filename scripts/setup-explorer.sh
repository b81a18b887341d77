#!/usr/bin/env bash
# Set-up of the explorer web page (issue 8). Idempotent; a second run takes well under a second.
#
#   scripts/setup-explorer.sh            # npm ci of api/explorer (Leaflet), when the lock changed
#   scripts/setup-explorer.sh --browser  # also the headless browser the tests drive:
#                                        # Debian's chromium + chromium-driver (apt-get, as root)
#
# Third-party JavaScript is installed from the npm registry into api/explorer/node_modules
# (never committed; `embcat serve` serves the few dist files it needs from there). The page
# makes no request outside the server at run time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPLORER="$ROOT/api/explorer"
WANT_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --browser) WANT_BROWSER=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "setup-explorer: unknown argument $arg" >&2; exit 2 ;;
    esac
done

# --- JavaScript dependencies (Leaflet) -------------------------------------------------
STAMP="$EXPLORER/node_modules/.embcat-lock.sha256"
lock_sum="$(sha256sum "$EXPLORER/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$lock_sum" ]]; then
    :
else
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup-explorer: npm is not installed; install Node.js 18+ (Debian: apt-get install npm)" >&2
        exit 1
    fi
    echo "setup-explorer: npm ci in api/explorer"
    (cd "$EXPLORER" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    echo "$lock_sum" > "$STAMP"
fi

# --- Headless browser for the browser tests ----------------------------------------------
if [[ "$WANT_BROWSER" == 1 ]]; then
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        exit 0
    fi
    if [[ ! -f /etc/debian_version ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-explorer: the browser tests need Chromium and chromedriver at" \
             "/usr/bin/chromium and /usr/bin/chromedriver; this is not a Debian system," \
             "install them by hand" >&2
        exit 1
    fi
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO="sudo -n"
        else
            echo "setup-explorer: installing chromium needs root: run" \
                 "'sudo apt-get install -y chromium chromium-driver'" >&2
            exit 1
        fi
    fi
    echo "setup-explorer: apt-get install chromium chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; then
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
    fi
fi
