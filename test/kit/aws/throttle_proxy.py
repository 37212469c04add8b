#!/usr/bin/env python3
"""A loopback HTTP proxy in front of moto that injects EC2 errors and delays.

    throttle_proxy.py --listen 127.0.0.1:0 --upstream http://127.0.0.1:PORT [--state FILE]

Prints its URL (http://127.0.0.1:N) on stdout once it accepts connections and,
with --state, writes {"pid", "url", "upstream"} to FILE (atomically; removed on
SIGTERM/SIGINT). Standard library only.

Every request outside /_capwin/ is an API request. Its Action comes from the
form-encoded body (EC2 query protocol: POST, Content-Type
application/x-www-form-urlencoded) or, failing that, from the query string;
"-" when there is none. Unless a rule is armed for that Action, the request is
forwarded unchanged (method, path and query, headers, body bytes) to the
upstream and the upstream's status, headers and body are relayed back.

Control API (same port, JSON in and out):
  POST /_capwin/arm     {"action": "RunInstances", "times": 2,
                         "code": "RequestLimitExceeded", "status": 503,
                         "message": "...", "delay": 0.0, "when": "before",
                         "drop": false}
      Appends a rule. action: an EC2 Action or "*" (any). times: how many
      matching requests it applies to (default 1; -1 = until disarmed).
      code/status: answer with the EC2 XML error envelope (status defaults by
      code: RequestLimitExceeded 503, InternalError 500, Unavailable 503,
      others 400). delay: seconds to wait first (alone: delay, then forward).
      when: "before" (default: the upstream never sees the request) or
      "after" (forward, discard the upstream's answer, then send the error:
      the call took effect but the client saw a failure). drop: close the
      connection without any answer (after the delay / forwarding).
      Rules for an exact Action are used before "*" rules; among those, the
      oldest first. Answers {"armed": rule}.
  POST /_capwin/disarm  {"action": "RunInstances"} removes that Action's rules;
                        no body or {} removes all. Answers {"removed": n}.
  GET  /_capwin/stats   {"requests": {Action: n}, "injected": {Action: n},
                         "delayed": {Action: n}, "forwarded": {Action: n},
                         "rules": [...armed rules with "remaining"...]}
  POST /_capwin/clear   disarm everything and zero the counters.
  GET  /_capwin/health  {"ok": true, "upstream": URL}
"""
import argparse
import http.client
import http.server
import ipaddress
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape

DEFAULT_STATUS = {"RequestLimitExceeded": 503, "InternalError": 500,
                  "InternalFailure": 500, "Unavailable": 503,
                  "ServiceUnavailable": 503, "Throttling": 400}
DEFAULT_MESSAGE = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "InternalError": "An internal error has occurred.",
    "Unavailable": "The service is unavailable. Please try again shortly.",
}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
              "te", "trailer", "upgrade", "content-length"}
