#!/usr/bin/env bash
# HLS origin benchmark: the built-in origin of `moments serve` against nginx serving the same
# published files, same load (wrk, 2 threads, 32 connections, 10 s), alternated RUNS times.
#
# A 10 s 720p moment is uploaded and transcoded by the real service (embedded defaults,
# release build); then both servers are asked, in turn, for:
#   segment   one 720p media segment (GET, 200)
#   init      the 720p init segment (a small file)
#   range     the first 64 KiB of the segment (206)
#   304       the segment with a matching If-None-Match
# nginx: Debian's nginx-light, `worker_processes 2`, sendfile on, access log off, serving the
# store's directory. Prints req/s and MB/s for each and the ratio against nginx.
# Signed playback: a second `moments serve` on the same data with MOMENTS_SIGNED_PLAYBACK=true
# is asked for the same segment with a playback token (from POST /v1/moments/{id}/playback),
# so the HMAC check on every request is measured against the unsigned rate (goal ≥ 0.9×).
# With HTTP3=1 (default when the bench builds it) the same segment is also fetched over HTTP/3
# by the project's own load generator (`cargo run --example h3load -p common`), which has no
# nginx counterpart here (Debian's nginx has no HTTP/3 module).
#
#   deploy/bench/origin.sh [RUNS]     (env: DURATION=10s CONNS=32)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
duration=${DURATION:-10s} conns=${CONNS:-32}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
"$root/deploy/install-deps.sh" --bench
cargo build --release --quiet -p moments --manifest-path "$root/Cargo.toml"
cargo build --release --quiet -p common --example h3load --manifest-path "$root/Cargo.toml"
bin="$CARGO_TARGET_DIR/release/moments"
h3load="$CARGO_TARGET_DIR/release/examples/h3load"
. "$root/deploy/bench/lib.sh"
bench_workdir origin

http_port=$(free_port) quic_port=$(free_port) nginx_port=$(free_port)
mkdir -p "$work/srv"
(cd "$work/srv" && exec env $(clean_env) MOMENTS_HTTP_ADDR="127.0.0.1:$http_port" \
   MOMENTS_QUIC_ADDR="127.0.0.1:$quic_port" RUST_LOG=warn "$bin" serve > out.log 2> err.log) &
pids+=($!)
for _ in $(seq 200); do grep -q "SHA-256" "$work/srv/out.log" 2>/dev/null && break; sleep 0.1; done
fp=$(sed -n 's/.*QUIC certificate SHA-256: //p' "$work/srv/out.log")
[ -n "$fp" ] || { cat "$work/srv/err.log" >&2; exit 1; }

echo "making and publishing a 10 s 720p moment" >&2
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=30:duration=10" \
  -f lavfi -i "sine=duration=10" -c:v libx264 -preset veryfast -b:v 3M -pix_fmt yuv420p \
  -c:a aac -movflags +faststart "$work/clip.mp4"
(cd "$work/srv" && env $(clean_env) MOMENTS_HTTP_ADDR="127.0.0.1:$http_port" \
   MOMENTS_QUIC_ADDR="127.0.0.1:$quic_port" "$bin" upload --quiet --wait --state "$work/st.json" \
   "$work/clip.mp4" > "$work/up.out")
