#!/usr/bin/env bash
# Transcode benchmark: 30 s 1080p30 clips with audio, the whole ladder from upload-complete to
# ready (our worker: SQLite queue + FFmpeg + packager + local store) against the anchor, one
# ffmpeg CLI command making the same three fMP4 HLS rungs with the same x264 settings
# (deploy/bench/ffmpeg-ladder.sh, or $ANCHOR). Two sources:
#   generic    testsrc2, H.264 CRF 18 (~10 Mbit/s): every rung is re-encoded
#   compliant  H.264 High 4.5 Mbit/s, 2 s closed GOPs: the 1080p rung is remuxed
# Runs alternate anchor/ours on the same machine; prints medians of wall time and CPU time,
# peak RSS, and ratios against the anchor of the same source.
#
#   deploy/bench/transcode.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
anchor=${ANCHOR:-$root/deploy/bench/ffmpeg-ladder.sh}
[ -x "$anchor" ] || { echo "anchor script not found: $anchor (set ANCHOR=...)" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
"$root/deploy/install-deps.sh" --bench
work=$(mktemp -d /tmp/moments-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "making the sources" >&2
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=30" \
  -f lavfi -i "sine=frequency=440:duration=30" -c:v libx264 -preset fast -crf 18 \
  -pix_fmt yuv420p -c:a aac -b:a 128k "$work/generic.mp4"
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=30" \
  -f lavfi -i "sine=frequency=440:duration=30" -c:v libx264 -preset veryfast -profile:v high \
  -b:v 4500k -maxrate 5000k -bufsize 9000k -g 60 -keyint_min 60 -sc_threshold 0 \
  -pix_fmt yuv420p -c:a aac -b:a 128k -ar 48000 "$work/compliant.mp4"
cargo build --release --quiet -p transcode --example ladder
ours="$CARGO_TARGET_DIR/release/examples/ladder"

measure() { # file command... -> appends "wall user sys maxrss_kb"
  local file=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/t" >> "$file"
}
for src in generic compliant; do
  for i in $(seq "$runs"); do
    echo "$src: run $i/$runs" >&2
    rm -rf "$work/a" "$work/o"
    measure "$work/$src.anchor" "$anchor" "$work/$src.mp4" "$work/a"
    measure "$work/$src.ours" "$ours" "$work/$src.mp4" "$work/o"
  done
done
python3 - "$work" "$runs" <<'PY'
import statistics, sys
w, runs = sys.argv[1], sys.argv[2]
def load(n):
    rows = [list(map(float, l.split())) for l in open(f"{w}/{n}") if l.strip()]
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] + r[2] for r in rows),
            max(r[3] for r in rows) / 1024)
print(f"transcode benchmark: 30 s 1080p30 + AAC, x264 veryfast, median of {runs} alternated runs")
print(f"{'source / pipeline':40}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'wall ×':>8}{'CPU ×':>7}")
for src in ("generic", "compliant"):
    a, o = load(f"{src}.anchor"), load(f"{src}.ours")
    print(f"{src + ' / ffmpeg CLI ladder (anchor)':40}{a[0]:8.2f}{a[1]:8.2f}{a[2]:9.0f}{1:8.2f}{1:7.2f}")
    print(f"{src + ' / moments worker':40}{o[0]:8.2f}{o[1]:8.2f}{o[2]:9.0f}{o[0]/a[0]:8.2f}{o[1]/a[1]:7.2f}")
PY
