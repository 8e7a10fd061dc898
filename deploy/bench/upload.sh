#!/usr/bin/env bash
# Upload benchmark (run as root: it makes network namespaces). Prints two tables.
#
# 1. Loopback: a 200 MiB file into `moments serve --roles api,ingest` over HTTP/3 and over
#    HTTP/1.1 with `moments upload`, against the anchor: plain `curl` sending the same bytes as
#    one tus PATCH over HTTP/1.1 to the same server. Once with the local store and once with
#    the S3 store on a real S3-compatible server (s3s-fs on loopback, serving a directory on
#    the same disk). MB/s and ratios, medians of RUNS runs. On S3 the timed upload ends at
#    the last PATCH's answer; the assembly of each object from its parts runs afterwards as a
#    queue job, timed separately on a worker started for it. One more row puts the file
#    straight into the S3 server with curl: what the S3 server itself can take in here.
# 2. Lossy link: a 20 MiB file from one network namespace to another across deploy/bench/
#    lossylink.py (user-space link emulation: this kernel has no netem), default 60 ms RTT,
#    2% loss each way, 100 Mbit/s. Time of HTTP/1.1 over TCP with CUBIC and with BBR (the
#    client namespace's net.ipv4.tcp_congestion_control: the sender's controller is the one
#    that matters for an upload) and of HTTP/3 with each QUIC congestion controller, and the
#    ratio against the better TCP.
#
#   deploy/bench/upload.sh [RUNS]   (env: DELAY_MS=30 LOSS=0.02 RATE_MBIT=100 CHUNK=4MiB
#                                         ONLY=loopback|lossy  STORES="local s3"
#                                         CCS="bbr cubic newreno"  TCPS="cubic bbr")
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
delay=${DELAY_MS:-30} loss=${LOSS:-0.02} rate=${RATE_MBIT:-100} chunk=${CHUNK:-4MiB}
only=${ONLY:-} ccs=${CCS:-bbr cubic newreno} tcps=${TCPS:-cubic bbr} stores=${STORES:-local s3}
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
"$root/deploy/install-deps.sh" --bench
cargo build --release --quiet -p moments --manifest-path "$root/Cargo.toml"
case " $stores " in *" s3 "*) "$root/deploy/install-test-tools.sh" >/dev/null ;; esac
bin="$CARGO_TARGET_DIR/release/moments"
work=$(mktemp -d /tmp/moments-upbench-XXXXXX)
server_pid= link_pid= s3_pid=
allowed_cc=/proc/sys/net/ipv4/tcp_allowed_congestion_control
orig_allowed=$(cat "$allowed_cc")
cleanup() {
  echo "$orig_allowed" > "$allowed_cc" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null || true
  [ -n "$link_pid" ] && kill "$link_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. "$root/deploy/bench/lib.sh"

s3env_bench=(MOMENTS_STORAGE=s3://bench/media MOMENTS_S3_ENDPOINT=http://127.0.0.1:19000
             AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1)
# start_s3: s3s-fs on 127.0.0.1:19000 serving $work/s3 (bucket "bench" is its directory)
start_s3() {
  rm -rf "$work/s3"; mkdir -p "$work/s3/bench"
  s3s-fs --host 127.0.0.1 --port 19000 --access-key bench --secret-key bench-secret "$work/s3" \
    > "$work/s3.log" 2>&1 &
  s3_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/19000) 2>/dev/null && return; sleep 0.1; done
  cat "$work/s3.log" >&2; exit 1
}
stop_s3() { kill "$s3_pid"; wait "$s3_pid" 2>/dev/null || true; s3_pid=; }

