#!/usr/bin/env bash
# capwin's packaging checks (config/, tilt-provider.yaml, Dockerfile, .dockerignore): renders both
# kustomize roots with plain `kubectl kustomize` (no flags; they must build without
# --load-restrictor), checks the clusterctl rules and RBAC, validates against real schemas with
# test/manifests/validate.py, after a self-test on test/config/fixtures/. Ends with
# `config checks: N passed, M failed`.
#   test/config/check.sh [--self-test | --no-self-test | --render DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v kubectl >/dev/null 2>&1; then
  echo "config checks: kubectl not found in PATH; it renders the kustomize roots (kubectl kustomize)" >&2
  exit 2
fi
py="$("$here/../manifests/setup.sh")"
exec "$py" "$here/check.py" "$@"
