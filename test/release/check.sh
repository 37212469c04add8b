#!/usr/bin/env bash
# Checks what `capwin release` writes: runs
#   CAPWIN_BINARY release --version v0.1.0 --out <empty temporary directory>
# from the repository root, then test/config/check.py --release on that directory (the clusterctl
# local-repository rules, the provider rules on both components files, the image tag, equality
# with the kustomize render of config/, the templates), with the manifests venv python.
# Ends with `release checks: N passed, M failed`; removes the temporary directory.
#   test/release/check.sh CAPWIN_BINARY
# Exit 0 when every check passes, 1 when a check fails or the binary cannot make the release (for
# instance it has no `release` subcommand), 2 on a usage error or when kubectl is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version=v0.1.0

# give_up CODE MESSAGE: the run ends before check.py could run.
give_up() {
  echo "test/release/check.sh: $2" >&2
  echo "release checks: 0 passed, 1 failed"
  exit "$1"
}
fail() { give_up 1 "$*"; }

if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: test/release/check.sh CAPWIN_BINARY" >&2
  exit 2
fi
bin="$1"
if [[ "$bin" != */* ]]; then
  bin="$(command -v -- "$bin" || true)"
  [[ -n "$bin" ]] || fail "$1 is not in PATH"
fi
[[ -f "$bin" && -x "$bin" ]] || fail "$bin is not an executable file"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"  # it runs from the repository root
command -v kubectl >/dev/null 2>&1 ||
  give_up 2 "kubectl not found in PATH; check.py renders config/ with kubectl kustomize"
py="$("$repo/test/manifests/setup.sh")"

out="$(mktemp -d "${TMPDIR:-/tmp}/capwin-release.XXXXXX")"
log="$(mktemp "${TMPDIR:-/tmp}/capwin-release-log.XXXXXX")"
trap 'rm -rf "$out" "$log"' EXIT

echo "release: $bin release --version $version --out $out"
set +e
(cd "$repo" && timeout 600 "$bin" release --version "$version" --out "$out") >"$log" 2>&1
rc=$?
set -e
sed 's/^/  | /' "$log"
# `capwin release --help` fails (clap: unrecognized subcommand) when the binary has no `release`.
has_release() { (cd "$repo" && timeout 60 "$bin" release --help) >/dev/null 2>&1; }
if [[ $rc -ne 0 ]]; then
  has_release || fail "$bin does not support \`release\` (\`release --help\` fails too): build capwin with the release subcommand"
  [[ $rc -eq 124 ]] && fail "\`$(basename "$bin") release\` did not finish within 600 s"
  fail "\`$(basename "$bin") release --version $version --out DIR\` failed (exit $rc)"
fi
if [[ -z "$(ls -A "$out")" ]]; then
  has_release || fail "$bin does not support \`release\` (it exited 0 but wrote nothing to --out)"
  fail "\`$(basename "$bin") release\` exited 0 but wrote nothing to --out"
fi

set +e
"$py" "$repo/test/config/check.py" --release "$out" --version "$version"
rc=$?
set -e
exit "$rc"
