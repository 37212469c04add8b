# Shared by the test tools' setup.sh scripts: an idempotent Python venv per tool.
#
#   capwin_venv NAME REQUIREMENTS CHECK
#
# makes ${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/NAME, installs REQUIREMENTS into it with pip
# (only when that file changed since the last install: a sha256 stamp in the venv), verifies the
# install by running the Python statement CHECK, and prints the venv's python path on stdout.
# Everything else goes to stderr. A half-built venv (interrupted install, another python) is
# rebuilt from scratch.
capwin_venv() {
  local name="$1" req="$2" check="$3"
  local venv="${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/$name"
  local py="$venv/bin/python" stamp="$venv/.capwin-requirements.sha256"
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$py" -c "$check" 2>/dev/null; then
    echo "$py"
    return 0
  fi
  local base_py="${PYTHON:-python3}"
  "$base_py" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >&2
  if [[ -d "$venv" && ! -x "$py" ]]; then rm -rf "$venv"; fi
  if [[ ! -x "$py" ]]; then
    mkdir -p "$(dirname "$venv")"
    "$base_py" -m venv "$venv" >&2
  fi
  rm -f "$stamp"
  "$py" -m pip install --disable-pip-version-check -q -r "$req" >&2
  "$py" -c "$check" >&2
  echo "$want" > "$stamp"
  echo "$py"
}
