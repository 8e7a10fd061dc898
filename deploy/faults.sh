#!/usr/bin/env bash
# The long versions of the fault tests (the suite runs short ones), with the figures the README
# reports. Needs what deploy/test.sh installs (PostgreSQL on 127.0.0.1:5432, s3s-fs); run that
# once first. Uploads take about 40 s and workers 15 s on 2 cores; the fuzz replay is the long
# part (the splitter's target alone more than 5 minutes).
#
#   deploy/faults.sh            all three
#   deploy/faults.sh uploads    100 uploads with connection cuts and 5 server SIGKILLs
#   deploy/faults.sh workers    30 jobs with 10 worker SIGKILLs and a master poller
#   deploy/faults.sh fuzz       200,000 mutations of every fuzz target's seeds
#
# Environment: the MOMENTS_TEST_FAULT_* and MOMENTS_TEST_FUZZ_RUNS knobs override the sizes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/moments/target}
export MOMENTS_TEST_MODELS_DIR=${MOMENTS_TEST_MODELS_DIR:-$HOME/.cache/moments/models}
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(uploads workers fuzz)
run() { cargo nextest run --profile long --locked --no-capture "$@"; }
for w in "${which[@]}"; do
  case $w in
    uploads)
      MOMENTS_TEST_FAULT_UPLOADS=${MOMENTS_TEST_FAULT_UPLOADS:-100} \
      MOMENTS_TEST_FAULT_KILLS=${MOMENTS_TEST_FAULT_KILLS:-5} \
        run -p moments --test faults -E 'test(uploads_cut_mid_patch)' ;;
    workers)
      MOMENTS_TEST_FAULT_JOBS=${MOMENTS_TEST_FAULT_JOBS:-30} \
      MOMENTS_TEST_FAULT_WORKER_KILLS=${MOMENTS_TEST_FAULT_WORKER_KILLS:-10} \
        run -p moments --test scaleout -E 'test(workers_killed_at_random_points)' ;;
    fuzz)
      MOMENTS_TEST_FUZZ_RUNS=${MOMENTS_TEST_FUZZ_RUNS:-200000} \
        run --workspace -E 'binary(fuzz)' ;;
    *) echo "faults.sh: unknown set '$w' (uploads, workers, fuzz)" >&2; exit 2 ;;
  esac
done
