#!/usr/bin/env bash
# Checks the deployment files without a container engine: hadolint for the Dockerfile, the
# Compose specification's JSON schema for compose.yaml.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$HOME/.cache/moments/venv"
"$venv/bin/hadolint" "$root/deploy/Dockerfile"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$root/deploy/compose.yaml"
