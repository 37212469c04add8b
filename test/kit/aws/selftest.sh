#!/usr/bin/env bash
# Self-test of the local EC2 kit: starts moto (free port) and throttle_proxy.py in
# front of it, in a private state dir (a kit you started yourself is not touched),
# runs selftest.py with boto3, and stops both by PID on exit.
# Last line: "aws kit selftest: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

py="$("$here/setup.sh")"
"$py" "$here/gen_amis.py" --check

CAPWIN_KIT_STATE="$(mktemp -d "${TMPDIR:-/tmp}/capwin-aws-kit.XXXXXX")"
export CAPWIN_KIT_STATE
cleanup() {
  local rc=$?
  # quiet on success, so the summary line stays the last line of the output
  "$here/moto.sh" proxy-stop 2>>"$CAPWIN_KIT_STATE/stop.log" || rc=1
  "$here/moto.sh" stop 2>>"$CAPWIN_KIT_STATE/stop.log" || rc=1
  if [[ $rc -ne 0 ]]; then
    for f in moto.log proxy.log stop.log; do
      [[ -f "$CAPWIN_KIT_STATE/$f" ]] && { echo "--- $f (tail)" >&2; tail -n 30 "$CAPWIN_KIT_STATE/$f" >&2; }
    done
  fi
  rm -rf "$CAPWIN_KIT_STATE"
  exit $rc
}
trap cleanup EXIT

t0=$(date +%s%N)
moto_url="$("$here/moto.sh" start --port 0)"
proxy_url="$("$here/moto.sh" proxy-start --port 0)"
t1=$(date +%s%N)
echo "moto $moto_url, proxy $proxy_url (both up in $(( (t1 - t0) / 1000000 )) ms)"

"$py" "$here/selftest.py" --moto "$moto_url" --proxy "$proxy_url"
