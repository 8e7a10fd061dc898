#!/usr/bin/env bash
# Runs the cargo-fuzz targets coverage-guided under libFuzzer (AddressSanitizer build).
# The same checks run in the ordinary test suite over their seeds and a few thousand mutations
# (`common::testing::fuzz::replay`); this is the longer, coverage-guided run.
#
#   deploy/fuzz.sh                     every target, 60 s each
#   deploy/fuzz.sh 600 jwt playlist    the named targets, 600 s each
#   deploy/fuzz.sh TARGET -- FILE      run one target on one input (reproduce a failure)
#
# Targets: jwt (common), tus_headers (ingest), playlist, boxes (packager),
#          splitter, ws_message (asr-tts).
# Corpora grow under ~/.cache/moments/fuzz/corpus/TARGET; a crash is saved under
# ~/.cache/moments/fuzz/artifacts/TARGET/ and the script exits non-zero. Every crash found
# becomes a regression test: add the input to the target's seeds in its crate's fuzz/checks.rs.
# Builds go to ~/.cache/moments/fuzz-target (the first build of a crate takes minutes; asr-tts's
# builds CTranslate2 again, about 15 min).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
# cargo-fuzz needs nightly flags (-Zsanitizer); the machine has one stable toolchain
export RUSTC_BOOTSTRAP=1
cache="$HOME/.cache/moments/fuzz"
target_dir="$HOME/.cache/moments/fuzz-target"

crate_of() {
  case "$1" in
    jwt) echo common ;;
    tus_headers) echo ingest ;;
    playlist | boxes) echo packager ;;
    splitter | ws_message) echo asr-tts ;;
    *) echo "fuzz.sh: unknown target $1 (jwt, tus_headers, playlist, boxes, splitter, ws_message)" >&2
       return 1 ;;
  esac
}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (one-time)" >&2
  cargo install cargo-fuzz --locked
fi

# A fuzz crate is its own workspace: start its lock file from the main one, so it builds the
# same dependency versions the test suite runs.
for crate in common ingest packager asr-tts; do
  [ -f "$root/$crate/fuzz/Cargo.lock" ] || cp "$root/Cargo.lock" "$root/$crate/fuzz/Cargo.lock"
done

if [ "${2:-}" = "--" ]; then
  t=$1 file=${3:?usage: deploy/fuzz.sh TARGET -- FILE}
  crate=$(crate_of "$t")
  cd "$root/$crate/fuzz"
  exec cargo fuzz run --target-dir "$target_dir" "$t" "$file"
fi

secs=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jwt tus_headers playlist boxes splitter ws_message)

failed=()
for t in "${targets[@]}"; do
  crate=$(crate_of "$t")
  mkdir -p "$cache/corpus/$t" "$cache/artifacts/$t"
  echo "==> $t ($crate/fuzz), ${secs} s" >&2
  if ! (cd "$root/$crate/fuzz" && cargo fuzz run --target-dir "$target_dir" "$t" "$cache/corpus/$t" -- \
      -max_total_time="$secs" -artifact_prefix="$cache/artifacts/$t/" -print_final_stats=1); then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs under $cache/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${targets[*]}: no failure in ${secs} s each" >&2