id=$(sed -n 's/^moment //p' "$work/up.out")
objects="$work/srv/data/objects"
seg="hls/$id/720p/seg_00001.m4s" init="hls/$id/720p/init.mp4"
[ -f "$objects/$seg" ] || { echo "no segment published" >&2; exit 1; }
etag=$(curl -s -D - -o /dev/null "http://127.0.0.1:$http_port/$seg" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p')

# the same objects behind signed playback
signed_port=$(free_port) signed_quic=$(free_port)
(cd "$work/srv" && exec env $(clean_env) MOMENTS_HTTP_ADDR="127.0.0.1:$signed_port" \
   MOMENTS_QUIC_ADDR="127.0.0.1:$signed_quic" MOMENTS_SIGNED_PLAYBACK=true \
   MOMENTS_PLAYBACK_SECRET=origin-bench-secret-0123456789 RUST_LOG=warn "$bin" serve \
   > signed-out.log 2> signed-err.log) &
pids+=($!)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$signed_port/readyz" >/dev/null && break; sleep 0.1; done
bearer=$(cd "$work/srv" && env $(clean_env) "$bin" token --user dev)
playback=$(curl -sf -X POST -H "authorization: Bearer $bearer" -H 'content-type: application/json' \
  -d '{}' "http://127.0.0.1:$signed_port/v1/moments/$id/playback")
token=$(echo "$playback" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
signed_seg="$seg?token=$token"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$signed_port/$seg")
[ "$code" = 403 ] || { echo "signed server answered $code for an unsigned segment" >&2; exit 1; }
code=$(curl -s -o "$work/check" -w '%{http_code}' "http://127.0.0.1:$signed_port/$signed_seg")
[ "$code" = 200 ] && cmp -s "$work/check" "$objects/$seg" \
  || { echo "signed server answered $code for a signed segment, or other bytes" >&2; exit 1; }

mkdir -p "$work/nginx/logs"
# as root, nginx's workers would drop to `nobody`, which cannot read the private work dir
nginx_user=""
[ "$(id -u)" -eq 0 ] && nginx_user="user root;"
cat > "$work/nginx/nginx.conf" <<EOF
$nginx_user
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  types { video/iso.segment m4s; video/mp4 mp4; application/vnd.apple.mpegurl m3u8; }
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; access_log off; keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $objects;
    add_header Access-Control-Allow-Origin *;
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 0.5
nginx_etag=$(curl -s -D - -o /dev/null "http://127.0.0.1:$nginx_port/$seg" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p')
# both must really serve the file, byte for byte, before anything is timed
for port in "$nginx_port" "$http_port"; do
  for obj in "$seg" "$init"; do
    code=$(curl -s -o "$work/check" -w '%{http_code}' "http://127.0.0.1:$port/$obj")
    [ "$code" = 200 ] && cmp -s "$work/check" "$objects/$obj" \
      || { echo "port $port answered $code for $obj, or other bytes" >&2; exit 1; }
  done
done

# wrk_rps URL [HEADER] -> "req/s MB/s"
wrk_rps() {
  local url=$1 hdr=${2:-}
  local out
  if [ -n "$hdr" ]; then out=$(wrk -t2 -c"$conns" -d"$duration" -H "$hdr" "$url"); else out=$(wrk -t2 -c"$conns" -d"$duration" "$url"); fi
  local rps mbs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  mbs=$(echo "$out" | awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024} print v}')
  echo "$rps $mbs"
}

seg_size=$(stat -c %s "$objects/$seg") init_size=$(stat -c %s "$objects/$init")
for i in $(seq "$runs"); do
  for who in nginx ours; do
    port=$nginx_port; e=$nginx_etag
    [ "$who" = ours ] && port=$http_port e=$etag
    echo "run $i/$runs: $who" >&2
    echo "$(wrk_rps "http://127.0.0.1:$port/$seg")" >> "$work/$who.segment"
    echo "$(wrk_rps "http://127.0.0.1:$port/$init")" >> "$work/$who.init"
    echo "$(wrk_rps "http://127.0.0.1:$port/$seg" "Range: bytes=0-65535")" >> "$work/$who.range"
    echo "$(wrk_rps "http://127.0.0.1:$port/$seg" "If-None-Match: $e")" >> "$work/$who.304"
  done
  echo "run $i/$runs: ours, signed playback" >&2
  echo "$(wrk_rps "http://127.0.0.1:$signed_port/$signed_seg")" >> "$work/signed.segment"
  if [ "${HTTP3:-1}" = 1 ]; then
    echo "run $i/$runs: ours over HTTP/3" >&2
    "$h3load" --url "https://127.0.0.1:$quic_port/$seg" --cert-sha256 "$fp" --connections 4 \
      --streams 8 --duration "$duration" >> "$work/h3.segment"
  fi
done

python3 - "$work" "$runs" "$seg_size" "$init_size" "$conns" "$duration" <<'PY'
import statistics, sys, os
w, runs, seg, init, conns, dur = sys.argv[1:7]
def load(n):
    p = f"{w}/{n}"
    if not os.path.exists(p):
        return None
    rows = [list(map(float, l.split())) for l in open(p) if l.strip()]
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
print(f"HLS origin: wrk -t2 -c{conns} -d{dur}, loopback, median of {runs} alternated runs "
      f"(segment {int(seg)//1024} KiB, init {int(init)} B)")
print(f"{'request':10}{'nginx req/s':>13}{'ours req/s':>12}{'× nginx':>9}{'nginx MB/s':>12}{'ours MB/s':>11}   goal ≥ 0.8×")
for n in ("segment", "init", "range", "304"):
    a, o = load(f"nginx.{n}"), load(f"ours.{n}")
    r = o[0] / a[0]
    print(f"{n:10}{a[0]:13.0f}{o[0]:12.0f}{r:9.2f}{a[1]:12.0f}{o[1]:11.0f}   {'met' if r >= 0.8 else 'MISSED'}")
sg, us = load("signed.segment"), load("ours.segment")
r = sg[0] / us[0]
print(f"{'signed':10}{'':>13}{sg[0]:12.0f}{sg[0] / load('nginx.segment')[0]:9.2f}{'':>12}{sg[1]:11.0f}   "
      f"× unsigned {r:.2f} (goal ≥ 0.9×) {'met' if r >= 0.9 else 'MISSED'}")
h3 = load("h3.segment")
if h3:
    print(f"{'segment over HTTP/3 (ours, h3load 4 connections × 8 streams)':60}{h3[0]:10.0f} req/s {h3[1]:8.0f} MB/s")
PY
