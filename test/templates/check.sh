#!/usr/bin/env bash
# Checks the clusterctl templates in templates/ (see check.py for the list): validate.py with
# --default-vars on every templates/cluster-template-*.yaml (CAAPH HelmChartProxies included) and on
# every addon manifest embedded in their ConfigMaps, embedded scripts parsed, namespaces, variables
# against templates/README.md, HelmChartProxy valuesTemplates rendered with gotemplate.py (and the
# Calico values Windows needs), no Job / cluster-admin binding / manifest download, pinned images,
# structure, and negative cases that must fail. Ends with `templates checks: N passed, M failed`;
# exits non-zero on any failure.
#
#   test/templates/check.sh [TEMPLATE...]
#
# Needs Python 3.11 with venv/pip (PyPI): the manifests venv (test/manifests/setup.sh) and a small
# one with the tree-sitter PowerShell grammar (setup-pslint.sh). CAPWIN_SKIP_PSLINT=1 skips the
# latter (the PowerShell scripts are then reported as not parsed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/../manifests/setup.sh")"
pslint=""
if [[ "${CAPWIN_SKIP_PSLINT:-}" != "1" ]]; then
  pslint="$("$here/setup-pslint.sh")"
fi
exec "$py" "$here/check.py" --pslint-python "$pslint" "$@"
