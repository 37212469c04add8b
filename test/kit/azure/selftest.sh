#!/usr/bin/env bash
# Self-test of the fake ARM kit: starts fake_arm.py with arm.sh in a private state dir
# (a kit you started yourself is not touched), runs a few shell-level checks of arm.sh,
# then selftest.py (urllib + ssl trusting only the kit's CA), and stops the server by
# PID on exit. Last line: "azure kit selftest: N passed, M failed"; non-zero on failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"

CAPWIN_KIT_STATE="$(mktemp -d "${TMPDIR:-/tmp}/capwin-azure-kit.XXXXXX")"
export CAPWIN_KIT_STATE
unset CAPWIN_ARM_SEED CAPWIN_ARM_POLLS
decoy=""
cleanup() {
  local rc=$?
  # quiet on success, so the summary line stays the last line of the output
  "$here/arm.sh" stop 2>>"$CAPWIN_KIT_STATE/stop.log" || rc=1
  if [[ -n "$decoy" ]]; then kill "$decoy" 2>/dev/null || true; wait "$decoy" 2>/dev/null || true; fi
  if [[ $rc -ne 0 ]]; then
    for f in arm.log stop.log; do
      [[ -f "$CAPWIN_KIT_STATE/$f" ]] && { echo "--- $f (tail)" >&2; tail -n 30 "$CAPWIN_KIT_STATE/$f" >&2; }
    done
  fi
  rm -rf "$CAPWIN_KIT_STATE"
  exit $rc
}
trap cleanup EXIT

sp=0 sf=0
check() { # check NAME CMD...: one shell-level check
  local name="$1"; shift
  if "$@"; then sp=$((sp + 1)); printf 'ok   %s\n' "$name"; else sf=$((sf + 1)); printf 'FAIL %s\n' "$name"; fi
}

t0=$(date +%s%N)
url="$("$here/arm.sh" start --port 0 2>/dev/null)"
t1=$(date +%s%N)
ca="$("$here/arm.sh" ca)"
echo "fake ARM $url (up in $(( (t1 - t0) / 1000000 )) ms, CA $ca)"

status_ok() { [[ "$("$here/arm.sh" status)" == "running $(cat "$CAPWIN_KIT_STATE/arm.pid") $url $ca" ]]; }
check "arm.sh status names pid, url and CA" status_ok
same_url() { [[ "$("$here/arm.sh" start 2>/dev/null)" == "$url" ]]; }
check "arm.sh start again reuses the running server" same_url
ready_line() {
  # fake_arm.py itself prints exactly one JSON line {"url", "ca"} when ready
  local d out pid line i
  d="$(mktemp -d "$CAPWIN_KIT_STATE/direct.XXXX")"
  "$py" "$here/fake_arm.py" --listen 127.0.0.1:0 --state-dir "$CAPWIN_KIT_STATE/arm-tls" >"$d/out" 2>"$d/err" &
  pid=$!
  for ((i = 0; i < 100; i++)); do [[ -s "$d/out" ]] && break; sleep 0.1; done
  line="$(head -n 1 "$d/out")"
  kill -TERM "$pid"; wait "$pid"; local rc=$?
  "$py" -c 'import json,sys; d=json.loads(sys.argv[1]); assert set(d)=={"url","ca"} and d["url"].startswith("https://127.0.0.1:") and d["ca"]==sys.argv[2], d' "$line" "$ca" \
    && [[ $rc -eq 0 && "$(wc -l < "$d/out")" -eq 1 ]] && grep -q "fake ARM stopped" "$d/err"
}
check "fake_arm.py prints one ready line, reuses the CA, exits 0 on SIGTERM" ready_line
stale_pid() {
  # a recorded PID that is not fake_arm.py must never be signalled
  local other="$CAPWIN_KIT_STATE/other"
  mkdir -p "$other"
  sleep 300 &
  decoy=$!
  echo "$decoy" > "$other/arm.pid"
  CAPWIN_KIT_STATE="$other" "$here/arm.sh" stop 2>/dev/null
  kill -0 "$decoy" && [[ ! -f "$other/arm.pid" ]]
}
check "arm.sh stop ignores a stale PID of another process" stale_pid
reset_ok() { "$here/arm.sh" reset 2>/dev/null; }
check "arm.sh reset" reset_ok

"$py" "$here/selftest.py" --url "$url" --ca "$ca" --shell-passed "$sp" --shell-failed "$sf"