# start_server NETNS_PREFIX HTTP_ADDR QUIC_ADDR CONGESTION [STORE] -> sets server_pid, fp, token
start_server() {
  local ns=$1 http=$2 quic=$3 cc=$4 store=${5:-local} s3env=()
  rm -rf "$work/srv"; mkdir -p "$work/srv"
  [ "$store" = s3 ] && s3env=("${s3env_bench[@]}")
  (cd "$work/srv" && exec env $(clean_env) "${s3env[@]}" MOMENTS_HTTP_ADDR="$http" MOMENTS_QUIC_ADDR="$quic" \
     MOMENTS_QUIC_CONGESTION="$cc" RUST_LOG=warn $ns "$bin" serve --roles api,ingest > out.log 2> err.log) &
  server_pid=$!
  for _ in $(seq 100); do grep -q "SHA-256" "$work/srv/out.log" 2>/dev/null && break; sleep 0.1; done
  fp=$(sed -n 's/.*QUIC certificate SHA-256: //p' "$work/srv/out.log")
  [ -n "$fp" ] || { cat "$work/srv/err.log" >&2; exit 1; }
  token=$(cd "$work/srv" && env $(clean_env) "$bin" token --user bench --ttl 2h)
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>>"$work/client.err" || { tail -5 "$work/client.err" >&2; exit 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

curl_upload() { # NS URL FILE
  local ns=$1 base=$2 file=$3 size loc
  size=$(stat -c %s "$file")
  loc=$($ns curl -s -D - -o /dev/null -X POST -H "Authorization: Bearer $token" -H "Tus-Resumable: 1.0.0" \
        -H "Upload-Length: $size" "$base/files" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  $ns curl -s -f -o /dev/null -X PATCH -T "$file" -H "Authorization: Bearer $token" -H "Tus-Resumable: 1.0.0" \
    -H "Upload-Offset: 0" -H "Content-Type: application/offset+octet-stream" "$loc"
}

# s3_put FILE NAME: one plain PUT of FILE straight into the S3 server (SigV4 by curl), the
# ceiling of what the S3 server itself takes in on this machine
s3_put() {
  curl -s -f -o /dev/null -T "$1" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:bench-secret \
    "http://127.0.0.1:19000/bench/ceiling/$2"
}

ours() { # NS SERVER_URL PROTOCOL_FLAG... FILE
  local ns=$1 server=$2; shift 2
  (cd "$work/srv" && env $(clean_env) MOMENTS_QUIC_CONGESTION="${CC:-cubic}" RUST_LOG=${CLIENT_LOG:-warn} $ns "$bin" upload --quiet \
     --state "$work/state.json" --token "$token" --cert-sha256 "$fp" --chunk-size "$chunk" --server "$server" "$@")
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---- 1. loopback ----
if [ "$only" != lossy ]; then
head -c $((200 * 1024 * 1024)) /dev/urandom > "$work/big.bin"
for store in $stores; do
  [ "$store" = s3 ] && start_s3
  start_server "" 127.0.0.1:18080 127.0.0.1:14433 cubic "$store"
  for i in $(seq "$runs"); do
    echo "loopback ($store store) run $i/$runs" >&2
    secs curl_upload "" http://127.0.0.1:18080 "$work/big.bin" >> "$work/lo.$store.curl"
    secs ours "" http://127.0.0.1:18080 --http "$work/big.bin" >> "$work/lo.$store.h1"
    secs ours "" https://127.0.0.1:14433 "$work/big.bin" >> "$work/lo.$store.h3"
    [ "$store" = s3 ] && secs s3_put "$work/big.bin" "$i" >> "$work/lo.s3.ceiling"
  done
  stop_server
  if [ "$store" = s3 ]; then
    # The timed runs end at the last PATCH's answer; the object is assembled afterwards by a
    # queue job on a worker (none ran above). Time those jobs too, on a worker started now.
    echo "assembling the S3 uploads on a worker" >&2
    (cd "$work/srv" && exec env $(clean_env) "${s3env_bench[@]}" MOMENTS_HTTP_ADDR=127.0.0.1:18081 \
       RUST_LOG=warn,ingest=info "$bin" serve --roles worker > worker.out 2> worker.log) &
    server_pid=$!
    want=$((runs * 3))
    for _ in $(seq 1200); do
      [ "$(grep -c 'upload assembled' "$work/srv/worker.log" 2>/dev/null || true)" -ge "$want" ] 2>/dev/null && break
      sleep 0.25
    done
    # (text or JSON log lines, maybe coloured: `ms=123` or `"ms":123`)
    { grep 'upload assembled' "$work/srv/worker.log" || true; } | sed 's/\x1b\[[0-9;]*m//g' | grep -oE '\bms"?[=:][0-9]+' \
      | grep -oE '[0-9]+$' | awk '{print $1 / 1000}' > "$work/lo.s3.assemble" || true
    stop_server
    [ "$(wc -l < "$work/lo.s3.assemble")" -ge "$want" ] || { echo "only $(wc -l < "$work/lo.s3.assemble") of $want assemblies finished" >&2; tail -3 "$work/srv/worker.log" >&2; }
    stop_s3
  fi
done
fi

# ---- 2. lossy link ----
if [ "$only" != loopback ]; then
head -c $((20 * 1024 * 1024)) /dev/urandom > "$work/small.bin"
python3 "$root/deploy/bench/lossylink.py" mbA mbB --delay-ms "$delay" --loss "$loss" --rate-mbit "$rate" \
  > "$work/link.log" 2>&1 &
link_pid=$!
for _ in $(seq 50); do grep -q "link up" "$work/link.log" 2>/dev/null && break; sleep 0.1; done
A="ip netns exec mbA" B="ip netns exec mbB"
# A namespace may only pick the controllers the host allows: allow the ones compared here for
# the run (restored on exit).
echo "$orig_allowed $tcps" | tr ' ' '\n' | sort -u | tr '\n' ' ' > "$allowed_cc"
echo "host TCP default: $(cat /proc/sys/net/ipv4/tcp_congestion_control); allowed for the run: $(cat "$allowed_cc")" >&2
for cc in $ccs; do
  start_server "$A" 10.99.0.1:8080 10.99.0.1:4433 "$cc"
  for i in $(seq "$runs"); do
    echo "lossy link ($cc) run $i/$runs" >&2
    if [ "$cc" = "${ccs%% *}" ]; then
      for tcp in $tcps; do
        $B sysctl -q -w net.ipv4.tcp_congestion_control="$tcp"
        secs ours "$B" http://10.99.0.1:8080 --http "$work/small.bin" >> "$work/ll.h1.$tcp"
      done
    fi
    CC=$cc secs ours "$B" https://10.99.0.1:4433 "$work/small.bin" >> "$work/ll.h3.$cc"
  done
  stop_server
done
fi

mb() { echo "$1" | awk -v s="$2" '{printf "%.1f", s / 1048576 / $1}'; }
if [ "$only" != lossy ]; then
echo
echo "Loopback, 200 MiB, median of $runs (chunks of $chunk for moments upload)"
printf "%-52s %9s %9s %9s %9s\n" "client / protocol / store" "seconds" "MB/s" "× curl" "× local"
for store in $stores; do
  c=$(median < "$work/lo.$store.curl")
  for row in "curl, one PATCH, HTTP/1.1 (anchor):curl" "moments upload --http (HTTP/1.1):h1" "moments upload (HTTP/3, QUIC):h3"; do
    name=${row%:*} kind=${row##*:}
    t=$(median < "$work/lo.$store.$kind")
    if [ -f "$work/lo.local.$kind" ]; then
      vs_local=$(echo "$(median < "$work/lo.local.$kind") / $t" | bc -l)
    else vs_local=nan; fi
    printf "%-52s %9.2f %9s %9.2f %9.2f\n" "$name, $store" "$t" "$(mb "$t" 209715200)" "$(echo "$c / $t" | bc -l)" "$vs_local"
  done
done
if [ -s "$work/lo.s3.ceiling" ]; then
  t=$(median < "$work/lo.s3.ceiling")
  if [ -f "$work/lo.local.curl" ]; then
    vs_local=$(echo "$(median < "$work/lo.local.curl") / $t" | bc -l)
  else vs_local=nan; fi
  printf "%-52s %9.2f %9s %9s %9.2f\n" "curl PUT straight to the S3 server (its ceiling)" "$t" "$(mb "$t" 209715200)" "" "$vs_local"
fi
if [ -s "$work/lo.s3.assemble" ]; then
  printf "S3 assembly afterwards (queue job on a worker, off the request path): median %.2f s of %d\n" \
    "$(median < "$work/lo.s3.assemble")" "$(wc -l < "$work/lo.s3.assemble")"
fi
if [ -f "$work/lo.local.h1" ]; then
  printf "HTTP/3 ÷ HTTP/1.1 (local): %.2f\n" "$(echo "$(median < "$work/lo.local.h1") / $(median < "$work/lo.local.h3")" | bc -l)"
fi
fi
if [ "$only" != loopback ]; then
best=
for tcp in $tcps; do
  t=$(median < "$work/ll.h1.$tcp")
  if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
done
echo
echo "Lossy link, 20 MiB, ${delay} ms one way ($((delay * 2)) ms RTT), loss $loss each way, $rate Mbit/s, median of $runs"
printf "%-40s %9s %9s %16s\n" "protocol" "seconds" "MB/s" "× better TCP"
for tcp in $tcps; do
  t=$(median < "$work/ll.h1.$tcp")
  printf "%-40s %9.2f %9s %16.2f\n" "HTTP/1.1 over TCP ($tcp)" "$t" "$(mb "$t" 20971520)" "$(echo "$t / $best" | bc -l)"
done
for cc in $ccs; do
  t=$(median < "$work/ll.h3.$cc")
  printf "%-40s %9.2f %9s %16.2f\n" "HTTP/3 over QUIC ($cc)" "$t" "$(mb "$t" 20971520)" "$(echo "$t / $best" | bc -l)"
done
fi
