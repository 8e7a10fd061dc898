#!/usr/bin/env bash
# Runs the `moments` binary from a release build, installing what is missing first.
#
#   deploy/moments.sh demo            the whole path once (upload, transcode, play, voice), then serve
#   deploy/moments.sh serve           the whole service on embedded defaults (./data)
#   deploy/moments.sh token --user me a development token
#   deploy/moments.sh --help          every command and setting
#
# CARGO_TARGET_DIR defaults to ~/.cache/moments/target so every clone shares one build.
# The neural voice models (Whisper, Piper; ~170 MB) are installed once into MOMENTS_MODELS_DIR,
# default ~/.cache/moments/models, shared by every clone and data directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}

if ! command -v cargo >/dev/null 2>&1; then
  echo "moments: Rust is not installed; installing it with rustup (https://rustup.rs)" >&2
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
"$root/deploy/install-deps.sh"
export MOMENTS_WEB_MODULES=${MOMENTS_WEB_MODULES:-$root/moments/web/node_modules}
"$root/deploy/install-web.sh" ||
  echo "moments: the web page's scripts could not be installed (npm); the page will say so" >&2
export MOMENTS_MODELS_DIR=${MOMENTS_MODELS_DIR:-$HOME/.cache/moments/models}
"$root/deploy/install-models.sh" "$MOMENTS_MODELS_DIR" ||
  echo "moments: the neural voice models could not be installed; the voice uses espeak-ng and pocketsphinx" >&2
echo "moments: building (release; the first build takes a few minutes)" >&2
cargo build --release --locked -p moments --manifest-path "$root/Cargo.toml" >&2
exec "$CARGO_TARGET_DIR/release/moments" "${@:-demo}"
