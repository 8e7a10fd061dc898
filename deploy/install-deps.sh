#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Moments needs to build, run and test, when they are missing.
# Does nothing (and needs no root) when everything is already there.
#
#   deploy/install-deps.sh            build + run + test packages
#   deploy/install-deps.sh --browser  also Chromium + Node.js for the browser tests
#   deploy/install-deps.sh --bench    also nginx, wrk, hyperfine for the benchmarks
set -euo pipefail

pkgs=(
  # toolchain pieces used by -sys crates and bindgen
  build-essential pkg-config clang libclang-dev cmake
  # FFmpeg libraries (ffmpeg-next) with libx264, and the CLI that tests use to make fixtures
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev libx264-dev ffmpeg
  # GStreamer (Opus in/out for the voice pipeline)
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-tools
  # speech engines that ship their own data
  libespeak-ng-dev espeak-ng libpocketsphinx-dev pocketsphinx-en-us
  # test helpers
  python3-pip python3-venv curl ca-certificates iproute2 unzip
  # a real NATS server (JetStream) for the message-bus tests, which start their own
  nats-server
  # deploy/lint-deploy.sh: promtool (checks the Prometheus config, alert rules and their unit
  # tests) and psql (runs the KEDA scaler's queries against the real schema)
  prometheus postgresql-client
)

for arg in "$@"; do
  case "$arg" in
    --browser) pkgs+=(chromium nodejs npm) ;;
    --bench) pkgs+=(nginx-light wrk hyperfine iproute2 time bc) ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  # node/npm may come from elsewhere (nodesource, nvm); accept any working binary
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
