"""Waits until a local test server is ready: URL answers 200 from a socket that PID listens on
(so another server already on that port never passes for ours). Exits 0 when ready, 2 when PID
died, 1 on timeout. Shared by test/kit/aws/moto.sh and test/kit/azure/arm.sh.

    python wait_ready.py URL PID TIMEOUT_SECONDS [CA_PEM]
"""
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request

url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tls = ssl.create_default_context(cafile=sys.argv[4]) if len(sys.argv) > 4 else None
port = urllib.parse.urlsplit(url).port
deadline = time.monotonic() + timeout


def alive():
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def listens():
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    c = line.split()
                    if c[3] == "0A" and int(c[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add("socket:[%s]" % c[9])
        except OSError:
            pass
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes:
                return True
        except OSError:
            pass
    return False


while time.monotonic() < deadline:
    if not alive():
        sys.exit(2)
    if listens():
        try:
            with urllib.request.urlopen(url, timeout=2, context=tls) as r:
                if r.status == 200 and alive() and listens():
                    sys.exit(0)
        except OSError:
            pass
    time.sleep(0.1)
sys.exit(1)
