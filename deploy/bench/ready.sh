#!/usr/bin/env bash
# Time-to-ready benchmark: how long after its last byte a moment is watchable.
#
# Source: a 30 s 1080p30 fast-start MP4 at ~8 Mbit/s with AAC, whose every rung is re-encoded
# (GOPs longer than a segment, bit rate over the 1080p rung's ceiling). It is uploaded with the
# project's client, `moments upload --rate 10Mbit --wait` over HTTP/3, to `moments serve` on
# embedded defaults (SQLite, local store, release build). Pacing is client-side at chunk
# granularity: each chunk (about 0.5 s of sending) is sent when a 10 Mbit/s link would have
# delivered its last byte, so durable bytes appear at the server as they would behind such a
# link. "Last byte" is when the final chunk was handed to the network; "ready" is when the
# client's event stream said so.
#
# Four pipelines on the same file, alternated RUNS times:
#   streaming     moments serve as shipped: the transcode reads the upload while it arrives
#                 (captions on: the speech is kept and the captions job queued before ready)
#   no-captions   the same with MOMENTS_CAPTIONS=false: what captions cost the time to ready
#                 (each run waits for the captions job, after ready, to finish and prints its
#                 real-time factor, so that it takes no CPU from the next run)
#   after-upload  the same server with MOMENTS_TRANSCODE_STREAMING=false: starts at the last byte
#   anchor        upload-then-CLI (what tusd + ffmpeg pipelines do): last byte → ready is the
#                 time of deploy/bench/ffmpeg-ladder.sh, one ffmpeg command making the same
#                 3-rung fMP4 ladder with the same x264 settings
# Prints each run and the medians: upload time, last byte → ready, CPU seconds per moment
# (server process: upload + transcode; the anchor: the ffmpeg command), and the ratios the
# issue sets as goals.
#
#   deploy/bench/ready.sh [RUNS]      (env: RATE=10Mbit SECS=30 KBPS=8000)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-2}
rate=${RATE:-10Mbit} secs=${SECS:-30} kbps=${KBPS:-8000}
anchor="$root/deploy/bench/ffmpeg-ladder.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
"$root/deploy/install-deps.sh" --bench
# the captions job needs Whisper (without it captions say "none" and cost nothing after ready)
models=${MOMENTS_MODELS_DIR:-$HOME/.cache/moments/models}
"$root/deploy/install-models.sh" "$models"
cargo build --release --quiet -p moments --manifest-path "$root/Cargo.toml"
bin="$CARGO_TARGET_DIR/release/moments"
. "$root/deploy/bench/lib.sh"
bench_workdir ready

echo "making the source (${secs} s 1080p30, ~${kbps} kbit/s, fast-start)" >&2
src="$work/moment.mp4"
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=$secs" \
  -f lavfi -i "sine=frequency=440:duration=$secs" -c:v libx264 -preset veryfast \
  -b:v "${kbps}k" -maxrate "${kbps}k" -bufsize "$((kbps * 2))k" -g 250 -pix_fmt yuv420p \
  -c:a aac -b:a 128k -ar 48000 -movflags +faststart "$src"

# start NAME STREAMING [CAPTIONS] -> sets http_<NAME>, quic_<NAME>, pid_<NAME>
start() {
  local name=$1 streaming=$2 captions=${3:-true} dir="$work/$1" http quic
  mkdir -p "$dir"
  http="127.0.0.1:$(free_port)" quic="127.0.0.1:$(free_port)"
  (cd "$dir" && exec env $(clean_env) MOMENTS_HTTP_ADDR="$http" MOMENTS_QUIC_ADDR="$quic" \
     MOMENTS_TRANSCODE_STREAMING="$streaming" MOMENTS_CAPTIONS="$captions" \
     MOMENTS_MODELS_DIR="$models" RUST_LOG=warn,asr_tts::captions=info "$bin" serve > out.log 2> err.log) &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do grep -q "SHA-256" "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "SHA-256" "$dir/out.log" || { cat "$dir/err.log" >&2; exit 1; }
  printf -v "http_$name" %s "$http"; printf -v "quic_$name" %s "$quic"; printf -v "pid_$name" %s "$pid"
}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)

start streaming true
start after false
start nocaptions true false

