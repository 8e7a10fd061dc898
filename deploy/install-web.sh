#!/usr/bin/env bash
# Installs the web page's third-party scripts (hls.js, tus-js-client) from the npm registry
# into moments/web/node_modules, where `moments serve` serves them (web.node_modules). Installs
# Node.js and npm with apt when missing. Does nothing when they are there.
#
#   deploy/install-web.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
web="$root/moments/web"
if [ -f "$web/node_modules/hls.js/dist/hls.min.js" ] &&
   [ -f "$web/node_modules/tus-js-client/dist/tus.min.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "install-web: installing Node.js and npm (apt)" >&2
  sudo_=""
  [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -q >&2
  $sudo_ apt-get install -y -q nodejs npm >&2
fi
echo "install-web: npm ci in moments/web (hls.js, tus-js-client)" >&2
(cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