UPSTREAM_TIMEOUT = 120.0


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Rules:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []
        self.next_id = 1
        self.stats = {k: {} for k in ("requests", "injected", "delayed", "forwarded")}

    def arm(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(spec) - {"action", "times", "code", "status", "message",
                               "delay", "when", "drop"}
        if unknown:
            raise ValueError("unknown keys: %s" % ", ".join(sorted(unknown)))
        action = spec.get("action")
        if not isinstance(action, str) or not action:
            raise ValueError("'action' (an EC2 Action or '*') is required")
        times = spec.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or (times < 1 and times != -1):
            raise ValueError("'times' must be a positive integer or -1")
        code = spec.get("code")
        if code is not None and (not isinstance(code, str) or not code):
            raise ValueError("'code' must be a non-empty string")
        status = spec.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError("'status' must be an integer 400..599")
        if status is not None and code is None:
            raise ValueError("'status' needs a 'code'")
        delay = spec.get("delay", 0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 600:
            raise ValueError("'delay' must be seconds in 0..600")
        when = spec.get("when", "before")
        if when not in ("before", "after"):
            raise ValueError("'when' must be 'before' or 'after'")
        drop = spec.get("drop", False)
        if not isinstance(drop, bool):
            raise ValueError("'drop' must be true or false")
        if code is None and not drop and not delay:
            raise ValueError("a rule needs 'code', 'delay' or 'drop'")
        if code is not None and drop:
            raise ValueError("'code' and 'drop' exclude each other")
        if when == "after" and code is None and not drop:
            raise ValueError("'when': 'after' needs 'code' or 'drop'")
        message = spec.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError("'message' must be a string")
        rule = {"action": action, "times": times, "remaining": times, "code": code,
                "status": (status or DEFAULT_STATUS.get(code, 400)) if code else None,
                "message": message if message is not None else
                DEFAULT_MESSAGE.get(code, "Injected by capwin throttle_proxy.") if code else None,
                "delay": float(delay), "when": when, "drop": drop}
        with self.lock:
            rule["id"] = self.next_id
            self.next_id += 1
            self.rules.append(rule)
        return dict(rule)

    def disarm(self, action=None):
        with self.lock:
            before = len(self.rules)
            self.rules = [r for r in self.rules if action is not None and r["action"] != action]
            return before - len(self.rules)

    def clear(self):
        with self.lock:
            self.rules = []
            for v in self.stats.values():
                v.clear()

    def take(self, action):
        """Counts the request and consumes one use of the matching rule, if any."""
        with self.lock:
            self._count("requests", action)
            rule = next((r for r in self.rules if r["action"] == action), None) or \
                next((r for r in self.rules if r["action"] == "*"), None)
            if rule is None:
                return None
            if rule["remaining"] != -1:
                rule["remaining"] -= 1
                if rule["remaining"] == 0:
                    self.rules.remove(rule)
            if rule["delay"]:
                self._count("delayed", action)
            if rule["code"] or rule["drop"]:
                self._count("injected", action)
            return dict(rule)

    def count(self, key, action):
        with self.lock:
            self._count(key, action)

    def _count(self, key, action):
        self.stats[key][action] = self.stats[key].get(action, 0) + 1

    def snapshot(self):
        with self.lock:
            out = {k: dict(v) for k, v in self.stats.items()}
            out["rules"] = [dict(r) for r in self.rules]
            return out


def error_body(code, message, request_id):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            "<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error>"
            "</Errors><RequestID>%s</RequestID></Response>"
            % (escape(code), escape(message), request_id)).encode()


def action_of(method, path, headers, body):
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if body and (ctype == "application/x-www-form-urlencoded" or (method == "POST" and not ctype)):
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            form = {}
        if form.get("Action"):
            return form["Action"][0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    if query.get("Action"):
        return query["Action"][0]
    return "-"


def read_chunked(rfile):
    """Reads a chunked body; returns (raw bytes as received, decoded bytes)."""
    raw, data = bytearray(), bytearray()
    while True:
        line = rfile.readline(65537)
        raw += line
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers up to the empty line
                t = rfile.readline(65537)
                raw += t
                if t in (b"\r\n", b"\n", b""):
                    return bytes(raw), bytes(data)
        chunk = rfile.read(size)
        raw += chunk
        data += chunk
        raw += rfile.readline(65537)  # CRLF after the chunk


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "capwin-throttle-proxy"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("throttle_proxy: %s\n" % (fmt % args))

    # --- plumbing -------------------------------------------------------
    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return read_chunked(self.rfile)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        return body, body

    def _send(self, status, headers, body, reason=None):
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status, obj):
        self._send(status, [("Content-Type", "application/json")],
                   (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- dispatch -------------------------------------------------------
    def _handle(self):
        raw, body = self._read_body()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_capwin/"):
            return self._control(path, body)
        action = action_of(self.command, self.path, self.headers, body)
        rule = self.server.rules.take(action)
        if rule and rule["delay"]:
            time.sleep(rule["delay"])
        if rule and rule["when"] == "before" and rule["drop"]:
            return self._drop()
        if rule and rule["when"] == "before" and rule["code"]:
            return self._inject(rule)
        upstream = self._forward(raw)
        if upstream is None:
            return
        self.server.rules.count("forwarded", action)
        if rule and rule["drop"]:
            return self._drop()
        if rule and rule["code"]:
            return self._inject(rule)
        status, reason, headers, data = upstream
        self._send(status, headers, data, reason)

    def _inject(self, rule):
        rid = str(uuid.uuid4())
        self._send(rule["status"], [("Content-Type", "text/xml;charset=UTF-8"),
                                    ("x-amzn-RequestId", rid)],
                   error_body(rule["code"], rule["message"], rid))

    def _forward(self, raw):
        u = self.server.upstream
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() == "expect":  # already answered by us (100-continue)
                    continue
                conn.putheader(k, v)
            conn.endheaders()
            if raw:
                conn.send(raw)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, resp.reason, headers, data
        except (OSError, http.client.HTTPException) as e:
            rid = str(uuid.uuid4())
            self._send(502, [("Content-Type", "text/xml;charset=UTF-8")],
                       error_body("capwin.ProxyUpstreamError",
                                  "throttle_proxy could not reach %s: %s"
                                  % (self.server.upstream_url, e), rid))
            return None
        finally:
            conn.close()

    def _control(self, path, body):
        rules = self.server.rules
        try:
            spec = json.loads(body) if body.strip() else {}
        except ValueError as e:
            return self._json(400, {"error": "bad JSON: %s" % e})
        cmd = path[len("/_capwin/"):].rstrip("/")
        try:
            if cmd == "arm" and self.command == "POST":
                return self._json(200, {"armed": rules.arm(spec)})
            if cmd == "disarm" and self.command == "POST":
                if not isinstance(spec, dict):
                    raise ValueError("body must be a JSON object")
                return self._json(200, {"removed": rules.disarm(spec.get("action"))})
            if cmd == "clear" and self.command == "POST":
                rules.clear()
                return self._json(200, {"cleared": True})
            if cmd == "stats" and self.command == "GET":
                return self._json(200, rules.snapshot())
            if cmd == "health" and self.command == "GET":
                return self._json(200, {"ok": True, "upstream": self.server.upstream_url})
        except ValueError as e:
            return self._json(400, {"error": str(e)})
        return self._json(404, {"error": "no such control call: %s %s" % (self.command, path)})

    def _safe(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _safe


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT, loopback only")
    ap.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT (moto)")
    ap.add_argument("--state", help="JSON file for pid/url/upstream")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    a = ap.parse_args()

    host, _, port = a.listen.rpartition(":")
    host = host.strip("[]")
    up = urllib.parse.urlsplit(a.upstream)
    if not is_loopback(host):
        ap.error("--listen must be a loopback address, not %r" % host)
    if up.scheme != "http" or not up.hostname or not up.port or not is_loopback(up.hostname):
        ap.error("--upstream must be http://<loopback>:PORT, not %r" % a.upstream)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    Server.address_family = family
    srv = Server((host, int(port)), Handler)
    srv.rules = Rules()
    srv.upstream = up
    srv.upstream_url = "http://%s:%d" % (up.hostname if ":" not in up.hostname
                                         else "[%s]" % up.hostname, up.port)
    srv.verbose = a.verbose
    bound = srv.server_address[1]
    url = "http://%s:%d" % (host if family == socket.AF_INET else "[%s]" % host, bound)

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if a.state:
        tmp = a.state + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "url": url, "upstream": srv.upstream_url}, f)
            f.write("\n")
        os.replace(tmp, a.state)
    print(url, flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
        if a.state:
            try:
                with open(a.state) as f:
                    mine = json.load(f).get("pid") == os.getpid()
            except (OSError, ValueError):
                mine = False
            if mine:
                os.remove(a.state)


if __name__ == "__main__":
    main()