# one_upload NAME RUN -> appends "upload_s ready_after_last_byte_s cpu_s" to $work/NAME.rows
one_upload() {
  local name=$1 run=$2 dir="$work/$1" http quic pid c0 c1
  eval "http=\$http_$name quic=\$quic_$name pid=\$pid_$name"
  c0=$(cpu_of "$pid")
  (cd "$dir" && env $(clean_env) MOMENTS_HTTP_ADDR="$http" MOMENTS_QUIC_ADDR="$quic" RUST_LOG=warn \
     "$bin" upload --quiet --wait --rate "$rate" --state "$dir/state-$run.json" \
     --report "$dir/report-$run.json" "$src" > "$dir/upload-$run.log" 2>&1) \
    || { cat "$dir/upload-$run.log" "$dir/err.log" >&2; exit 1; }
  c1=$(cpu_of "$pid")
  python3 - "$dir/report-$run.json" "$c0" "$c1" "$ticks" >> "$work/$name.rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c0, c1, hz = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"{(r['done_ms'] - r['started_ms']) / 1000:.2f} {(r['ready_ms'] - r['last_chunk_ms']) / 1000:.3f} {(c1 - c0) / hz:.2f}")
PY
  # the captions job runs after ready: let it finish (and note its real-time factor) so that it
  # does not take CPU from the next pipeline's run
  local id line=""
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moment"])' "$dir/report-$run.json")
  if [ "$name" != nocaptions ]; then
    for _ in $(seq 600); do
      line=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/err.log" | grep -a "moment=$id" | grep -a "rtf=" | tail -1 || true)
      [ -n "$line" ] && break
      sleep 0.1
    done
    [ -n "$line" ] || { echo "no captions result for $id after 60 s" >&2; cat "$dir/err.log" >&2; exit 1; }
    echo "$line" | sed -E 's/.*rtf=([0-9.e-]+).*/\1/' >> "$work/$name.rtf"
  fi
}

for i in $(seq "$runs"); do
  echo "run $i/$runs: streaming" >&2
  one_upload streaming "$i"
  echo "run $i/$runs: streaming, captions off" >&2
  one_upload nocaptions "$i"
  echo "run $i/$runs: after-upload" >&2
  one_upload after "$i"
  echo "run $i/$runs: anchor (ffmpeg CLI ladder)" >&2
  rm -rf "$work/cli"
  /usr/bin/time -f "%e %U %S" -o "$work/t" "$anchor" "$src" "$work/cli" >/dev/null 2>"$work/cli.err" \
    || { cat "$work/cli.err" >&2; exit 1; }
  awk '{printf "%.2f %.2f\n", $1, $2 + $3}' "$work/t" >> "$work/anchor.rows"
done

python3 - "$work" "$rate" "$secs" <<'PY'
import statistics, sys
w, rate, secs = sys.argv[1], sys.argv[2], sys.argv[3]
rows = lambda n: [list(map(float, l.split())) for l in open(f"{w}/{n}.rows") if l.strip()]
s, a, c, n = rows("streaming"), rows("after"), rows("anchor"), rows("nocaptions")
med = lambda xs: statistics.median(xs)
print(f"time to ready: {secs} s 1080p30 fast-start moment, moments upload --rate {rate} (HTTP/3), "
      f"{len(c)} alternated runs; x264 veryfast on every path")
print(f"{'run':>4} {'upload s':>9} {'stream: last byte→ready s':>26} {'after-upload: →ready s':>23} "
      f"{'CLI ladder s':>13} {'stream CPU s':>13} {'after CPU s':>12}")
for i, (x, y, z) in enumerate(zip(s, a, c), 1):
    print(f"{i:>4} {x[0]:9.2f} {x[1]:26.3f} {y[1]:23.3f} {z[0]:13.2f} {x[2]:13.2f} {y[2]:12.2f}")
ms, ma, mc = med([x[1] for x in s]), med([y[1] for y in a]), med([z[0] for z in c])
cs, ca, cc = med([x[2] for x in s]), med([y[2] for y in a]), med([z[1] for z in c])
print()
print(f"median upload time: streaming server {med([x[0] for x in s]):.2f} s, after-upload server {med([y[0] for y in a]):.2f} s")
print(f"{'last byte → ready (median)':40}{'s':>8}{'× CLI':>8}{'goal':>10}")
print(f"{'anchor: upload, then ffmpeg CLI ladder':40}{mc:8.2f}{1:8.2f}{'':>10}")
print(f"{'moments, streaming':40}{ms:8.3f}{ms / mc:8.3f}{'≤ 0.10':>10}  {'met' if ms / mc <= 0.10 else 'MISSED'}")
mn = med([x[1] for x in n])
print(f"{'moments, streaming, captions off':40}{mn:8.3f}{mn / mc:8.3f}")
print(f"{'captions: streaming − captions off':40}{ms - mn:+8.3f}{'':>8}{'≤ +0.2 s':>10}  {'met' if ms - mn <= 0.2 else 'MISSED'}")
print(f"{'moments, after upload':40}{ma:8.2f}{ma / mc:8.3f}{'≤ 0.85':>10}  {'met' if ma / mc <= 0.85 else 'MISSED'}")
rtf = [float(l) for n in ("streaming", "after") for l in open(f"{w}/{n}.rtf") if l.strip()]
print(f"{'captions job real-time factor (median)':40}{med(rtf):8.3f}{'':>8}{'':>10}  "
      f"(the source's audio is a 440 Hz tone, found to be no speech; after ready, not in the CPU below)")
print(f"{'CPU s per moment (median)':40}{'s':>8}{'× after':>8}")
print(f"{'anchor: ffmpeg CLI ladder':40}{cc:8.2f}")
print(f"{'moments, after upload (upload+transcode)':40}{ca:8.2f}{1:8.2f}")
print(f"{'moments, streaming (upload+transcode)':40}{cs:8.2f}{cs / ca:8.3f}{'≤ 1.05':>10}  {'met' if cs / ca <= 1.05 else 'MISSED'}")
PY
