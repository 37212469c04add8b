#!/usr/bin/env bash
# Local ARM endpoint: fake_arm.py (HTTPS, its own test CA) on 127.0.0.1.
#
#   arm.sh start [--port N]   start fake_arm.py (N unset/0: a free port), wait until it
#                             answers over TLS, print its URL. Already running: print the
#                             running one's URL.
#   arm.sh stop               stop exactly the recorded PID; no-op if not running
#   arm.sh reset              POST /_capwin/reset (wipes all state; the seed comes back)
#   arm.sh status             "running PID URL CA" (exit 0) or "not running" (exit 3)
#   arm.sh url                print the URL (exit 3 if not running)
#   arm.sh ca                 print the CA PEM path (exit 3 if not running)
#
# State: ${CAPWIN_KIT_STATE:-$HOME/.cache/capwin/kit}/arm.{pid,url,ca,json,log}; arm.ca holds
# the path of the CA PEM. The CA and server certificate live in arm-tls/ there and are
# reused across restarts (so a client may keep trusting the same CA).
# Env: CAPWIN_ARM_START_TIMEOUT (seconds, default 30), CAPWIN_ARM_SEED (seed JSON, default
# seed.json beside this script; "none" for an empty server), CAPWIN_ARM_POLLS (default 2),
# PYTHON (default python3). Standard library only: no venv.
# Stopping checks that the recorded PID is still our process (its command line names
# fake_arm.py) before signalling it; nothing else is ever killed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${CAPWIN_KIT_STATE:-$HOME/.cache/capwin/kit}"
timeout="${CAPWIN_ARM_START_TIMEOUT:-30}"
seed="${CAPWIN_ARM_SEED:-$here/seed.json}"
polls="${CAPWIN_ARM_POLLS:-2}"
py="${PYTHON:-python3}"

die() { echo "arm.sh: $*" >&2; exit 1; }

# Prints the recorded PID if that process is alive and is ours; else nothing.
live_pid() {
  local pid
  [[ -f "$state/arm.pid" ]] || return 0
  pid="$(cat "$state/arm.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "fake_arm.py"; then
    echo "$pid"
  fi
}

clear_state() { rm -f "$state/arm.pid" "$state/arm.url" "$state/arm.ca" "$state/arm.json"; }

# wait_ready URL CA PID: polls URL/_capwin/health over TLS (trusting only CA) until it
# answers 200 from a socket that PID listens on; fails when PID dies or on timeout.
wait_ready() {
  "$py" "$here/../../lib/wait_ready.py" "$1/_capwin/health" "$3" "$timeout" "$2"
}

stop_arm() {
  local pid i
  pid="$(live_pid)"
  if [[ -z "$pid" ]]; then
    clear_state
    echo "arm: not running" >&2
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -n "$(live_pid)" ]] || break
    sleep 0.1
  done
  if [[ -n "$(live_pid)" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -n "$(live_pid)" ]] || break
      sleep 0.1
    done
  fi
  clear_state
  echo "arm: stopped pid $pid" >&2
}

start_arm() {
  local port=0 pid i url ca
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
      --port=*) port="${1#--port=}"; shift ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ && "$port" -le 65535 ]] || die "bad port: $port"
  command -v openssl >/dev/null || die "the openssl CLI is needed (apt-get install openssl)"
  mkdir -p "$state"
  pid="$(live_pid)"
  if [[ -n "$pid" ]]; then
    echo "arm: already running (pid $pid)" >&2
    cat "$state/arm.url"
    return 0
  fi
  clear_state
  local seed_args=()
  if [[ "$seed" != "none" ]]; then
    [[ -f "$seed" ]] || die "no seed file at $seed (CAPWIN_ARM_SEED=none for an empty server)"
    seed_args=(--seed "$seed")
  fi
  # setsid: the server must not die with the shell that started it. In this
  # non-interactive script the background child is no process-group leader, so setsid
  # execs without forking and $! is fake_arm.py's own PID (wait_ready checks it).
  setsid "$py" "$here/fake_arm.py" --listen "127.0.0.1:$port" --state-dir "$state/arm-tls" \
    --ready-file "$state/arm.json" --polls "$polls" "${seed_args[@]}" \
    </dev/null >"$state/arm.log" 2>&1 &
  pid=$!
  echo "$pid" > "$state/arm.pid"
  for ((i = 0; i < timeout * 10; i++)); do
    [[ -s "$state/arm.json" ]] && break
    # kill -0, not live_pid: right after the fork the child may not have exec'd python yet.
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -s "$state/arm.json" ]]; then
    url="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$state/arm.json")"
    ca="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca"])' "$state/arm.json")"
    if wait_ready "$url" "$ca" "$pid"; then
      echo "$url" > "$state/arm.url"
      echo "$ca" > "$state/arm.ca"
      echo "arm: pid $pid at $url (CA $ca, log $state/arm.log)" >&2
      echo "$url"
      return 0
    fi
  fi
  stop_arm 2>/dev/null
  tail -n 20 "$state/arm.log" >&2 || true
  die "fake_arm.py did not become ready"
}

need_running() {
  [[ -n "$(live_pid)" && -f "$state/arm.url" ]] || { echo "arm: not running" >&2; exit 3; }
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  start) start_arm "$@" ;;
  stop) stop_arm ;;
  reset)
    need_running
    "$py" -c 'import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/_capwin/reset", data=b"", method="POST"),
                       timeout=30, context=ctx).read()' "$(cat "$state/arm.url")" "$(cat "$state/arm.ca")"
    echo "arm: reset $(cat "$state/arm.url")" >&2 ;;
  status)
    pid="$(live_pid)"
    if [[ -n "$pid" && -f "$state/arm.url" ]]; then
      echo "running $pid $(cat "$state/arm.url") $(cat "$state/arm.ca")"
    else
      echo "not running"
      exit 3
    fi ;;
  url) need_running; cat "$state/arm.url" ;;
  ca) need_running; cat "$state/arm.ca" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
