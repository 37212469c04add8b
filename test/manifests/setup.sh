#!/usr/bin/env bash
# Creates (idempotently) the venv holding kubernetes-validate + jsonschema for validate.py and
# prints its python path on stdout (everything else goes to stderr).
#   VENV=${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/manifests
# Re-installs only when requirements.txt changed (sha256 stamp in the venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
venv="${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/manifests"
py="$venv/bin/python"
stamp="$venv/.capwin-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
check='import kubernetes_validate, jsonschema, yaml; assert kubernetes_validate.__version__ == "1.37.0"'

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$py" -c "$check" 2>/dev/null; then
  echo "$py"
  exit 0
fi

base_py="${PYTHON:-python3}"
"$base_py" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' >&2

# A half-built venv (interrupted install, other python) is rebuilt from scratch.
if [[ -d "$venv" && ! -x "$py" ]]; then rm -rf "$venv"; fi
if [[ ! -x "$py" ]]; then
  mkdir -p "$(dirname "$venv")"
  "$base_py" -m venv "$venv" >&2
fi
"$py" -m pip install --disable-pip-version-check -q -r "$req" >&2
"$py" -c "$check" >&2
echo "$want" > "$stamp"
echo "$py"
