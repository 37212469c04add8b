#!/usr/bin/env bash
# Creates (idempotently) the venv with the tree-sitter PowerShell grammar pslint.py uses and prints
# its python path on stdout: ${CAPWIN_VENV_DIR:-$HOME/.cache/capwin/venv}/templates-pslint
# (see test/lib/venv.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib/venv.sh"
capwin_venv templates-pslint "$here/requirements-pslint.txt" 'import tree_sitter, tree_sitter_powershell; tree_sitter.Language(tree_sitter_powershell.language())'
