#!/usr/bin/env bash
# Local EC2 endpoint: moto's server (and optionally throttle_proxy.py in front of it).
#
#   moto.sh start [--port N]        start moto_server on 127.0.0.1 (N unset/0: a free port),
#                                   wait until it answers, print its URL. Already running:
#                                   print the running one's URL.
#   moto.sh stop                    stop exactly the recorded PID; no-op if not running
#   moto.sh reset                   POST /moto-api/reset (wipes all state; AMIs come back)
#   moto.sh status                  "running PID URL" (exit 0) or "not running" (exit 3)
#   moto.sh url                     print the URL (exit 3 if not running)
#   moto.sh proxy-start [--port N]  start throttle_proxy.py in front of the running moto,
#                                   print the proxy's URL
#   moto.sh proxy-stop | proxy-status | proxy-url
#
# State: ${CAPWIN_KIT_STATE:-$HOME/.cache/capwin/kit}/moto.{pid,url,log} and
# proxy.{pid,url,log,json}. The venv comes from setup.sh beside this script.
# Env: CAPWIN_MOTO_START_TIMEOUT (seconds, default 60), CAPWIN_MOTO_AMIS_PATH
# (default: amis.json beside this script).
# Stopping checks that the recorded PID is still our process (its command line
# names moto_server / throttle_proxy.py) before signalling it; nothing else is killed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${CAPWIN_KIT_STATE:-$HOME/.cache/capwin/kit}"
timeout="${CAPWIN_MOTO_START_TIMEOUT:-60}"
amis="${CAPWIN_MOTO_AMIS_PATH:-$here/amis.json}"

die() { echo "moto.sh: $*" >&2; exit 1; }

# name -> the string the process's command line must contain
marker() { case "$1" in moto) echo moto_server ;; proxy) echo throttle_proxy.py ;; esac; }

# Prints the recorded PID if that process is alive and is ours; else nothing.
live_pid() {
  local name="$1" pid
  [[ -f "$state/$name.pid" ]] || return 0
  pid="$(cat "$state/$name.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$(marker "$name")"; then
    echo "$pid"
  fi
}

clear_state() { rm -f "$state/$1.pid" "$state/$1.url" "$state/$1.json"; }

free_port() {
  "$1" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_ready PY URL PID: polls URL until it answers 200 from a socket that PID
# listens on (so another server already on that port never passes for ours);
# fails when PID dies or after the timeout.
wait_ready() {
  "$1" "$here/../../lib/wait_ready.py" "$2" "$3" "$timeout"
}

# ec2_smoke PY URL AMIS: one (fake-)signed DescribeImages for the first AMI of the
# list; moto only builds its EC2 backend (and reads every AMI entry) on the first
# EC2 call, so a broken amis.json shows up here and not in a later test.
ec2_smoke() {
  "$1" - "$2" "$3" <<'PYEOF'
import json, sys, urllib.error, urllib.request
url, amis = sys.argv[1], sys.argv[2]
with open(amis) as f:
    first = json.load(f)[0]["ami_id"]
req = urllib.request.Request(
    url + "/", data=("Action=DescribeImages&Version=2016-11-15&ImageId.1=" + first).encode(),
    headers={"Content-Type": "application/x-www-form-urlencoded",
             "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDCAPWINKIT/20260101/us-east-1/"
                              "ec2/aws4_request, SignedHeaders=host, Signature=00"})
try:
    body = urllib.request.urlopen(req, timeout=60).read().decode()
except urllib.error.HTTPError as e:
    sys.exit("moto.sh: DescribeImages failed with HTTP %d: is %s valid?" % (e.code, amis))
if first not in body:
    sys.exit("moto.sh: DescribeImages did not return %s: is %s the list moto loaded?" % (first, amis))
PYEOF
}

# port_busy PY PORT: true if something accepts connections on 127.0.0.1:PORT.
port_busy() {
  "$1" -c 'import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$2"
}

# stop_one NAME: SIGTERM the recorded PID, wait up to 10 s, then SIGKILL that PID.
stop_one() {
  local name="$1" pid i
  pid="$(live_pid "$name")"
  if [[ -z "$pid" ]]; then
    clear_state "$name"
    echo "$name: not running" >&2
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -n "$(live_pid "$name")" ]] || break
    sleep 0.1
  done
  if [[ -n "$(live_pid "$name")" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -n "$(live_pid "$name")" ]] || break
      sleep 0.1
    done
  fi
  clear_state "$name"
  echo "$name: stopped pid $pid" >&2
}

parse_port() {
  port=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
      --port=*) port="${1#--port=}"; shift ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ && "$port" -le 65535 ]] || die "bad port: $port"
}

