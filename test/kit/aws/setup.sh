#!/usr/bin/env bash
# Creates (idempotently) the venv holding moto's server (and boto3, which comes with it) for the
# local EC2 endpoint kit, and prints its python path on stdout; moto_server is beside it:
# "$(dirname "$py")/moto_server". Venv: ${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/moto
# (see test/lib/venv.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../../lib/venv.sh"
capwin_venv moto "$here/requirements.txt" 'import moto.server, moto.ec2, boto3, flask, flask_cors, os, sys; assert os.access(os.path.join(os.path.dirname(sys.executable), "moto_server"), os.X_OK)'
