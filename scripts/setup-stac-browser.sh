#!/usr/bin/env bash
# Set-up of STAC Browser for the client check of issue 19. Idempotent: a second run with the
# same version and the same build already present takes well under a second.
#
#   scripts/setup-stac-browser.sh          # npm install + build into build/stac-browser/dist
#
# STAC Browser (npm package @radiantearth/stac-browser) ships source only and no lock file.
# Its install resolves ol-stac 1.6, which does not build against the ol ~10.6 it also pulls
# (`fromProjectionDefinition` missing), so ol-stac is pinned to 1.1.0. The build is never
# committed (build/ is ignored); the catalogue URL is set at run time through dist/config.js
# (STAC Browser reads window.STAC_BROWSER_CONFIG), so one build serves any port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${STAC_BROWSER_VERSION:-4.0.1}"
WORK="$ROOT/build/stac-browser"
DIST="$WORK/dist"
STAMP="$WORK/.embcat-built"

case "${1:-}" in
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    "") ;;
    *) echo "setup-stac-browser: unknown argument $1" >&2; exit 2 ;;
esac

BUILD_ID="$VERSION+offline-1"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$BUILD_ID" && -f "$DIST/index.html" ]]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "setup-stac-browser: npm is not installed; install Node.js 20+ (Debian: apt-get install npm)" >&2
    exit 1
fi

mkdir -p "$WORK"
APP="$WORK/app"
if [[ ! -f "$APP/package.json" ]]; then
    echo "setup-stac-browser: npm pack @radiantearth/stac-browser@$VERSION"
    (cd "$WORK" && rm -rf package app && npm pack --silent "@radiantearth/stac-browser@$VERSION" >/dev/null \
        && tar xzf radiantearth-stac-browser-"$VERSION".tgz && mv package app \
        && rm -f radiantearth-stac-browser-"$VERSION".tgz)
fi
cd "$APP"
if [[ ! -d node_modules/ol-stac ]] || ! grep -q '"version": "1.1.0"' node_modules/ol-stac/package.json; then
    echo "setup-stac-browser: npm install (its dependencies, ol-stac pinned to 1.1.0)"
    npm install --no-audit --no-fund --loglevel=error
    npm install --no-audit --no-fund --loglevel=error --no-save ol-stac@1.1.0
fi
# No basemap: its tiles come from the internet (tile.openstreetmap.org), which the machines
# that run the tests cannot reach; the maps show the footprints on a blank background.
if ! grep -q "embcat: no basemap" basemaps.config.js; then
    cat > basemaps.config.js <<'JS'
// embcat: no basemap (offline); STAC Browser's own file names OpenStreetMap tiles.
export default function configureBasemap() {
  return [];
}
JS
fi
echo "setup-stac-browser: npm run build"
rm -rf dist
npm run build -- --historyMode=hash
rm -rf "$DIST"
cp -r "$APP/dist" "$DIST"
# Runtime configuration (catalogUrl) from dist/config.js: the build leaves its script tag
# commented out (docs/options.md of STAC Browser), so it is loaded first here.
sed -i 's#<head>#<head><script src="/config.js"></script>#' "$DIST/index.html"
echo "$BUILD_ID" > "$STAMP"
echo "setup-stac-browser: built $DIST"