start_moto() {
  parse_port "$@"
  mkdir -p "$state"
  local pid py bin url attempt
  pid="$(live_pid moto)"
  if [[ -n "$pid" ]]; then
    echo "moto: already running (pid $pid)" >&2
    cat "$state/moto.url"
    return 0
  fi
  clear_state moto
  [[ -f "$amis" ]] || die "no AMI list at $amis"
  py="$("$here/setup.sh")"
  bin="$(dirname "$py")/moto_server"
  for attempt in 1 2 3; do
    local p="$port"
    if [[ "$p" == 0 ]]; then
      p="$(free_port "$py")"
    elif port_busy "$py" "$p"; then
      die "port $p is already in use"
    fi
    url="http://127.0.0.1:$p"
    # setsid: moto must not die with the shell/terminal that started it. In this
    # non-interactive script the background child is no process-group leader, so
    # setsid execs without forking and $! is moto_server's own PID (wait_ready
    # checks that this PID is the one listening).
    MOTO_AMIS_PATH="$amis" MOTO_ENABLE_AMI_VALIDATION=true \
      MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true \
      setsid "$bin" -H 127.0.0.1 -p "$p" </dev/null >"$state/moto.log" 2>&1 &
    pid=$!
    echo "$pid" > "$state/moto.pid"
    if wait_ready "$py" "$url/moto-api/" "$pid"; then
      if ! ec2_smoke "$py" "$url" "$amis"; then
        stop_one moto 2>/dev/null
        grep -E '^[A-Za-z.]*(Error|Exception)' "$state/moto.log" | tail -n 3 >&2 || true
        die "moto_server started but EC2 does not work"
      fi
      echo "$url" > "$state/moto.url"
      echo "moto: pid $pid at $url (log $state/moto.log)" >&2
      echo "$url"
      return 0
    fi
    stop_one moto 2>/dev/null
    # A fixed port that fails is final; a picked port may have been taken meanwhile.
    [[ "$port" == 0 ]] || break
  done
  tail -n 20 "$state/moto.log" >&2 || true
  die "moto_server did not become ready"
}

start_proxy() {
  parse_port "$@"
  mkdir -p "$state"
  local pid py up url i
  pid="$(live_pid proxy)"
  if [[ -n "$pid" ]]; then
    echo "proxy: already running (pid $pid)" >&2
    cat "$state/proxy.url"
    return 0
  fi
  clear_state proxy
  [[ -n "$(live_pid moto)" ]] || die "moto is not running (moto.sh start first)"
  up="$(cat "$state/moto.url")"
  py="$("$here/setup.sh")"
  if [[ "$port" != 0 ]] && port_busy "$py" "$port"; then die "port $port is already in use"; fi
  setsid "$py" "$here/throttle_proxy.py" --listen "127.0.0.1:$port" --upstream "$up" \
    --state "$state/proxy.json" </dev/null >"$state/proxy.log" 2>&1 &
  pid=$!
  echo "$pid" > "$state/proxy.pid"
  for ((i = 0; i < timeout * 10; i++)); do
    if [[ -s "$state/proxy.json" ]]; then break; fi
    # kill -0, not live_pid: right after the fork the child may not have exec'd python yet.
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [[ -s "$state/proxy.json" ]]; then
    url="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$state/proxy.json")"
    if wait_ready "$py" "$url/_capwin/health" "$pid"; then
      echo "$url" > "$state/proxy.url"
      echo "proxy: pid $pid at $url -> $up (log $state/proxy.log)" >&2
      echo "$url"
      return 0
    fi
  fi
  stop_one proxy 2>/dev/null
  tail -n 20 "$state/proxy.log" >&2 || true
  die "throttle_proxy.py did not become ready"
}

status_of() {
  local pid
  pid="$(live_pid "$1")"
  if [[ -n "$pid" && -f "$state/$1.url" ]]; then
    echo "running $pid $(cat "$state/$1.url")"
  else
    echo "not running"
    return 3
  fi
}

url_of() {
  [[ -n "$(live_pid "$1")" && -f "$state/$1.url" ]] || { echo "$1: not running" >&2; return 3; }
  cat "$state/$1.url"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  start) start_moto "$@" ;;
  stop) stop_one moto ;;
  reset)
    url="$(url_of moto)"
    py="$("$here/setup.sh")"
    "$py" -c 'import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/moto-api/reset", data=b"", method="POST"), timeout=30).read()' "$url"
    echo "moto: reset $url" >&2 ;;
  status) status_of moto ;;
  url) url_of moto ;;
  proxy-start) start_proxy "$@" ;;
  proxy-stop) stop_one proxy ;;
  proxy-status) status_of proxy ;;
  proxy-url) url_of proxy ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
