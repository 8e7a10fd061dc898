# Helpers shared by the benchmark scripts (sourced, not run).

# `-u VAR` for every MOMENTS_* variable of the caller's environment (test knobs aside), so a
# benchmark's server and clients run on the settings the script gives them and nothing else.
clean_env() { env | grep -o '^MOMENTS_[A-Z_]*' | grep -v '^MOMENTS_TEST_' | sed 's/^/-u /' | tr '\n' ' '; }

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_workdir NAME: makes the scratch directory $work; on exit the processes whose ids the
# script put in $pids are stopped and $work is removed.
bench_workdir() {
  work=$(mktemp -d "/tmp/moments-$1-XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
