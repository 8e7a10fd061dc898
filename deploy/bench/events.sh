#!/usr/bin/env bash
# Outbox benchmark: events per second through the transactional outbox and the relay, and the
# delay from each event's commit to its receipt by a webhook endpoint on loopback (p50, p99,
# max), under a burst and under an even 200 events/s. Each event is written in its own
# transaction (as a state change writes it); the relay signs and POSTs every one. The writers
# run in the relay's process (woken at once); a change committed on another node waits up to
# events.poll_ms more. Runs on PostgreSQL (a fresh database on MOMENTS_TEST_PG_URL) and on
# SQLite, release build.
#
#   deploy/bench/events.sh [EVENTS]      (env: WRITERS=8 SUBJECTS=500 CONCURRENCY=16)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-5000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
cd "$root"
cargo build -q --release --locked -p common --example events_bench
bin="$CARGO_TARGET_DIR/release/examples/events_bench"
for db in postgres sqlite; do
  # a burst (throughput), then an even 200 events/s for 10 s (the delay a consumer sees)
  "$bin" --db "$db" --events "$n" --writers "${WRITERS:-8}" --subjects "${SUBJECTS:-500}" \
    --concurrency "${CONCURRENCY:-16}"
  "$bin" --db "$db" --events 2000 --rate 200 --writers "${WRITERS:-8}" \
    --subjects "${SUBJECTS:-500}" --concurrency "${CONCURRENCY:-16}"
done
