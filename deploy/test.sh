#!/usr/bin/env bash
# The project's test command (the README's, and what CI runs through .ci/run):
# installs what is missing, then runs rustfmt, clippy and the whole test suite (nextest)
# against real services: PostgreSQL on 127.0.0.1:5432 and an S3 server (s3s-fs) it starts.
# On failure it says which step failed.
#
#   deploy/test.sh                  everything
#   deploy/test.sh -- FILTER...     only tests matching FILTER (passed to cargo nextest)
#
# Environment:
#   CARGO_TARGET_DIR        build directory (default ~/.cache/moments/target, shared by clones)
#   MOMENTS_TEST_PG_URL     PostgreSQL where tests may create databases
#                           (default postgres://postgres@127.0.0.1:5432/test)
#   MOMENTS_TEST_SKIP_PG    1: skip (with a notice) the PostgreSQL halves instead of failing
#                           when PostgreSQL is unreachable (CI never sets it)
#   MOMENTS_TEST_REDIS_URL  Redis for the shared rate-limit tests (default redis://127.0.0.1:6379)
#   MOMENTS_TEST_SKIP_REDIS 1: skip the Redis rate-limit tests instead of failing when Redis is
#                           unreachable (CI never sets it)
#   MOMENTS_TEST_MODELS_DIR where the neural voice models are installed for the tests
#                           (default ~/.cache/moments/models, shared by clones)
#   MOMENTS_TEST_SKIP_MODELS 1: skip the neural engines' tests instead of failing when the
#                           models are missing (CI never sets it)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi

started=$(date +%s)
step() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "==> $name"
  if ! "$@"; then
    echo "FAILED: $name (after $(( $(date +%s) - t0 )) s): $*" >&2
    exit 1
  fi
  echo "    ok: $name ($(( $(date +%s) - t0 )) s)"
}

step "install system packages" deploy/install-deps.sh --browser
step "install test tools" deploy/install-test-tools.sh
export MOMENTS_TEST_MODELS_DIR=${MOMENTS_TEST_MODELS_DIR:-$HOME/.cache/moments/models}
step "install neural voice models" deploy/install-models.sh "$MOMENTS_TEST_MODELS_DIR"
step "rustfmt" cargo fmt --all -- --check
step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "deploy files (lint-deploy.sh: hadolint, compose, helm, promtool, dashboard)" deploy/lint-deploy.sh
step "tests (cargo nextest)" cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}"
echo "all checks passed in $(( $(date +%s) - started )) s"
