#!/usr/bin/env bash
# Creates (idempotently) the venv holding cloudbase-init for cbi_driver.py and
# prints its python path on stdout (everything else goes to stderr).
#   VENV=${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/cbi
# Re-installs only when requirements.txt changed (sha256 stamp in the venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
venv="${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/cbi"
py="$venv/bin/python"
stamp="$venv/.capwin-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$py" -c 'import cloudbaseinit' 2>/dev/null; then
  echo "$py"
  exit 0
fi

base_py="${PYTHON:-python3}"
"$base_py" -c 'import sys; assert sys.version_info >= (3, 8), sys.version' >&2

# A half-built venv (interrupted install, other python) is rebuilt from scratch.
if [[ -d "$venv" && ! -x "$py" ]]; then rm -rf "$venv"; fi
if [[ ! -x "$py" ]]; then
  mkdir -p "$(dirname "$venv")"
  "$base_py" -m venv "$venv" >&2
fi
"$py" -m pip install --disable-pip-version-check -q -r "$req" >&2
"$py" -c 'import cloudbaseinit.plugins.common.userdata' >&2
echo "$want" > "$stamp"
echo "$py"
