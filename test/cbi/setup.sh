#!/usr/bin/env bash
# Creates (idempotently) the venv holding cloudbase-init for cbi_driver.py and prints its python
# path on stdout: ${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/cbi (see test/lib/venv.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib/venv.sh"
capwin_venv cbi "$here/requirements.txt" 'import cloudbaseinit.plugins.common.userdata'
