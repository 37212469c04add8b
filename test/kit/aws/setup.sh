#!/usr/bin/env bash
# Creates (idempotently) the venv holding moto's server (and boto3, which comes
# with it) for the local EC2 endpoint kit, and prints its python path on stdout
# (everything else goes to stderr). moto_server is beside it: "$(dirname "$py")/moto_server".
#   VENV=${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/moto
# Re-installs only when requirements.txt changed (sha256 stamp in the venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
venv="${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/moto"
py="$venv/bin/python"
stamp="$venv/.capwin-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/moto_server" ]] \
   && "$py" -c 'import moto.server, boto3' 2>/dev/null; then
  echo "$py"
  exit 0
fi

base_py="${PYTHON:-python3}"
"$base_py" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >&2

# A half-built venv (interrupted install, other python) is rebuilt from scratch.
if [[ -d "$venv" && ! -x "$py" ]]; then rm -rf "$venv"; fi
if [[ ! -x "$py" ]]; then
  mkdir -p "$(dirname "$venv")"
  "$base_py" -m venv "$venv" >&2
fi
rm -f "$stamp"
"$py" -m pip install --disable-pip-version-check -q -r "$req" >&2
"$py" -c 'import moto.server, moto.ec2, boto3, flask, flask_cors' >&2
test -x "$venv/bin/moto_server"
echo "$want" > "$stamp"
echo "$py"
