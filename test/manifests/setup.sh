#!/usr/bin/env bash
# Creates (idempotently) the venv holding kubernetes-validate + jsonschema for validate.py and
# prints its python path on stdout: ${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/manifests
# (see test/lib/venv.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib/venv.sh"
capwin_venv manifests "$here/requirements.txt" 'import kubernetes_validate, jsonschema, yaml; assert kubernetes_validate.__version__ == "1.37.0"'
