#!/usr/bin/env python3
"""A fake Azure Resource Manager (ARM) endpoint over HTTPS, for capwin's tests.

    fake_arm.py --listen 127.0.0.1:0 --state-dir DIR [--seed FILE] [--polls N] [--ready-file F]

Standard library only, plus the `openssl` CLI, which makes a test CA (CA:TRUE) and a
leaf signed by it (CA:FALSE, SAN DNS:localhost, IP:127.0.0.1, IP:::1) in DIR on the
first start and reuses them afterwards. Once listening it prints one JSON line,

    {"url": "https://127.0.0.1:PORT", "ca": "DIR/ca.pem"}

and writes the same object (plus "pid") to --ready-file if given. SIGTERM or SIGINT:
clean shutdown, exit 0. Only loopback addresses are accepted for --listen.

What it models, and what it does not, is in README.md beside this file.
"""
import argparse
import base64
import copy
import datetime
import fcntl
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

# --------------------------------------------------------------------------------------
# TLS material (openssl CLI)
# --------------------------------------------------------------------------------------

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = capwin fake ARM
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

TLS_FILES = ("ca.pem", "ca.key", "tls.pem", "tls.key")


def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (args[0], (r.stderr or r.stdout).strip()))
    return r.stdout


def _tls_usable(d):
    if not all(os.path.isfile(os.path.join(d, f)) for f in TLS_FILES):
        return False
    try:
        out = _openssl(["verify", "-x509_strict", "-CAfile", "ca.pem", "tls.pem"], d)
        if "tls.pem: OK" not in out:
            return False
        for f in ("ca.pem", "tls.pem"):  # valid for at least another week
            _openssl(["x509", "-checkend", str(7 * 86400), "-noout", "-in", f], d)
        ext = _openssl(["x509", "-noout", "-in", "tls.pem", "-ext",
                        "subjectAltName,basicConstraints"], d)
        return "IP Address:127.0.0.1" in ext and "DNS:localhost" in ext and "CA:FALSE" in ext
    except RuntimeError:
        return False


def ensure_tls(state_dir):
    """Returns (ca.pem, tls.pem, tls.key) in state_dir, generating them if missing,
    broken or about to expire. Serialised with a lock file across processes."""
    os.makedirs(state_dir, exist_ok=True)
    d = os.path.abspath(state_dir)
    with open(os.path.join(d, "tls.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _tls_usable(d):
            old = os.umask(0o077)
            try:
                with open(os.path.join(d, "openssl.cnf"), "w") as f:
                    f.write(OPENSSL_CNF)
                tmp = {name: name + ".new" for name in TLS_FILES}
                _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-out", tmp["ca.key"]], d)
                _openssl(["req", "-x509", "-new", "-key", tmp["ca.key"], "-sha256", "-days", "3650",
                          "-subj", "/CN=capwin fake ARM test CA", "-config", "openssl.cnf",
                          "-extensions", "v3_ca", "-out", tmp["ca.pem"]], d)
                _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-out", tmp["tls.key"]], d)
                _openssl(["req", "-new", "-key", tmp["tls.key"], "-subj", "/CN=localhost",
                          "-config", "openssl.cnf", "-out", "tls.csr"], d)
                serial = "0x%x" % (secrets.randbits(120) | (1 << 119))
                _openssl(["x509", "-req", "-in", "tls.csr", "-CA", tmp["ca.pem"], "-CAkey", tmp["ca.key"],
                          "-set_serial", serial, "-days", "825", "-sha256", "-extfile", "openssl.cnf",
                          "-extensions", "v3_leaf", "-out", tmp["tls.pem"]], d)
                os.unlink(os.path.join(d, "tls.csr"))
                for name in TLS_FILES:
                    os.replace(os.path.join(d, tmp[name]), os.path.join(d, name))
                os.chmod(os.path.join(d, "ca.pem"), 0o644)
                os.chmod(os.path.join(d, "tls.pem"), 0o644)
            finally:
                os.umask(old)
            if not _tls_usable(d):
                raise RuntimeError("generated TLS material in %s does not verify" % d)
    return os.path.join(d, "ca.pem"), os.path.join(d, "tls.pem"), os.path.join(d, "tls.key")


# --------------------------------------------------------------------------------------
# Constants and small helpers
# --------------------------------------------------------------------------------------

VM = "Microsoft.Compute/virtualMachines"
DISK = "Microsoft.Compute/disks"
IMAGE = "Microsoft.Compute/images"
GALLERY_VERSION = "Microsoft.Compute/galleries/images/versions"
NIC = "Microsoft.Network/networkInterfaces"
VNET = "Microsoft.Network/virtualNetworks"
SUBNET = "Microsoft.Network/virtualNetworks/subnets"
RG_TYPE = "Microsoft.Resources/resourceGroups"

NAMESPACES = {"microsoft.compute": "Microsoft.Compute", "microsoft.network": "Microsoft.Network",
              "microsoft.resources": "Microsoft.Resources"}
KNOWN_TYPES = {t.lower(): t for t in (VM, DISK, IMAGE, GALLERY_VERSION, NIC, VNET, SUBNET,
                                      "Microsoft.Compute/galleries", "Microsoft.Compute/galleries/images")}

DEFAULT_VM_SIZES = [
    "Standard_B2ms", "Standard_B4ms", "Standard_D2_v3", "Standard_D4_v3", "Standard_D2s_v3",
    "Standard_D4s_v3", "Standard_D8s_v3", "Standard_D2s_v5", "Standard_D4s_v5", "Standard_D8s_v5",
    "Standard_D16s_v5", "Standard_D2ds_v5", "Standard_D4ds_v5", "Standard_D2as_v5", "Standard_D4as_v5",
    "Standard_E4s_v5", "Standard_F4s_v2", "Standard_F8s_v2",
]

DEFAULT_CONFIG = {
    "pollsBeforeDone": 2,          # polls answering InProgress before an operation completes
    "requiredToken": None,         # None: any bearer token; else only this one (and the token endpoint issues it)
    "vmSizes": DEFAULT_VM_SIZES,
    "imageNotFound": "sync",       # "sync": PUT answers 404; "async": PUT 201, operation ends Failed
    "apiVersions": {},             # resource type -> accepted api-versions (strict pin); absent: format check only
    "advanceOnResourceGet": True,  # a GET of the resource counts as a poll of its pending operation
    "retryAfter": 0,               # Retry-After (s) on 201/202 LRO answers and on 202 Location polls
    "listPageSize": 100,
    "clients": {},                 # token endpoint: client_id -> secret; empty: any client and secret
    "tenant": None,                # token endpoint: the only tenant accepted; None: any
    "uppercaseNrpRefs": True,      # NIC.virtualMachine.id, subnet ipConfigurations ids: RG upper-cased (as NRP)
    "bootDiagnosticsRequired": True,  # retrieveBootDiagnosticsData needs bootDiagnostics.enabled
}

RESERVED_USERNAMES = {
    "administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1", "1", "123",
    "a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david", "guest", "john", "owner",
    "root", "server", "sql", "support", "support_388945a0", "sys", "test2", "test3", "user4", "user5",
}
RESERVED_PASSWORDS = {
    "abc@123", "iloveyou!", "p@$$w0rd", "p@ssw0rd", "p@ssword123", "pa$$word", "pass@word1",
    "password!", "password1", "password22",
}
COMPUTER_NAME_BAD = set("`~!@#$%^&*()=+_[]{}\\|;:.'\",<>/?")
WIN_USER_BAD = set("\\/\"[]:|<>+=;,?*@")
TAG_NAME_BAD = set("<>%&\\?/")
STORAGE_TYPES = {t.lower(): t for t in ("Standard_LRS", "Premium_LRS", "StandardSSD_LRS", "Premium_ZRS",
                                         "StandardSSD_ZRS", "UltraSSD_LRS", "PremiumV2_LRS")}
KNOWN_FAILURE_MESSAGES = {
    "AllocationFailed": "Allocation failed. Please try reducing the VM size or number of VMs, retry later, "
                        "or try deploying to a different Availability Set or different Azure location.",
    "ZonalAllocationFailed": "Allocation failed. We do not have sufficient capacity for the requested VM "
                             "size in this zone. Read more about improving likelihood of allocation success "
                             "at http://aka.ms/allocation-guidance",
    "OSProvisioningTimedOut": "OS Provisioning for VM '{vm}' did not finish in the allotted time. The VM may "
                              "still finish provisioning successfully. Please check provisioning state later.",
    "OSProvisioningClientError": "OS provisioning for VM '{vm}' failed.",
    "InternalExecutionError": "An internal execution error occurred. Please retry later.",
    "SkuNotAvailable": "The requested VM size is currently not available in this location.",
}
STATUS_CODES = {429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
                503: "ServiceUnavailable", 504: "GatewayTimeout", 409: "Conflict", 400: "BadRequest",
                404: "NotFound", 403: "AuthorizationFailed", 401: "AuthenticationFailed"}
API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview|-beta|-alpha|-privatepreview)?$", re.I)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(t=None):
    t = t or utcnow()
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%06d" % t.microsecond + "+00:00"


def det_uuid(*parts):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "capwin-fake-arm:" + "|".join(str(p) for p in parts)))


def norm_location(loc):
    return re.sub(r"\s+", "", str(loc)).lower()


def version_key(v):
    out = []
    for p in str(v).split("."):
        out.append((0, int(p), "") if p.isdigit() else (1, 0, p.lower()))
    return out


class ArmError(Exception):
    def __init__(self, status, code, message, target=None, headers=None, details=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.target, self.headers, self.details = target, headers or {}, details

    def envelope(self):
        err = {"code": self.code, "message": self.message}
        if self.target:
            err["target"] = self.target
        if self.details:
            err["details"] = self.details
        return {"error": err}


class ControlError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def invalid_param(message, target=None):
    return ArmError(400, "InvalidParameter", message, target)


def missing_param(name):
    return ArmError(400, "InvalidParameter", "Required parameter '%s' is missing (null)." % name, name)


def gp(d, *path):
    """Nested get, case-sensitive keys (ARM's JSON is camelCase)."""
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def deep_merge(base, new):
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


SECRET_KEYS = {"adminpassword", "customdata", "client_secret", "client_assertion", "password", "secret",
               "protectedsettings", "userdata", "access_token", "refresh_token", "sig"}


def redact(obj):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if str(k).lower() in SECRET_KEYS:
                out[k] = "<redacted%s>" % (": %d chars" % len(v) if isinstance(v, str) else "")
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# Resource IDs
# --------------------------------------------------------------------------------------

def rg_id(sub, rg):
    return "/subscriptions/%s/resourceGroups/%s" % (sub, rg)


def res_id(sub, rg, rtype, *names):
    ns, types = rtype.split("/", 1)
    parts = types.split("/")
    segs = []
    for t, n in zip(parts, names):
        segs += [t, n]
    return "%s/providers/%s/%s" % (rg_id(sub, rg), ns, "/".join(segs))


def parse_res_id(rid):
    """'/subscriptions/S/resourceGroups/R/providers/NS/t1/n1[/t2/n2...]' ->
    (sub, rg, 'NS/t1/t2', [n1, n2]) with the type canonicalised if known; None if malformed."""
    if not isinstance(rid, str):
        return None
    segs = [urllib.parse.unquote(s) for s in rid.strip("/").split("/")]
    if (len(segs) < 7 or segs[0].lower() != "subscriptions" or segs[2].lower() != "resourcegroups"
            or segs[4].lower() != "providers" or (len(segs) - 6) % 2 != 0):
        return None
    ns = segs[5]
    rest = segs[6:]
    rtype = ns + "/" + "/".join(rest[0::2])
    rtype = KNOWN_TYPES.get(rtype.lower(), rtype)
    return segs[1], segs[3], rtype, rest[1::2]


def upper_rg(rid):
    return re.sub(r"(?i)(/resourceGroups/)([^/]+)", lambda m: m.group(1) + m.group(2).upper(), rid, count=1)


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------

class Operation:
    def __init__(self, state, ns, sub, location, kind, target, polls, api_version, on_done,
                 failure=None, immediate=False):
        self.id = str(uuid.uuid4())
        self.ns, self.sub, self.location, self.kind, self.target = ns, sub, location, kind, target
        self.remaining = 0 if immediate else polls
        self.api_version = api_version
        self.on_done = on_done
        self.failure = failure  # None or {"code", "message", "status"}
        self.status = "InProgress"
        self.error = None
        self.error_status = None
        self.start = iso()
        self.end = None
        self.polls = 0
        state.ops[self.id] = self
        if immediate:
            self.complete()

    def poll(self):
        self.polls += 1
        if self.status == "InProgress":
            if self.remaining > 0:
                self.remaining -= 1
            else:
                self.complete()
        return self.status

    def complete(self, status=None, error=None):
        if self.status != "InProgress":
            return
        if status is None:
            if self.failure:
                status = "Failed"
                error = {"code": self.failure["code"], "message": self.failure["message"]}
                self.error_status = self.failure.get("status", 409)
            else:
                status = "Succeeded"
        self.status, self.error, self.end = status, error, iso()
        if self.on_done:
            self.on_done(self)

    def status_doc(self):
        doc = {"startTime": self.start, "status": self.status, "name": self.id}
        if self.end:
            doc["endTime"] = self.end
        if self.error:
            doc["error"] = self.error
        return doc

    def paths(self):
        base = "/subscriptions/%s/providers/%s/locations/%s" % (self.sub, self.ns, self.location)
        if self.ns == "Microsoft.Network":
            return ("%s/operations/%s?api-version=%s" % (base, self.id, self.api_version),
                    "%s/operationResults/%s?api-version=%s" % (base, self.id, self.api_version))
        return ("%s/operations/%s?api-version=%s" % (base, self.id, self.api_version),
                "%s/operations/%s?monitor=true&api-version=%s" % (base, self.id, self.api_version))

    def summary(self):
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status,
                "remainingPolls": self.remaining, "polls": self.polls, "error": self.error}


class State:
    def __init__(self, base_config, seed_doc):
        self.lock = threading.RLock()
        self.base_config = base_config
        self.seed_doc = seed_doc
        self.secret = secrets.token_bytes(32)
        self.url = None
        self.reset()

    # ---- lifecycle ----

    def reset(self):
        with self.lock:
            self.config = copy.deepcopy(self.base_config)
            self.subs = {}            # sub lower -> sub as seeded
            self.rgs = {}             # (sub lower, rg lower) -> {"name", "location", "tags", "sub"}
            self.res = {}             # id lower -> record
            self.images = []          # seeded image records
            self.ops = {}
            self.faults = []
            self.fault_seq = 0
            self.log = []
            self.log_seq = 0
            self.counts = {}
            self.injected = {}
            self.serial = {}          # (rg lower | "*", vm name lower) -> text
            self.seq = 0
            self.ratelimit = {}
            if self.seed_doc:
                self.seed(self.seed_doc)

    def next_seq(self):
        self.seq += 1
        return self.seq

    # ---- seeding ----

    def seed(self, doc):
        if not isinstance(doc, dict):
            raise ControlError(400, "seed: a JSON object expected")
        counts = {"subscriptions": 0, "resourceGroups": 0, "virtualNetworks": 0, "subnets": 0, "images": 0}
        default_sub = doc.get("subscription")
        for s in doc.get("subscriptions", []) + ([default_sub] if default_sub else []):
            self.subs[str(s).lower()] = str(s)
            counts["subscriptions"] += 1
        for g in doc.get("resourceGroups", []):
            sub = g.get("subscription") or default_sub
            if not sub or not g.get("name") or not g.get("location"):
                raise ControlError(400, "seed: resourceGroups[] needs subscription, name, location: %r" % g)
            self.subs.setdefault(sub.lower(), sub)
            self.rgs[(sub.lower(), g["name"].lower())] = {"sub": sub, "name": g["name"],
                                                          "location": norm_location(g["location"]),
                                                          "tags": g.get("tags")}
            counts["resourceGroups"] += 1
        for v in doc.get("virtualNetworks", []):
            sub = v.get("subscription") or default_sub
            rg = v.get("resourceGroup")
            if not sub or not rg or not v.get("name"):
                raise ControlError(400, "seed: virtualNetworks[] needs subscription, resourceGroup, name")
            rgrec = self.rgs.get((sub.lower(), rg.lower()))
            if not rgrec:
                raise ControlError(400, "seed: resource group %s/%s is not seeded" % (sub, rg))
            prefixes = v.get("addressPrefixes") or ["10.0.0.0/8"]
            for p in prefixes:
                ipaddress.ip_network(p, strict=False)
            loc = norm_location(v.get("location") or rgrec["location"])
            vid = res_id(sub, rgrec["name"], VNET, v["name"])
            self.res[vid.lower()] = {"id": vid, "type": VNET, "name": v["name"], "sub": sub, "rg": rgrec["name"],
                                     "location": loc, "tags": v.get("tags"), "seq": self.next_seq(),
                                     "props": {"addressSpace": {"addressPrefixes": prefixes}},
                                     "guid": det_uuid(vid.lower())}
            counts["virtualNetworks"] += 1
            for s in v.get("subnets", []):
                net = ipaddress.ip_network(s["addressPrefix"], strict=True)
                if not any(net.subnet_of(ipaddress.ip_network(p, strict=False)) for p in prefixes
                           if ipaddress.ip_network(p, strict=False).version == net.version):
                    raise ControlError(400, "seed: subnet %s %s is outside the vnet's address space"
                                       % (s["name"], s["addressPrefix"]))
                sid = res_id(sub, rgrec["name"], SUBNET, v["name"], s["name"])
                self.res[sid.lower()] = {"id": sid, "type": SUBNET, "name": s["name"], "sub": sub,
                                         "rg": rgrec["name"], "location": loc, "vnet": vid.lower(),
                                         "seq": self.next_seq(), "props": {"addressPrefix": s["addressPrefix"]}}
                counts["subnets"] += 1
        for im in doc.get("images", []):
            self.images.append(self._image_record(im, default_sub))
            counts["images"] += 1
        if "vmSizes" in doc:
            self.config["vmSizes"] = list(doc["vmSizes"])
        return counts

    def _image_record(self, im, default_sub):
        if not isinstance(im, dict):
            raise ControlError(400, "seed: images[] entries are objects")
        rec = {"osDiskSizeGB": int(im.get("osDiskSizeGB", 127)),
               "hyperVGeneration": im.get("hyperVGeneration", "V2"),
               "osType": im.get("osType", "Windows"),
               "locations": [norm_location(x) for x in im.get("locations", [])],
               "seed": copy.deepcopy(im)}
        if im.get("publisher"):
            for k in ("offer", "sku", "version"):
                if not im.get(k):
                    raise ControlError(400, "seed: marketplace image needs publisher, offer, sku, version")
            rec.update(kind="marketplace", publisher=im["publisher"], offer=im["offer"], sku=im["sku"],
                       version=im["version"])
        elif im.get("communityGalleryImageId") or im.get("sharedGalleryImageId"):
            field = "communityGalleryImageId" if im.get("communityGalleryImageId") else "sharedGalleryImageId"
            m = re.match(r"(?i)^/(CommunityGalleries|SharedGalleries)/([^/]+)/Images/([^/]+)/Versions/([^/]+)$",
                         im[field])
            if not m:
                raise ControlError(400, "seed: %s must be /%s/{gallery}/Images/{image}/Versions/{version}"
                                   % (field, "CommunityGalleries" if field.startswith("c") else "SharedGalleries"))
            rec.update(kind="community" if field.startswith("c") else "shared", field=field, value=im[field],
                       gallery=m.group(2), image=m.group(3), version=m.group(4))
        elif im.get("id"):
            p = parse_res_id(im["id"])
            if not p or p[2] not in (GALLERY_VERSION, IMAGE):
                raise ControlError(400, "seed: image id must be a gallery image version or a managed image id")
            rec.update(kind="id", value=p and im["id"], rtype=p[2], sub=p[0], rg=p[1], names=p[3])
            if p[2] == GALLERY_VERSION:
                rec["version"] = p[3][2]
        else:
            raise ControlError(400, "seed: an image needs publisher/offer/sku/version, id, "
                               "communityGalleryImageId or sharedGalleryImageId")
        return rec

    # ---- lookups ----

    def need_sub(self, sub):
        if sub.lower() not in self.subs:
            raise ArmError(404, "SubscriptionNotFound", "The subscription '%s' could not be found." % sub)

    def need_rg(self, sub, rg):
        self.need_sub(sub)
        rec = self.rgs.get((sub.lower(), rg.lower()))
        if not rec:
            raise ArmError(404, "ResourceGroupNotFound", "Resource group '%s' could not be found." % rg)
        return rec

    def not_found(self, rtype, name, rg):
        return ArmError(404, "ResourceNotFound",
                        "The Resource '%s/%s' under resource group '%s' was not found. For more details "
                        "please go to https://aka.ms/ARMResourceNotFoundFix" % (rtype, name, rg))

    def get(self, rid):
        return self.res.get(rid.lower()) if isinstance(rid, str) else None

    def cfg(self, k):
        return self.config[k]

    def new_op(self, ns, sub, location, kind, target, api_version, on_done, failure=None, immediate=False):
        return Operation(self, ns, sub, location, kind, target, int(self.cfg("pollsBeforeDone")),
                         api_version, on_done, failure, immediate)


# --------------------------------------------------------------------------------------
# Request context and responses
# --------------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, body=None, headers=None, ctype=None):
        self.status, self.body, self.headers = status, body, dict(headers or {})
        self.ctype = ctype

    def payload(self):
        if self.body is None:
            return b"", None
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body), self.ctype or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.ctype or "text/plain; charset=utf-8"
        return json.dumps(self.body, indent=None).encode(), self.ctype or "application/json; charset=utf-8"


class Ctx:
    def __init__(self, method, raw_path, headers, body):
        self.method = method
        u = urllib.parse.urlsplit(raw_path)
        self.path = u.path
        self.query_string = u.query
        self.query = {}
        for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
            self.query.setdefault(k, v)
        self.qi = {k.lower(): v for k, v in self.query.items()}
        self.headers = headers
        self.body = body
        self.api_version = self.qi.get("api-version")
        self.rtype = None           # type key for counts/log
        self.op_failure = None      # set by an operationFailure fault
        self.log_body = None

    def header(self, name):
        return self.headers.get(name)

    def json_body(self):
        if not self.body:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                           "deserialized: 'The request body is empty.'")
        try:
            doc = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                           "deserialized: '%s'." % e)
        if not isinstance(doc, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                           "deserialized: 'a JSON object is expected'.")
        return doc


# --------------------------------------------------------------------------------------
# The ARM service
# --------------------------------------------------------------------------------------

class Arm:
    def __init__(self, state):
        self.s = state

    @property
    def base(self):
        return self.s.url

    # ---------- routing ----------

    def route(self, ctx):
        segs = [urllib.parse.unquote(x) for x in ctx.path.strip("/").split("/") if x != ""]
        low = [x.lower() for x in segs]
        if len(segs) < 2 or low[0] != "subscriptions":
            ctx.rtype = "?"
            raise ArmError(404, "InvalidRequestUri", "The request URI '%s' is not valid." % ctx.path)
        sub = self.s.subs.get(segs[1].lower(), segs[1])
        rest, lrest = segs[2:], low[2:]
        if not rest:
            ctx.rtype = "Microsoft.Resources/subscriptions"
            self.s.need_sub(sub)
            if ctx.method != "GET":
                raise self.unsupported(ctx)
            s = self.s.subs[sub.lower()]
            return Resp(200, {"id": "/subscriptions/" + s, "subscriptionId": s, "displayName": "capwin fake",
                              "state": "Enabled"})
        if lrest[0] == "resourcegroups":
            if len(rest) == 1:
                ctx.rtype = RG_TYPE
                self.s.need_sub(sub)
                return self.list_resp(ctx, [self.render_rg(g) for (sl, _), g in sorted(self.s.rgs.items())
                                            if sl == sub.lower()])
            rg = rest[1]
            tail, ltail = rest[2:], lrest[2:]
            if not tail:
                ctx.rtype = RG_TYPE
                return self.rg_call(ctx, sub, rg)
            if ltail[0] != "providers" or len(tail) < 3:
                ctx.rtype = "?"
                raise ArmError(404, "InvalidRequestUri", "The request URI '%s' is not valid." % ctx.path)
            return self.rg_scoped(ctx, sub, rg, tail[1], tail[2:])
        if lrest[0] == "providers" and len(rest) >= 3:
            return self.sub_scoped(ctx, sub, rest[1], rest[2:])
        ctx.rtype = "?"
        raise ArmError(404, "InvalidRequestUri", "The request URI '%s' is not valid." % ctx.path)

    def unsupported(self, ctx):
        return ArmError(501, "CapwinFakeNotImplemented",
                        "The fake ARM server does not implement %s on %s." % (ctx.method, ctx.rtype or ctx.path))

    def ns_canon(self, ns):
        c = NAMESPACES.get(ns.lower())
        if not c:
            raise ArmError(404, "InvalidResourceNamespace", "The resource namespace '%s' is invalid." % ns)
        return c

    def rg_scoped(self, ctx, sub, rg, ns, parts):
        nsc = self.ns_canon(ns)
        types = parts[0::2]
        names = parts[1::2]
        action = None
        tkey = (nsc + "/" + "/".join(types)).lower()
        if len(parts) % 2 == 1 and len(parts) > 1:
            # either a collection (list) or an action on the parent resource
            parent = (nsc + "/" + "/".join(types[:-1])).lower()
            if tkey not in KNOWN_TYPES and parent in KNOWN_TYPES:
                action = types[-1]
                tkey = parent
                types = types[:-1]
        rtype = KNOWN_TYPES.get(tkey)
        ctx.rtype = (rtype or nsc + "/" + "/".join(types)) + ("/" + action if action else "")
        if not rtype:
            raise ArmError(404, "InvalidResourceType",
                           "The resource type '%s' could not be found in the namespace '%s' for api version "
                           "'%s'." % ("/".join(types), nsc, ctx.api_version))
        self.check_api_version(ctx, rtype)
        self.s.need_rg(sub, rg)
        collection = len(names) < len(types)
        if rtype == VM:
            if action:
                return self.vm_action(ctx, sub, rg, names[0], action)
            if collection:
                return self.list_of(ctx, VM, sub, rg)
            return self.vm_call(ctx, sub, rg, names[0])
        if rtype == NIC:
            if action or collection:
                if collection and not action and ctx.method == "GET":
                    return self.list_of(ctx, NIC, sub, rg)
                raise self.unsupported(ctx)
            return self.nic_call(ctx, sub, rg, names[0])
        if rtype == DISK:
            if action:
                raise self.unsupported(ctx)
            if collection:
                return self.list_of(ctx, DISK, sub, rg)
            return self.disk_call(ctx, sub, rg, names[0])
        if rtype == VNET:
            if action:
                raise self.unsupported(ctx)
            if collection:
                return self.list_of(ctx, VNET, sub, rg)
            if ctx.method != "GET":
                raise self.unsupported(ctx)
            rec = self.s.get(res_id(sub, rg, VNET, names[0]))
            if not rec:
                raise self.s.not_found(VNET, names[0], rg)
            return Resp(200, self.render(rec))
        if rtype == SUBNET:
            vnet = self.s.get(res_id(sub, rg, VNET, names[0]))
            if not vnet:
                raise self.s.not_found(VNET, names[0], rg)
            if action:
                raise self.unsupported(ctx)
            if collection:
                if ctx.method != "GET":
                    raise self.unsupported(ctx)
                items = [self.render(r) for r in self.sorted_res(SUBNET) if r["vnet"] == vnet["id"].lower()]
                return self.list_resp(ctx, items)
            if ctx.method != "GET":
                raise self.unsupported(ctx)
            sid = res_id(sub, rg, SUBNET, names[0], names[1])
            rec = self.s.get(sid)
            if not rec:
                raise ArmError(404, "NotFound", "Resource %s not found." % sid)
            return Resp(200, self.render(rec))
        if rtype in (IMAGE, GALLERY_VERSION):
            if ctx.method != "GET" or action:
                raise self.unsupported(ctx)
            return self.seeded_image_get(ctx, sub, rg, rtype, names, collection)
        raise self.unsupported(ctx)

    def sub_scoped(self, ctx, sub, ns, parts):
        nsc = self.ns_canon(ns)
        low = [p.lower() for p in parts]
        if low and low[0] == "locations" and len(parts) >= 4:
            loc = norm_location(parts[1])
            what = low[2]
            if what in ("operations", "operationresults") and len(parts) == 4:
                ctx.rtype = "%s/locations/%s" % (nsc, "operations" if what == "operations" else "operationResults")
                self.check_api_version(ctx, ctx.rtype)
                self.s.need_sub(sub)
                return self.op_poll(ctx, sub, nsc, loc, parts[3], location_view=(
                    what == "operationresults" or ctx.qi.get("monitor", "").lower() == "true"))
            if nsc == "Microsoft.Compute" and what == "publishers":
                ctx.rtype = "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions"
                self.check_api_version(ctx, ctx.rtype)
                self.s.need_sub(sub)
                return self.marketplace_call(ctx, sub, loc, parts[3:])
            if nsc == "Microsoft.Compute" and what == "communitygalleries":
                ctx.rtype = "Microsoft.Compute/locations/communityGalleries/images/versions"
                self.check_api_version(ctx, ctx.rtype)
                self.s.need_sub(sub)
                return self.community_call(ctx, sub, loc, parts[3:])
        if len(parts) == 1 and ctx.method == "GET":
            rtype = KNOWN_TYPES.get((nsc + "/" + parts[0]).lower())
            if rtype in (VM, NIC, DISK, VNET):
                ctx.rtype = rtype
                self.check_api_version(ctx, rtype)
                self.s.need_sub(sub)
                return self.list_of(ctx, rtype, sub, None)
        ctx.rtype = nsc + "/" + "/".join(parts[0::2])
        raise ArmError(404, "InvalidResourceType", "The resource type '%s' could not be found in the namespace "
                       "'%s' for api version '%s'." % ("/".join(parts[0::2]), nsc, ctx.api_version))

    def check_api_version(self, ctx, rtype):
        pins = self.s.cfg("apiVersions") or {}
        allowed = None
        for k, v in pins.items():
            if k.lower() == rtype.lower():
                allowed = v
        if allowed is None:
            ns = rtype.split("/")[0].lower()
            for k, v in pins.items():
                if k.lower() == ns:
                    allowed = v
        if allowed is not None and ctx.api_version not in allowed:
            raise ArmError(400, "NoRegisteredProviderFound",
                           "No registered resource provider found for location '%s' and API version '%s' for "
                           "type '%s'. The supported api-versions are '%s'. The supported locations are '%s'."
                           % ("westeurope", ctx.api_version, rtype.split("/", 1)[-1], ", ".join(allowed),
                              "westeurope"))

    # ---------- rendering ----------

    def sorted_res(self, rtype, sub=None, rg=None):
        out = [r for r in self.s.res.values() if r["type"] == rtype
               and (sub is None or r["sub"].lower() == sub.lower())
               and (rg is None or r["rg"].lower() == rg.lower())]
        return sorted(out, key=lambda r: r["seq"])

    def list_of(self, ctx, rtype, sub, rg):
        if ctx.method != "GET":
            raise self.unsupported(ctx)
        return self.list_resp(ctx, [self.render(r) for r in self.sorted_res(rtype, sub, rg)])

    def list_resp(self, ctx, items):
        size = max(1, int(self.s.cfg("listPageSize")))
        try:
            start = int(ctx.query.get("$skiptoken", "0"))
        except ValueError:
            raise invalid_param("The $skiptoken is invalid.", "$skiptoken")
        page = items[start:start + size]
        doc = {"value": page}
        if start + size < len(items):
            q = dict(ctx.query)
            q["$skiptoken"] = str(start + size)
            doc["nextLink"] = self.base + ctx.path + "?" + urllib.parse.urlencode(q)
        return Resp(200, doc)

    def render_rg(self, g):
        doc = {"id": rg_id(g["sub"], g["name"]), "name": g["name"], "type": RG_TYPE, "location": g["location"]}
        if g.get("tags"):
            doc["tags"] = g["tags"]
        doc["properties"] = {"provisioningState": "Succeeded"}
        return doc

    def render(self, rec, expand=None):
        t = rec["type"]
        if t == SUBNET:
            props = copy.deepcopy(rec["props"])
            props["provisioningState"] = "Succeeded"
            props.setdefault("privateEndpointNetworkPolicies", "Disabled")
            props.setdefault("privateLinkServiceNetworkPolicies", "Enabled")
            props.setdefault("delegations", [])
            ipc = []
            for nic in self.sorted_res(NIC):
                for c in nic["props"]["ipConfigurations"]:
                    sid = gp(c, "properties", "subnet", "id")
                    if sid and sid.lower() == rec["id"].lower():
                        cid = c["id"]
                        if self.s.cfg("uppercaseNrpRefs"):
                            cid = upper_rg(cid)
                            cid = re.sub(r"(?i)(/networkInterfaces/)(.+)$",
                                         lambda m: m.group(1) + m.group(2).upper(), cid)
                        ipc.append({"id": cid})
            if ipc:
                props["ipConfigurations"] = ipc
            return {"name": rec["name"], "id": rec["id"], "etag": 'W/"%s"' % det_uuid(rec["id"], len(ipc)),
                    "type": SUBNET, "properties": props}
        doc = {"name": rec["name"], "id": rec["id"], "type": t, "location": rec["location"]}
        if t == VNET:
            props = copy.deepcopy(rec["props"])
            props["provisioningState"] = "Succeeded"
            props["resourceGuid"] = rec["guid"]
            props["subnets"] = [self.render(r) for r in self.sorted_res(SUBNET) if r["vnet"] == rec["id"].lower()]
            doc["etag"] = 'W/"%s"' % det_uuid(rec["id"])
        elif t == NIC:
            props = self.render_nic_props(rec)
            doc["etag"] = 'W/"%s"' % det_uuid(rec["id"], rec["etag_n"])
        elif t == DISK:
            props = copy.deepcopy(rec["props"])
            doc["sku"] = {"name": rec["sku"], "tier": "Premium" if rec["sku"].startswith("Premium") else "Standard"}
            if rec.get("managedBy"):
                doc["managedBy"] = rec["managedBy"]
            props["diskState"] = "Attached" if rec.get("managedBy") else "Unattached"
            if rec.get("zones"):
                doc["zones"] = list(rec["zones"])
        elif t == VM:
            props = copy.deepcopy(rec["props"])
            props["provisioningState"] = rec["state"]
            if expand == "instanceView":
                props["instanceView"] = self.instance_view(rec)
            if rec.get("zones"):
                doc["zones"] = list(rec["zones"])
            if rec.get("identity"):
                doc["identity"] = copy.deepcopy(rec["identity"])
            doc["etag"] = '"%d"' % rec["etag_n"]
        else:
            props = copy.deepcopy(rec.get("props", {}))
        if rec.get("tags"):
            doc["tags"] = copy.deepcopy(rec["tags"])
        doc["properties"] = props
        return doc

    def render_nic_props(self, rec):
        props = copy.deepcopy(rec["props"])
        props["provisioningState"] = "Succeeded"
        props["resourceGuid"] = rec["guid"]
        vm_id = rec.get("vm")
        if vm_id and self.s.get(vm_id):
            props["virtualMachine"] = {"id": upper_rg(vm_id) if self.s.cfg("uppercaseNrpRefs") else vm_id}
            props["macAddress"] = rec["mac"]
            props["primary"] = rec.get("primary", True)
        props.setdefault("enableAcceleratedNetworking", False)
        props.setdefault("enableIPForwarding", False)
        props.setdefault("dnsSettings", {"dnsServers": [], "appliedDnsServers": []})
        props["nicType"] = "Standard"
        return props

    def instance_view(self, rec):
        st = rec["state"]
        statuses = [{"code": "ProvisioningState/%s" % st.lower(), "level": "Info" if st != "Failed" else "Error",
                     "displayStatus": "Provisioning %s" % {"Succeeded": "succeeded", "Failed": "failed",
                                                             "Creating": "creating", "Updating": "updating",
                                                             "Deleting": "deleting"}.get(st, st.lower())}]
        if rec.get("failure") and st == "Failed":
            statuses[0]["code"] = "ProvisioningState/failed/%s" % rec["failure"]["code"]
            statuses[0]["message"] = rec["failure"]["message"]
        if rec.get("power"):
            statuses.append({"code": "PowerState/%s" % rec["power"], "level": "Info",
                             "displayStatus": "VM %s" % rec["power"]})
        statuses[0]["time"] = rec.get("state_time", rec["props"].get("timeCreated"))
        view = {"computerName": gp(rec, "props", "osProfile", "computerName"),
                "osName": "Windows Server", "hyperVGeneration": rec.get("hyperV", "V2"), "statuses": statuses}
        if gp(rec, "props", "diagnosticsProfile", "bootDiagnostics", "enabled"):
            view["bootDiagnostics"] = {}
        return view

    # ---------- resource groups ----------

    def rg_call(self, ctx, sub, rg):
        self.check_api_version(ctx, RG_TYPE)
        g = self.s.need_rg(sub, rg)
        if ctx.method in ("GET", "HEAD"):
            return Resp(200 if ctx.method == "GET" else 204, self.render_rg(g) if ctx.method == "GET" else None)
        raise self.unsupported(ctx)

    # ---------- tags / names ----------

    def check_tags(self, tags):
        if tags is None:
            return None
        if not isinstance(tags, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                           "deserialized: 'tags must be an object of strings'.")
        if len(tags) > 50:
            raise ArmError(400, "InvalidTag", "The tags count %d exceeds the maximum of 50." % len(tags))
        bad = [k for k in tags if any(c in TAG_NAME_BAD or ord(c) < 32 for c in k)]
        if bad:
            raise ArmError(400, "InvalidTagNameCharacters", "The tag names '%s' have reserved characters "
                           "'<,>,%%,&,\\,?,/' or control characters." % ", ".join(bad))
        long_names = [k for k in tags if len(k) > 512]
        if long_names:
            raise ArmError(400, "InvalidTagNameLength", "The tag names '%s' exceed the maximum length of 512."
                           % ", ".join(n[:40] + "..." for n in long_names))
        for k, v in tags.items():
            if not isinstance(v, str):
                raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not "
                               "be deserialized: 'the value of tag %r is not a string'." % k)
            if len(v) > 256:
                raise ArmError(400, "InvalidTagValueLength", "The tag value '%s...' of tag '%s' exceeds the "
                               "maximum length of 256." % (v[:40], k))
        return dict(tags)

    def check_name(self, name, maxlen):
        if (not name or len(name) > maxlen or not re.match(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$", name)):
            raise ArmError(400, "InvalidResourceName", "Resource name %s is invalid. The name can be up to %d "
                           "characters long. It must begin with a word character, and it must end with a word "
                           "character or with '_'. The name may contain word characters or '.', '-', '_'."
                           % (name, maxlen))

    def check_location(self, body, existing, rtype, name, rg):
        loc = body.get("location")
        if loc is None:
            if existing:
                return existing["location"]
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        loc = norm_location(loc)
        if existing and existing["location"] != loc:
            raise ArmError(400, "InvalidResourceLocation",
                           "The resource '%s' already exists in location '%s' in resource group '%s'. A resource "
                           "with the same name cannot be created in location '%s'. Please select a new resource "
                           "name." % (name, existing["location"], rg, loc))
        return loc

    def check_preconditions(self, ctx, existing):
        inm = ctx.header("If-None-Match")
        if inm and inm.strip() == "*" and existing:
            raise ArmError(412, "PreconditionFailed", "The resource already exists (If-None-Match: *).")
        im = ctx.header("If-Match")
        if im and im.strip() != "*" and (not existing):
            raise ArmError(412, "PreconditionFailed", "The resource does not exist (If-Match).")
        if im and im.strip() == "*" and not existing:
            raise ArmError(412, "PreconditionFailed", "The resource does not exist (If-Match: *).")

    def lro_headers(self, op, location=False):
        status_path, location_path = op.paths()
        h = {"Azure-AsyncOperation": self.base + status_path}
        if location:
            h["Location"] = self.base + location_path
        h["Retry-After"] = str(int(self.s.cfg("retryAfter")))
        if op.ns == "Microsoft.Compute":
            h["Azure-AsyncNotification"] = "Enabled"
        return h

    # ---------- network interfaces ----------

    def nic_call(self, ctx, sub, rg, name):
        rid = res_id(sub, self.s.need_rg(sub, rg)["name"], NIC, name)
        rec = self.s.get(rid)
        if ctx.method == "GET":
            if not rec:
                raise self.s.not_found(NIC, name, rg)
            return Resp(200, self.render(rec))
        if ctx.method == "PUT":
            return self.nic_put(ctx, sub, rg, name, rec)
        if ctx.method == "PATCH":
            if not rec:
                raise self.s.not_found(NIC, name, rg)
            body = ctx.json_body()
            extra = set(body) - {"tags"}
            if extra:
                raise ArmError(400, "InvalidRequestFormat", "PATCH on a network interface only updates tags; "
                               "got %s." % ", ".join(sorted(extra)))
            rec["tags"] = self.check_tags(body.get("tags"))
            rec["etag_n"] += 1
            return Resp(200, self.render(rec))
        if ctx.method == "DELETE":
            if not rec:
                return Resp(204)
            vm = self.s.get(rec.get("vm"))
            if vm:
                raise ArmError(400, "NicInUse", "Network Interface %s is used by existing resource %s. In order "
                               "to delete the network interface, it must be dissociated from the resource. To "
                               "learn more, see aka.ms/deletenic." % (rec["id"], vm["id"]))
            del self.s.res[rid.lower()]
            op = self.s.new_op("Microsoft.Network", sub, rec["location"], "nic-delete", rec["id"],
                               ctx.api_version, None, immediate=True)
            return Resp(202, None, self.lro_headers(op, location=True))
        raise self.unsupported(ctx)

    def nic_put(self, ctx, sub, rg, name, existing):
        rgrec = self.s.need_rg(sub, rg)
        self.check_preconditions(ctx, existing)
        body = ctx.json_body()
        if not existing:
            self.check_name(name, 80)
        loc = self.check_location(body, existing, NIC, name, rg)
        tags = self.check_tags(body.get("tags"))
        props = body.get("properties")
        if not isinstance(props, dict):
            raise ArmError(400, "InvalidRequestFormat", "Cannot parse the request: properties is required.")
        ipcs = props.get("ipConfigurations")
        if not isinstance(ipcs, list) or not ipcs:
            raise ArmError(400, "NetworkInterfaceMustHaveAtLeastOneIpConfiguration" if ipcs == [] else
                           "InvalidRequestFormat",
                           "Network interface %s must have one or more IP configurations." % name)
        rid = existing["id"] if existing else res_id(sub, rgrec["name"], NIC, name)
        names = set()
        primaries = 0
        out_ipcs = []
        taken = self.taken_ips(exclude_nic=rid)
        own_prev = {}
        if existing:
            for c in existing["props"]["ipConfigurations"]:
                own_prev[c["name"].lower()] = c["properties"]
        for i, c in enumerate(ipcs):
            if not isinstance(c, dict) or not c.get("name"):
                raise ArmError(400, "InvalidRequestFormat", "ipConfigurations[%d].name is required." % i)
            if c["name"].lower() in names:
                raise ArmError(400, "DuplicateResourceName", "Resource %s has two child resources with the same "
                               "name (%s)." % (rid, c["name"]))
            names.add(c["name"].lower())
            cp = c.get("properties") or {}
            sid = gp(cp, "subnet", "id")
            if not sid:
                raise ArmError(400, "InvalidRequestFormat", "ipConfigurations[%d].properties.subnet.id is "
                               "required." % i)
            subnet = self.s.get(sid)
            vnet = self.s.get(subnet.get("vnet")) if subnet else None
            if not subnet or subnet["type"] != SUBNET or not vnet or vnet["location"] != loc:
                raise ArmError(400, "InvalidResourceReference",
                               "Resource %s referenced by resource %s was not found. Please make sure that the "
                               "referenced resource exists, and that both resources are in the same region."
                               % (sid, rid))
            net = ipaddress.ip_network(subnet["props"]["addressPrefix"])
            method = (cp.get("privateIPAllocationMethod") or "Dynamic")
            if method.lower() not in ("dynamic", "static"):
                raise invalid_param("privateIPAllocationMethod must be Dynamic or Static.",
                                    "privateIPAllocationMethod")
            method = "Static" if method.lower() == "static" else "Dynamic"
            prev = own_prev.get(c["name"].lower())
            if method == "Static":
                ip = cp.get("privateIPAddress")
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise ArmError(400, "InvalidRequestFormat", "privateIPAddress %r is not an IP address." % ip)
                if addr not in net:
                    raise ArmError(400, "PrivateIPAddressNotInSubnet", "IP configuration %s/ipConfigurations/%s "
                                   "is referencing IP address %s which does not belong to subnet %s."
                                   % (rid, c["name"], ip, sid))
                off = int(addr) - int(net.network_address)
                if off < 4 or off >= net.num_addresses - 1:
                    raise ArmError(400, "PrivateIPAddressIsReserved", "IP address %s is reserved." % ip)
                if str(addr) in taken.get(subnet["id"].lower(), set()):
                    raise ArmError(400, "PrivateIPAddressInUse", "IP configuration %s/ipConfigurations/%s is "
                                   "using the private IP address %s which is already allocated to resource %s."
                                   % (rid, c["name"], ip, taken[subnet["id"].lower()][str(addr)]))
                ip = str(addr)
            elif prev and gp(prev, "subnet", "id").lower() == sid.lower():
                ip = prev["privateIPAddress"]
            else:
                ip = None
                used = taken.get(subnet["id"].lower(), {})
                for off in range(4, net.num_addresses - 1):
                    cand = str(net.network_address + off)
                    if cand not in used:
                        ip = cand
                        break
                if ip is None:
                    raise ArmError(400, "SubnetIsFull", "Subnet %s with address prefix %s does not have enough "
                                   "capacity for 1 IP addresses." % (subnet["name"], net))
            taken.setdefault(subnet["id"].lower(), {})[ip] = rid
            primary = cp.get("primary")
            if primary is None:
                primary = len(ipcs) == 1
            primaries += 1 if primary else 0
            out_cp = copy.deepcopy(cp)
            out_cp.update({"privateIPAddress": ip, "privateIPAllocationMethod": method, "primary": bool(primary),
                           "privateIPAddressVersion": "IPv4", "provisioningState": "Succeeded"})
            out_ipcs.append({"name": c["name"], "id": rid + "/ipConfigurations/" + c["name"],
                             "etag": 'W/"%s"' % det_uuid(rid, c["name"]),
                             "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                             "properties": out_cp})
        if primaries != 1:
            raise ArmError(400, "NetworkInterfaceMustHaveOnePrimaryIpConfiguration" if primaries == 0 else
                           "MultiplePrimaryIpConfigurationsNotAllowed",
                           "Network interface %s must have exactly one primary IP configuration." % rid)
        new_props = {k: copy.deepcopy(v) for k, v in props.items()
                     if k not in ("ipConfigurations", "provisioningState", "resourceGuid", "virtualMachine",
                                  "macAddress")}
        new_props["ipConfigurations"] = out_ipcs
        if existing:
            existing.update(location=loc, tags=tags, props=new_props)
            existing["etag_n"] += 1
            rec, status = existing, 200
        else:
            rec = {"id": rid, "type": NIC, "name": name, "sub": sub, "rg": rgrec["name"], "location": loc,
                   "tags": tags, "props": new_props, "seq": self.s.next_seq(), "guid": det_uuid(rid.lower(), "guid"),
                   "etag_n": 1, "vm": None,
                   "mac": "00-0D-3A-%s" % "-".join(hashlib.sha256(rid.lower().encode()).hexdigest()[i:i + 2].upper()
                                                    for i in range(0, 6, 2))}
            self.s.res[rid.lower()] = rec
            status = 201
        op = self.s.new_op("Microsoft.Network", sub, loc, "nic-put", rid, ctx.api_version, None, immediate=True)
        return Resp(status, self.render(rec), self.lro_headers(op))

    def taken_ips(self, exclude_nic=None):
        taken = {}
        for nic in self.s.res.values():
            if nic["type"] != NIC or (exclude_nic and nic["id"].lower() == exclude_nic.lower()):
                continue
            for c in nic["props"]["ipConfigurations"]:
                sid = gp(c, "properties", "subnet", "id")
                if sid:
                    taken.setdefault(sid.lower(), {})[c["properties"]["privateIPAddress"]] = nic["id"]
        return taken

    # ---------- images ----------

    def image_matches_location(self, im, loc):
        return not im["locations"] or loc in im["locations"]

    def find_image(self, sub, loc, ref):
        if not isinstance(ref, dict):
            raise missing_param("imageReference")
        kinds = [k for k in ("publisher", "id", "communityGalleryImageId", "sharedGalleryImageId") if ref.get(k)]
        if len(kinds) > 1:
            raise invalid_param("Only one of publisher/offer/sku/version, id, communityGalleryImageId and "
                                "sharedGalleryImageId can be set in imageReference.", "imageReference")
        if not kinds:
            raise invalid_param("The value of parameter imageReference is invalid.", "imageReference")
        kind = kinds[0]
        cands = [im for im in self.s.images if self.image_matches_location(im, loc)]
        if kind == "publisher":
            for k in ("offer", "sku", "version"):
                if not ref.get(k):
                    raise missing_param("imageReference.%s" % k)
            hits = [im for im in cands if im["kind"] == "marketplace"
                    and im["publisher"].lower() == ref["publisher"].lower()
                    and im["offer"].lower() == ref["offer"].lower() and im["sku"].lower() == ref["sku"].lower()]
            if ref["version"].lower() != "latest":
                hits = [im for im in hits if im["version"].lower() == ref["version"].lower()]
            if not hits:
                raise ArmError(404, "PlatformImageNotFound",
                               "The platform image '%s:%s:%s:%s' is not available. Verify that all fields in the "
                               "storage profile are correct. For more details about storage profile information, "
                               "please refer to https://aka.ms/storageprofile"
                               % (ref["publisher"], ref["offer"], ref["sku"], ref["version"]), "imageReference")
            best = max(hits, key=lambda im: version_key(im["version"]))
            return best, best["version"]
        if kind in ("communityGalleryImageId", "sharedGalleryImageId"):
            val = ref[kind]
            m = re.match(r"(?i)^/(CommunityGalleries|SharedGalleries)/([^/]+)/Images/([^/]+)(?:/Versions/([^/]+))?$",
                         val)
            hits = []
            if m:
                want = "community" if kind.startswith("c") else "shared"
                hits = [im for im in cands if im["kind"] == want and im["gallery"].lower() == m.group(2).lower()
                        and im["image"].lower() == m.group(3).lower()]
                if m.group(4) and m.group(4).lower() != "latest":
                    hits = [im for im in hits if im["version"].lower() == m.group(4).lower()]
            if not hits:
                raise ArmError(404, "ImageNotFound", "The gallery image %s is not available in %s region. Please "
                               "contact image owner to replicate to this region, or change your requested region."
                               % (val, loc), "imageReference")
            best = max(hits, key=lambda im: version_key(im["version"]))
            return best, best["version"]
        # id: managed image, gallery image version, or gallery image definition (= latest version)
        val = ref["id"]
        p = parse_res_id(val)
        hits = []
        if p:
            for im in cands:
                if im["kind"] != "id":
                    continue
                if im["value"].lower() == val.lower():
                    hits = [im]
                    break
                if (p[2] == "Microsoft.Compute/galleries/images" and im["rtype"] == GALLERY_VERSION
                        and im["value"].lower().startswith(val.lower().rstrip("/") + "/versions/")):
                    hits.append(im)
        if not hits:
            raise ArmError(404, "ImageNotFound", "The Image '%s' cannot be found in '%s' region." % (val, loc),
                           "imageReference")
        best = max(hits, key=lambda im: version_key(im.get("version", "0")))
        return best, best.get("version")

    def seeded_image_get(self, ctx, sub, rg, rtype, names, collection):
        if rtype == GALLERY_VERSION and collection:
            prefix = res_id(sub, rg, "Microsoft.Compute/galleries/images", *names).lower() + "/versions/"
            items = [self.render_seeded(im) for im in self.s.images
                     if im["kind"] == "id" and im["value"].lower().startswith(prefix)]
            return self.list_resp(ctx, items)
        if collection:
            items = [self.render_seeded(im) for im in self.s.images if im["kind"] == "id" and im["rtype"] == rtype
                     and im["sub"].lower() == sub.lower() and im["rg"].lower() == rg.lower()]
            return self.list_resp(ctx, items)
        rid = res_id(sub, rg, rtype, *names).lower()
        for im in self.s.images:
            if im["kind"] == "id" and im["value"].lower() == rid:
                return Resp(200, self.render_seeded(im))
        raise self.s.not_found(rtype, "/".join(names), rg)

    def render_seeded(self, im):
        locs = im["locations"] or ["westeurope"]
        if im["rtype"] == IMAGE:
            return {"id": im["value"], "name": im["names"][-1], "type": IMAGE, "location": locs[0],
                    "properties": {"provisioningState": "Succeeded", "hyperVGeneration": im["hyperVGeneration"],
                                   "storageProfile": {"osDisk": {"osType": im["osType"], "osState": "Generalized",
                                                                 "diskSizeGB": im["osDiskSizeGB"]}}}}
        return {"id": im["value"], "name": im["names"][-1], "type": GALLERY_VERSION, "location": locs[0],
                "properties": {"provisioningState": "Succeeded",
                               "publishingProfile": {"targetRegions": [{"name": x} for x in locs],
                                                     "excludeFromLatest": False},
                               "storageProfile": {"osDiskImage": {"sizeInGB": im["osDiskSizeGB"],
                                                                  "hostCaching": "ReadWrite"}}}}

    def marketplace_call(self, ctx, sub, loc, parts):
        # publishers/{p}/artifacttypes/vmimage/offers/{o}/skus/{s}/versions[/{v}]
        low = [p.lower() for p in parts]
        if ctx.method != "GET" or len(parts) < 7 or low[1] != "artifacttypes" or low[2] != "vmimage" \
                or low[3] != "offers" or low[5] != "skus" or low[7:8] != ["versions"]:
            raise self.unsupported(ctx)
        pub, offer, sku = parts[0], parts[4], parts[6]
        hits = [im for im in self.s.images if im["kind"] == "marketplace" and self.image_matches_location(im, loc)
                and im["publisher"].lower() == pub.lower() and im["offer"].lower() == offer.lower()
                and im["sku"].lower() == sku.lower()]

        def vid(im):
            return ("/Subscriptions/%s/Providers/Microsoft.Compute/Locations/%s/Publishers/%s/ArtifactTypes/"
                    "VMImage/Offers/%s/Skus/%s/Versions/%s" % (sub, loc, im["publisher"], im["offer"], im["sku"],
                                                                im["version"]))
        if len(parts) == 8:
            hits.sort(key=lambda im: version_key(im["version"]))
            if ctx.query.get("$orderby", "").lower().replace("  ", " ") == "name desc":
                hits.reverse()
            if ctx.query.get("$top"):
                hits = hits[:int(ctx.query["$top"])]
            return Resp(200, [{"location": loc, "name": im["version"], "id": vid(im)} for im in hits])
        ver = parts[8]
        for im in hits:
            if im["version"].lower() == ver.lower():
                return Resp(200, {"location": loc, "name": im["version"], "id": vid(im), "properties": {
                    "osDiskImage": {"operatingSystem": im["osType"]}, "hyperVGeneration": im["hyperVGeneration"],
                    "architecture": "x64", "dataDiskImages": [],
                    "automaticOSUpgradeProperties": {"automaticOSUpgradeSupported": False},
                    "imageDeprecationStatus": {"imageState": "Active"}}})
        raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")

    def community_call(self, ctx, sub, loc, parts):
        # {gallery}/images/{image}/versions[/{version}]
        low = [p.lower() for p in parts]
        if ctx.method != "GET" or len(parts) < 4 or low[1] != "images" or low[3] != "versions":
            raise self.unsupported(ctx)
        hits = [im for im in self.s.images if im["kind"] == "community" and self.image_matches_location(im, loc)
                and im["gallery"].lower() == low[0] and im["image"].lower() == low[2]]

        def doc(im):
            return {"name": im["version"], "location": loc,
                    "type": "Microsoft.Compute/locations/communityGalleries/images/versions",
                    "identifier": {"uniqueId": "/CommunityGalleries/%s/Images/%s/Versions/%s"
                                   % (im["gallery"], im["image"], im["version"])},
                    "properties": {"excludeFromLatest": False,
                                   "storageProfile": {"osDiskImage": {"diskSizeGB": im["osDiskSizeGB"],
                                                                      "hostCaching": "ReadWrite"}}}}
        if len(parts) == 4:
            return self.list_resp(ctx, [doc(im) for im in sorted(hits, key=lambda im: version_key(im["version"]))])
        for im in hits:
            if im["version"].lower() == low[4]:
                return Resp(200, doc(im))
        raise ArmError(404, "GalleryImageVersionNotFound", "The gallery image version %s is not found."
                       % "/".join(parts))

    # ---------- virtual machines ----------

    def vm_call(self, ctx, sub, rg, name):
        rgrec = self.s.need_rg(sub, rg)
        rid = res_id(sub, rgrec["name"], VM, name)
        rec = self.s.get(rid)
        if ctx.method == "GET":
            if rec and rec.get("op") and self.s.cfg("advanceOnResourceGet"):
                op = self.s.ops.get(rec["op"])
                if op:
                    op.poll()
                rec = self.s.get(rid)
            if not rec:
                raise self.s.not_found(VM, name, rg)
            expand = ctx.qi.get("$expand")
            return Resp(200, self.render(rec, expand="instanceView" if expand and
                                         expand.lower() == "instanceview" else None))
        if ctx.method in ("PUT", "PATCH"):
            return self.vm_put(ctx, sub, rgrec, name, rec, patch=ctx.method == "PATCH")
        if ctx.method == "DELETE":
            return self.vm_delete(ctx, sub, rgrec, name, rec)
        raise self.unsupported(ctx)

    def vm_put(self, ctx, sub, rgrec, name, existing, patch):
        rg = rgrec["name"]
        if patch and not existing:
            raise self.s.not_found(VM, name, rg)
        self.check_preconditions(ctx, existing)
        if existing and existing["state"] == "Deleting":
            raise ArmError(409, "OperationNotAllowed", "Operation 'Update' is not allowed on VM '%s' since the VM "
                           "is marked for deletion. You can only retry the Delete operation (or wait for an "
                           "ongoing one to complete)." % existing["name"])
        body = ctx.json_body()
        if not existing:
            self.check_name(name, 64)
        loc = self.check_location(body, existing, VM, name, rg)
        tags = self.check_tags(body.get("tags")) if "tags" in body else (existing or {}).get("tags")
        props = body.get("properties") or {}
        if not isinstance(props, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                           "deserialized: 'properties must be an object'.")
        zones = body.get("zones")
        if zones is not None:
            if (not isinstance(zones, list) or len(zones) > 1
                    or any(not isinstance(z, str) or z not in ("1", "2", "3") for z in zones)):
                raise invalid_param("The value of parameter zones is invalid. A virtual machine can be in at most "
                                    "one of the zones '1', '2', '3'.", "zones")
        identity = self.check_identity(body.get("identity"), existing, res_id(sub, rg, VM, name))
        if existing:
            return self.vm_update(ctx, existing, loc, tags, props, zones, identity, body)
        return self.vm_create(ctx, sub, rg, name, loc, tags, props, zones, identity)

    def check_identity(self, ident, existing, rid):
        if ident is None:
            return (existing or {}).get("identity")
        if not isinstance(ident, dict) or not ident.get("type"):
            raise invalid_param("The value of parameter identity.type is invalid.", "identity.type")
        t = ident["type"]
        types = {x.strip().lower() for x in t.split(",")}
        if not types <= {"systemassigned", "userassigned", "none"} or ("none" in types and len(types) > 1):
            raise invalid_param("The value '%s' of parameter identity.type is invalid." % t, "identity.type")
        if "none" in types:
            return None
        out = {"type": t}
        if "systemassigned" in types:
            out["principalId"] = det_uuid("principal", rid.lower())
            out["tenantId"] = self.s.cfg("tenant") or "00000000-0000-0000-0000-000000000000"
        if "userassigned" in types:
            uai = ident.get("userAssignedIdentities")
            if not isinstance(uai, dict) or not uai:
                raise invalid_param("The identity type UserAssigned requires a non-empty userAssignedIdentities.",
                                    "identity.userAssignedIdentities")
            outm = {}
            for k in uai:
                p = parse_res_id(k)
                if not p or p[2].lower() != "microsoft.managedidentity/userassignedidentities":
                    raise ArmError(400, "InvalidIdentityValues", "Invalid value for the identities '%s'. The "
                                   "'userAssignedIdentities' property keys should only be empty json objects, null "
                                   "or the resource exisiting property." % k)
                outm[k] = {"principalId": det_uuid("principal", k.lower()), "clientId": det_uuid("client", k.lower())}
            out["userAssignedIdentities"] = outm
        elif ident.get("userAssignedIdentities"):
            raise invalid_param("userAssignedIdentities is only allowed with identity type UserAssigned.",
                                "identity.userAssignedIdentities")
        return out

    def is_windows(self, props):
        return not gp(props, "osProfile", "linuxConfiguration")

    def check_vm_size(self, size):
        allowed = {s.lower(): s for s in self.s.cfg("vmSizes")}
        if not isinstance(size, str) or size.lower() not in allowed:
            raise invalid_param("The requested VM size %s is not available in the current region. The sizes "
                                "available in the current region are: %s. Find out more on the available VM sizes "
                                "in each region at https://aka.ms/azure-regions."
                                % (size, ",".join(self.s.cfg("vmSizes"))), "vmSize")

    def check_computer_name(self, cn, windows):
        if windows:
            if len(cn) > 15 or cn.isdigit() or any(c in COMPUTER_NAME_BAD for c in cn) or not cn:
                raise invalid_param("Windows computer name cannot be more than 15 characters long, be entirely "
                                    "numeric, or contain the following characters: ` ~ ! @ # $ % ^ & * ( ) = + _ "
                                    "[ ] { } \\ | ; : . ' \" , < > / ?.", "computerName")
        elif len(cn) > 64 or not cn:
            raise invalid_param("Linux host name cannot exceed 64 characters in length or contain the following "
                                "characters: ` ~ ! @ # $ % ^ & * ( ) = + _ [ ] { } \\ | ; : ' \" , < > / ?.",
                                "computerName")

    def check_admin(self, user, password, windows):
        if not isinstance(user, str) or not user:
            raise missing_param("adminUsername")
        if windows and (len(user) > 20 or user.endswith(".") or any(c in WIN_USER_BAD for c in user)):
            raise invalid_param("Windows admin user name cannot be more than 20 characters long, end with a "
                                "period(.), or contain the following characters: \\ / \" [ ] : | < > + = ; , ? * @.",
                                "adminUsername")
        if user.lower() in RESERVED_USERNAMES:
            raise invalid_param("The Admin Username specified is not allowed.", "adminUsername")
        if password is None:
            if windows:
                raise missing_param("adminPassword")
            return
        if not isinstance(password, str):
            raise invalid_param("The value of parameter adminPassword is invalid.", "adminPassword")
        lo, hi = (8, 123) if windows else (6, 72)
        classes = sum([any(c.islower() for c in password), any(c.isupper() for c in password),
                       any(c.isdigit() for c in password), any(not c.isalnum() for c in password)])
        if not lo <= len(password) <= hi or classes < 3:
            raise invalid_param("The supplied password must be between %d-%d characters long and must satisfy at "
                                "least 3 of password complexity requirements from the following:\r\n1) Contains an "
                                "uppercase character\r\n2) Contains a lowercase character\r\n3) Contains a numeric "
                                "digit\r\n4) Contains a special character\r\n5) Control characters are not allowed"
                                % (lo, hi), "adminPassword")
        if password.lower() in RESERVED_PASSWORDS:
            raise invalid_param("The Admin password specified is not allowed.", "adminPassword")

    def decode_custom_data(self, cd):
        msg = "Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters."
        if not isinstance(cd, str):
            raise invalid_param(msg, "customData")
        if len(cd) > 87380:
            raise invalid_param(msg, "customData")
        try:
            raw = base64.b64decode(cd, validate=True)
        except (ValueError, base64.binascii.Error):
            raise invalid_param(msg, "customData")
        if len(raw) > 65535:
            raise invalid_param(msg, "customData")
        return raw

    def pw_hash(self, pw):
        return hmac.new(self.s.secret, pw.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def resolve_nics(self, sub, vm_rid, loc, nics):
        if not isinstance(nics, list) or not nics:
            raise missing_param("networkProfile.networkInterfaces")
        recs = []
        primaries = 0
        for i, n in enumerate(nics):
            nid = n.get("id") if isinstance(n, dict) else None
            if not nid:
                raise missing_param("networkProfile.networkInterfaces[%d].id" % i)
            rec = self.s.get(nid)
            if not rec or rec["type"] != NIC:
                raise ArmError(400, "InvalidResourceReference" if parse_res_id(nid) else "LinkedInvalidPropertyId",
                               "Resource %s referenced by resource %s was not found. Please make sure that the "
                               "referenced resource exists, and that both resources are in the same region."
                               % (nid, vm_rid))
            if rec["location"] != loc:
                raise invalid_param("The network interface %s is in location '%s' and cannot be attached to a "
                                    "virtual machine in location '%s'." % (rec["id"], rec["location"], loc),
                                    "networkProfile.networkInterfaces")
            owner = self.s.get(rec.get("vm"))
            if owner and owner["id"].lower() != vm_rid.lower():
                raise ArmError(400, "NicInUse", "Network Interface %s is used by existing resource %s."
                               % (rec["id"], owner["id"]))
            primary = gp(n, "properties", "primary")
            if primary is None and len(nics) == 1:
                primary = True
            primaries += 1 if primary else 0
            recs.append((rec, bool(primary), gp(n, "properties", "deleteOption") or "Detach"))
        if len(nics) > 1 and primaries != 1:
            raise invalid_param("Virtual machine %s must have one network interface set as the primary."
                                % vm_rid.rsplit("/", 1)[-1], "networkProfile.networkInterfaces")
        for _, _, d in recs:
            if d not in ("Delete", "Detach"):
                raise invalid_param("The value '%s' of parameter deleteOption is invalid." % d, "deleteOption")
        return recs

    def premium_capable(self, size):
        m = re.match(r"(?i)^(Standard|Basic)_([A-Z]+)(\d+)(-\d+)?([a-z]*)(_v\d+)?", size)
        if not m:
            return True
        return "s" in m.group(5).lower() or m.group(2).upper() in ("DS", "GS", "FS", "LS")

    def match_fault_failure(self, ctx, vm_name):
        f = ctx.op_failure
        if not f:
            return None
        msg = f.get("message") or KNOWN_FAILURE_MESSAGES.get(f["code"], "Operation failed (injected by the fake "
                                                                           "ARM server).")
        return {"code": f["code"], "message": msg.replace("{vm}", vm_name), "status": int(f.get("status", 409))}

    def vm_create(self, ctx, sub, rg, name, loc, tags, props, zones, identity):
        rid = res_id(sub, rg, VM, name)
        size = gp(props, "hardwareProfile", "vmSize")
        if size is None:
            raise missing_param("hardwareProfile")
        storage = props.get("storageProfile")
        if not isinstance(storage, dict):
            raise missing_param("storageProfile")
        osdisk = storage.get("osDisk") or {}
        create_opt = osdisk.get("createOption", "FromImage")
        if str(create_opt).lower() != "fromimage":
            raise ArmError(501, "CapwinFakeNotImplemented", "The fake ARM server only creates VMs with "
                           "osDisk.createOption FromImage (got %r)." % create_opt)
        ref = storage.get("imageReference")
        if ref is None:
            raise missing_param("storageProfile.imageReference")
        osp = props.get("osProfile")
        if not isinstance(osp, dict):
            raise missing_param("osProfile")
        if "networkProfile" not in props:
            raise missing_param("networkProfile")
        windows = self.is_windows(props)
        self.check_vm_size(size)
        cn = osp.get("computerName", name)
        if not isinstance(cn, str):
            raise invalid_param("The value of parameter computerName is invalid.", "computerName")
        self.check_computer_name(cn, windows)
        self.check_admin(osp.get("adminUsername"), osp.get("adminPassword"), windows)
        custom = None
        if osp.get("customData") is not None:
            custom = self.decode_custom_data(osp["customData"])
        lic = props.get("licenseType")
        if lic is not None and lic not in ("Windows_Client", "Windows_Server", "None", "RHEL_BYOS", "SLES_BYOS"):
            raise invalid_param("The license type %s is invalid. Valid license types are: Windows_Client or "
                                "Windows_Server, case sensitive." % lic, "licenseType")
        sat = gp(osdisk, "managedDisk", "storageAccountType")
        if sat is not None:
            if not isinstance(sat, str) or sat.lower() not in STORAGE_TYPES or sat.lower() in ("ultrassd_lrs",
                                                                                                "premiumv2_lrs"):
                raise ArmError(400, "InvalidAccountType", "The AccountType %s is invalid." % sat)
            sat = STORAGE_TYPES[sat.lower()]
        else:
            sat = "Premium_LRS" if self.premium_capable(size) else "Standard_LRS"
        if sat.startswith("Premium") and not self.premium_capable(size):
            raise ArmError(400, "BadRequest", "Requested operation cannot be performed because storage account "
                           "type '%s' is not supported for VM size '%s'." % (sat, size))
        delete_opt = osdisk.get("deleteOption", "Detach")
        if delete_opt not in ("Delete", "Detach"):
            raise invalid_param("The value '%s' of parameter osDisk.deleteOption is invalid." % delete_opt,
                                "osDisk.deleteOption")
        size_gb = osdisk.get("diskSizeGB")
        if size_gb is not None and (not isinstance(size_gb, int) or isinstance(size_gb, bool)
                                    or not 1 <= size_gb <= 4095):
            raise invalid_param("The value of parameter osDisk.diskSizeGB is invalid.", "osDisk.diskSizeGB")
        nics = self.resolve_nics(sub, rid, loc, gp(props, "networkProfile", "networkInterfaces"))
        # image: synchronous 404 (default) or an operation that ends Failed
        failure = None
        image, exact = None, None
        try:
            image, exact = self.find_image(sub, loc, ref)
        except ArmError as e:
            if e.status != 404 or self.s.cfg("imageNotFound") != "async":
                raise
            failure = {"code": e.code, "message": e.message, "status": 409}
        if image:
            if size_gb is not None and size_gb < image["osDiskSizeGB"]:
                raise ArmError(409, "OperationNotAllowed", "Disk with size %dGB, which is smaller than the size "
                               "%dGB of corresponding disk in Image, is not allowed."
                               % (size_gb, image["osDiskSizeGB"]))
            if windows and image["osType"] != "Windows":
                raise invalid_param("The image's OS type is %s but the request has a Windows osProfile."
                                    % image["osType"], "osProfile")
        disk_name = osdisk.get("name") or "%s_OsDisk_1_%s" % (name, hashlib.md5(
            ("%s|%d" % (rid.lower(), self.s.seq)).encode()).hexdigest())
        disk_id = res_id(sub, rg, DISK, disk_name)
        clash = self.s.get(disk_id)
        if clash:
            raise ArmError(409, "ConflictingUserInput", "A disk with name %s already exists in Resource Group %s "
                           "and is attached to VM %s. 'Name' is an optional property for a disk and a unique name "
                           "will be generated if not provided." % (disk_name, rg.upper(),
                                                                   clash.get("managedBy") or "none"))
        failure = failure or self.match_fault_failure(ctx, name)
        # build the stored VM
        vm_id = det_uuid(rid.lower(), self.s.next_seq())
        out = copy.deepcopy(props)
        out.pop("provisioningState", None)
        out.pop("instanceView", None)
        o = out["osProfile"]
        o.pop("adminPassword", None)
        o.pop("customData", None)
        o["computerName"] = cn
        o.setdefault("secrets", [])
        o.setdefault("allowExtensionOperations", True)
        o.setdefault("requireGuestProvisionSignal", True)
        if windows:
            wc = o.setdefault("windowsConfiguration", {})
            wc.setdefault("provisionVMAgent", True)
            wc.setdefault("enableAutomaticUpdates", True)
            wc.setdefault("patchSettings", {"patchMode": "AutomaticByOS", "assessmentMode": "ImageDefault"})
            wc.setdefault("enableVMAgentPlatformUpdates", False)
        st = out["storageProfile"]
        if exact and isinstance(st.get("imageReference"), dict):
            st["imageReference"]["exactVersion"] = exact
        od = st.setdefault("osDisk", {})
        od.update({"osType": "Windows" if windows else "Linux", "name": disk_name, "createOption": "FromImage",
                   "deleteOption": delete_opt,
                   "diskSizeGB": size_gb if size_gb is not None else (image or {}).get("osDiskSizeGB", 127)})
        od.setdefault("caching", "ReadWrite")
        od["managedDisk"] = dict(od.get("managedDisk") or {}, storageAccountType=sat, id=disk_id)
        st.setdefault("dataDisks", [])
        for n in out["networkProfile"]["networkInterfaces"]:
            n.setdefault("properties", {})
            if len(out["networkProfile"]["networkInterfaces"]) == 1:
                n["properties"].setdefault("primary", True)
        out["vmId"] = vm_id
        out["timeCreated"] = iso()
        rec = {"id": rid, "type": VM, "name": name, "sub": sub, "rg": rg, "location": loc, "tags": tags,
               "zones": zones, "identity": identity, "props": out, "seq": self.s.seq, "state": "Creating",
               "power": "starting", "etag_n": 1, "pw": self.pw_hash(osp["adminPassword"]) if osp.get("adminPassword")
               else None, "custom": custom, "failure": None, "hyperV": (image or {}).get("hyperVGeneration", "V2"),
               "image": image, "disk": None, "nics": [n[0]["id"].lower() for n in nics], "vm_id": vm_id,
               "state_time": iso()}
        self.s.res[rid.lower()] = rec
        for nic, primary, _ in nics:
            nic["vm"] = rid
            nic["primary"] = primary
            nic["etag_n"] += 1
        image_missing = failure is not None and failure["code"] in ("PlatformImageNotFound", "ImageNotFound")
        if not image_missing:
            self.make_disk(rec, disk_id, disk_name, sat, od["diskSizeGB"], image, ref)

        def done(op):
            r = self.s.get(rid)
            if not r or r.get("op") != op.id:
                return
            r["op"] = None
            r["state_time"] = iso()
            if op.status == "Succeeded":
                r["state"] = "Succeeded"
                r["power"] = "running"
            elif op.status == "Failed":
                r["state"] = "Failed"
                r["failure"] = op.error
                if image_missing:
                    r["power"] = None
                else:
                    r["power"] = "running"
        op = self.s.new_op("Microsoft.Compute", sub, loc, "vm-create", rid, ctx.api_version, done, failure)
        rec["op"] = op.id
        return Resp(201, self.render(rec), self.lro_headers(op))

    def make_disk(self, vm, disk_id, disk_name, sat, size_gb, image, ref):
        if image and image["kind"] == "marketplace":
            creation = {"createOption": "FromImage", "imageReference": {"id": (
                "/Subscriptions/%s/Providers/Microsoft.Compute/Locations/%s/Publishers/%s/ArtifactTypes/VMImage/"
                "Offers/%s/Skus/%s/Versions/%s" % (vm["sub"], vm["location"], image["publisher"], image["offer"],
                                                   image["sku"], image["version"]))}}
        elif image and image["kind"] in ("community", "shared"):
            creation = {"createOption": "FromImage", "galleryImageReference": {
                ("communityGalleryImageId" if image["kind"] == "community" else "sharedGalleryImageId"): (
                    "/%s/%s/Images/%s/Versions/%s" % ("CommunityGalleries" if image["kind"] == "community"
                                                      else "SharedGalleries", image["gallery"], image["image"],
                                                      image["version"]))}}
        elif image:
            key = "galleryImageReference" if image["rtype"] == GALLERY_VERSION else "imageReference"
            creation = {"createOption": "FromImage", key: {"id": image["value"]}}
        else:
            creation = {"createOption": "FromImage", "imageReference": copy.deepcopy(ref)}
        disk = {"id": disk_id, "type": DISK, "name": disk_name, "sub": vm["sub"], "rg": vm["rg"],
                "location": vm["location"], "tags": None, "zones": vm.get("zones"), "seq": self.s.next_seq(),
                "sku": sat, "managedBy": vm["id"], "delete_op": None,
                "props": {"osType": gp(vm, "props", "storageProfile", "osDisk", "osType"),
                          "hyperVGeneration": (image or {}).get("hyperVGeneration", "V2"),
                          "creationData": creation, "diskSizeGB": size_gb, "diskSizeBytes": size_gb * 1024 ** 3,
                          "uniqueId": det_uuid(disk_id.lower(), "disk"), "provisioningState": "Succeeded",
                          "timeCreated": iso(), "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
                          "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled"}}
        self.s.res[disk_id.lower()] = disk
        vm["disk"] = disk_id.lower()

    def vm_update(self, ctx, rec, loc, tags, props, zones, identity, body):
        name = rec["name"]
        cur = rec["props"]
        osp = props.get("osProfile") or {}

        def immutable(prop):
            return ArmError(409, "PropertyChangeNotAllowed", "Changing property '%s' is not allowed." % prop, prop)
        if "computerName" in osp and osp["computerName"] != cur["osProfile"]["computerName"]:
            raise immutable("osProfile.computerName")
        if "adminUsername" in osp and osp["adminUsername"] != cur["osProfile"].get("adminUsername"):
            raise immutable("osProfile.adminUsername")
        if osp.get("adminPassword") is not None and self.pw_hash(osp["adminPassword"]) != rec["pw"]:
            raise immutable("osProfile.adminPassword")
        if osp.get("customData") is not None:
            if self.decode_custom_data(osp["customData"]) != rec["custom"]:
                raise immutable("osProfile.customData")
        new_ref = gp(props, "storageProfile", "imageReference")
        if new_ref is not None:
            old_ref = {k: v for k, v in cur["storageProfile"]["imageReference"].items() if k != "exactVersion"}
            nr = {k: v for k, v in new_ref.items() if k != "exactVersion"} if isinstance(new_ref, dict) else new_ref
            if json.dumps(old_ref, sort_keys=True).lower() != json.dumps(nr, sort_keys=True).lower():
                raise immutable("imageReference")
        nod = gp(props, "storageProfile", "osDisk") or {}
        cod = cur["storageProfile"]["osDisk"]
        if "name" in nod and nod["name"] != cod["name"]:
            raise immutable("osDisk.name")
        if "diskSizeGB" in nod and nod["diskSizeGB"] != cod["diskSizeGB"]:
            if not isinstance(nod["diskSizeGB"], int) or nod["diskSizeGB"] < cod["diskSizeGB"]:
                raise immutable("osDisk.diskSizeGB")
            if rec.get("power") != "deallocated":
                raise ArmError(409, "Conflict", "Disk resizing is allowed only when creating a VM or when the VM "
                               "is deallocated.")
        if gp(nod, "managedDisk", "storageAccountType") and gp(nod, "managedDisk", "storageAccountType").lower() \
                != cod["managedDisk"]["storageAccountType"].lower():
            raise ArmError(409, "OperationNotAllowed", "Changing the storage account type of the OS disk is only "
                           "allowed when the VM is deallocated.")
        if zones is not None and (zones or None) != (rec.get("zones") or None):
            raise immutable("zones")
        size = gp(props, "hardwareProfile", "vmSize")
        if size is not None:
            self.check_vm_size(size)
        nic_recs = None
        if gp(props, "networkProfile", "networkInterfaces") is not None:
            nic_recs = self.resolve_nics(rec["sub"], rec["id"], loc, props["networkProfile"]["networkInterfaces"])
        # apply
        newp = copy.deepcopy(props)
        newp.pop("provisioningState", None)
        newp.pop("instanceView", None)
        newp.pop("vmId", None)
        newp.pop("timeCreated", None)
        if isinstance(newp.get("osProfile"), dict):
            newp["osProfile"].pop("adminPassword", None)
            newp["osProfile"].pop("customData", None)
        if isinstance(gp(newp, "storageProfile", "osDisk"), dict):
            newp["storageProfile"]["osDisk"].pop("managedDisk", None)
        if isinstance(gp(newp, "storageProfile", "imageReference"), dict):
            newp["storageProfile"].pop("imageReference")
        merged = deep_merge(cur, newp)
        if nic_recs is not None:
            merged["networkProfile"] = copy.deepcopy(props["networkProfile"])
            new_keys = [n[0]["id"].lower() for n in nic_recs]
            for k in rec["nics"]:
                if k not in new_keys and self.s.get(k):
                    self.s.get(k)["vm"] = None
            for nic, primary, _ in nic_recs:
                nic["vm"] = rec["id"]
                nic["primary"] = primary
            rec["nics"] = new_keys
        rec["props"] = merged
        rec["tags"] = tags
        rec["identity"] = identity
        rec["etag_n"] += 1
        disk = self.s.get(rec.get("disk"))
        if disk and "diskSizeGB" in nod:
            disk["props"]["diskSizeGB"] = nod["diskSizeGB"]
        pending = self.s.ops.get(rec.get("op")) if rec.get("op") else None
        if pending and pending.status == "InProgress":
            return Resp(200, self.render(rec), self.lro_headers(pending))
        failure = self.match_fault_failure(ctx, name)
        if rec.get("image") is None:  # created in imageNotFound=async mode: still missing?
            ref = {k: v for k, v in cur["storageProfile"]["imageReference"].items() if k != "exactVersion"}
            try:
                rec["image"], _ = self.find_image(rec["sub"], rec["location"], ref)
            except ArmError as e:
                failure = failure or {"code": e.code, "message": e.message, "status": 409}
        rec["state"] = "Updating"
        rec["state_time"] = iso()
        rid = rec["id"]

        def done(op):
            r = self.s.get(rid)
            if not r or r.get("op") != op.id:
                return
            r["op"] = None
            r["state_time"] = iso()
            if op.status == "Succeeded":
                r["state"] = "Succeeded"
                r["failure"] = None
                if r.get("power") in (None, "starting"):
                    r["power"] = "running"
            else:
                r["state"] = "Failed"
                r["failure"] = op.error
        op = self.s.new_op("Microsoft.Compute", rec["sub"], rec["location"], "vm-update", rid, ctx.api_version,
                           done, failure)
        rec["op"] = op.id
        return Resp(200, self.render(rec), self.lro_headers(op))

    def vm_delete(self, ctx, sub, rgrec, name, rec):
        if not rec:
            return Resp(204)
        cur = self.s.ops.get(rec.get("op")) if rec.get("op") else None
        if rec["state"] == "Deleting" and cur and cur.status == "InProgress":
            return Resp(202, None, self.lro_headers(cur, location=True))
        if cur and cur.status == "InProgress":
            cur.complete("Canceled", {"code": "OperationPreempted",
                                      "message": "Operation execution has been preempted by a more recent "
                                                 "operation."})
        rid = rec["id"]
        failure = self.match_fault_failure(ctx, name)
        prev_state = rec["state"]
        rec["state"] = "Deleting"
        rec["state_time"] = iso()

        def done(op):
            r = self.s.get(rid)
            if not r:
                return
            r["op"] = None
            if op.status != "Succeeded":
                r["state"] = "Failed" if prev_state != "Succeeded" else "Succeeded"
                r["failure"] = op.error
                return
            self.remove_vm(r)
        op = self.s.new_op("Microsoft.Compute", sub, rec["location"], "vm-delete", rid, ctx.api_version, done,
                           failure)
        rec["op"] = op.id
        return Resp(202, None, self.lro_headers(op, location=True))

    def remove_vm(self, r):
        self.s.res.pop(r["id"].lower(), None)
        disk = self.s.get(r.get("disk"))
        if disk and (disk.get("managedBy") or "").lower() == r["id"].lower():
            if gp(r, "props", "storageProfile", "osDisk", "deleteOption") == "Delete":
                self.s.res.pop(disk["id"].lower(), None)
            else:
                disk["managedBy"] = None
        opts = {}
        for n in gp(r, "props", "networkProfile", "networkInterfaces") or []:
            if isinstance(n, dict) and n.get("id"):
                opts[n["id"].lower()] = gp(n, "properties", "deleteOption") or "Detach"
        for k in r.get("nics", []):
            nic = self.s.get(k)
            if nic and (nic.get("vm") or "").lower() == r["id"].lower():
                if opts.get(k) == "Delete":
                    self.s.res.pop(k, None)
                else:
                    nic["vm"] = None
                    nic["etag_n"] += 1

    def vm_action(self, ctx, sub, rg, name, action):
        rgrec = self.s.need_rg(sub, rg)
        rid = res_id(sub, rgrec["name"], VM, name)
        rec = self.s.get(rid)
        a = action.lower()
        if a == "instanceview" and ctx.method == "GET":
            if not rec:
                raise self.s.not_found(VM, name, rg)
            return Resp(200, self.instance_view(rec))
        if ctx.method != "POST":
            raise self.unsupported(ctx)
        if not rec:
            raise self.s.not_found(VM, name, rg)
        if a == "retrievebootdiagnosticsdata":
            if self.s.cfg("bootDiagnosticsRequired") and not gp(rec, "props", "diagnosticsProfile",
                                                                 "bootDiagnostics", "enabled"):
                raise ArmError(409, "OperationNotAllowed", "Boot diagnostics is not enabled for VM '%s'." % name)
            raw = ctx.qi.get("sasuriexpirationtimeinminutes", "120")
            try:
                minutes = int(raw)
                if not 1 <= minutes <= 1440:
                    raise ValueError
            except ValueError:
                raise invalid_param("The value of parameter sasUriExpirationTimeInMinutes is invalid; it must be "
                                    "between 1 and 1440.", "sasUriExpirationTimeInMinutes")
            se = (utcnow() + datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return Resp(200, {"consoleScreenshotBlobUri": self.blob_url(rec, "screenshot.bmp", se),
                              "serialConsoleLogBlobUri": self.blob_url(rec, "serialconsole.log", se)})
        if a in ("start", "poweroff", "restart", "deallocate"):
            pending = self.s.ops.get(rec.get("op")) if rec.get("op") else None
            if rec["state"] == "Deleting" or (pending and pending.status == "InProgress"):
                raise ArmError(409, "OperationNotAllowed", "Operation '%s' is not allowed on VM '%s' since another "
                               "operation is in progress." % (action, name))
            target = {"start": "running", "poweroff": "stopped", "restart": "running",
                      "deallocate": "deallocated"}[a]

            def done(op):
                r = self.s.get(rid)
                if r and r.get("op") == op.id:
                    r["op"] = None
                    if op.status == "Succeeded":
                        r["power"] = target
            op = self.s.new_op("Microsoft.Compute", sub, rec["location"], "vm-" + a, rid, ctx.api_version, done,
                               self.match_fault_failure(ctx, name))
            rec["op"] = op.id
            rec["power"] = {"start": "starting", "poweroff": "stopping", "restart": "starting",
                            "deallocate": "deallocating"}[a]
            return Resp(202, None, self.lro_headers(op, location=True))
        raise self.unsupported(ctx)

    def blob_sig(self, vm_id, kind, se):
        mac = hmac.new(self.s.secret, ("%s\n%s\n%s" % (vm_id, kind, se)).encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode()

    def blob_url(self, rec, kind, se):
        q = urllib.parse.urlencode({"sv": "2022-11-02", "se": se, "sr": "b", "sp": "r",
                                    "sig": self.blob_sig(rec["vm_id"], kind, se)})
        return "%s/_blob/bootdiagnostics-%s/%s.%s.%s?%s" % (self.base, rec["vm_id"][:8], rec["name"], rec["vm_id"],
                                                            kind, q)

    # ---------- disks ----------

    def disk_call(self, ctx, sub, rg, name):
        rgrec = self.s.need_rg(sub, rg)
        rid = res_id(sub, rgrec["name"], DISK, name)
        rec = self.s.get(rid)
        if ctx.method == "GET":
            if rec and rec.get("delete_op") and self.s.cfg("advanceOnResourceGet"):
                op = self.s.ops.get(rec["delete_op"])
                if op:
                    op.poll()
                rec = self.s.get(rid)
            if not rec:
                raise self.s.not_found(DISK, name, rg)
            return Resp(200, self.render(rec))
        if ctx.method == "PATCH":
            if not rec:
                raise self.s.not_found(DISK, name, rg)
            body = ctx.json_body()
            extra = set(body) - {"tags"}
            if extra:
                raise ArmError(501, "CapwinFakeNotImplemented", "The fake ARM server only PATCHes disk tags; "
                               "got %s." % ", ".join(sorted(extra)))
            rec["tags"] = self.check_tags(body.get("tags"))
            return Resp(200, self.render(rec))
        if ctx.method == "DELETE":
            if not rec:
                return Resp(204)
            owner = self.s.get(rec.get("managedBy"))
            if owner:
                raise ArmError(409, "OperationNotAllowed", "Disk %s is attached to VM %s." % (rec["name"],
                                                                                           owner["id"]))
            pending = self.s.ops.get(rec.get("delete_op")) if rec.get("delete_op") else None
            if pending and pending.status == "InProgress":
                return Resp(202, None, self.lro_headers(pending, location=True))

            def done(op):
                if op.status == "Succeeded":
                    self.s.res.pop(rid.lower(), None)
                else:
                    r = self.s.get(rid)
                    if r:
                        r["delete_op"] = None
            op = self.s.new_op("Microsoft.Compute", sub, rec["location"], "disk-delete", rid, ctx.api_version, done,
                               self.match_fault_failure(ctx, name))
            rec["delete_op"] = op.id
            return Resp(202, None, self.lro_headers(op, location=True))
        raise self.unsupported(ctx)

    # ---------- operations ----------

    def op_poll(self, ctx, sub, ns, loc, opid, location_view):
        if ctx.method != "GET":
            raise self.unsupported(ctx)
        op = self.s.ops.get(opid)
        if not op or op.sub.lower() != sub.lower() or op.ns != ns:
            raise ArmError(404, "NotFound", "The operation '%s' was not found." % opid)
        status = op.poll()
        if not location_view:
            return Resp(200, op.status_doc())
        if status == "InProgress":
            return Resp(202, None, {"Location": self.base + op.paths()[1],
                                    "Retry-After": str(int(self.s.cfg("retryAfter")))})
        if status == "Succeeded":
            rec = self.s.get(op.target)
            if op.kind in ("vm-create", "vm-update", "nic-put") and rec:
                return Resp(200, self.render(rec))
            return Resp(200)
        err = op.error or {"code": "Canceled", "message": "The operation was canceled."}
        return Resp(op.error_status or 409, {"error": err})


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------

def make_fault(state, doc):
    if not isinstance(doc, dict):
        raise ControlError(400, "a JSON object expected")
    allowed = {"method", "path", "times", "status", "code", "message", "retryAfter", "when", "delay", "drop",
               "operationFailure", "headers"}
    extra = set(doc) - allowed
    if extra:
        raise ControlError(400, "unknown fault fields: %s" % ", ".join(sorted(extra)))
    method = str(doc.get("method", "*")).upper()
    try:
        pattern = re.compile(doc.get("path", ".*"), re.I)
    except re.error as e:
        raise ControlError(400, "bad path regex: %s" % e)
    times = int(doc.get("times", 1))
    if times == 0 or times < -1:
        raise ControlError(400, "times must be >= 1 or -1 (until cleared)")
    when = doc.get("when", "before")
    if when not in ("before", "after"):
        raise ControlError(400, "when must be before or after")
    delay = float(doc.get("delay", 0))
    if not 0 <= delay <= 600:
        raise ControlError(400, "delay must be 0..600 seconds")
    opf = doc.get("operationFailure")
    status = doc.get("status")
    if opf is not None:
        if not isinstance(opf, dict) or not opf.get("code"):
            raise ControlError(400, "operationFailure needs a code")
        if status is not None or doc.get("drop"):
            raise ControlError(400, "operationFailure cannot be combined with status or drop")
    elif status is None and not doc.get("drop") and not delay:
        raise ControlError(400, "a fault needs status, drop, delay or operationFailure")
    if status is not None:
        status = int(status)
        if not 400 <= status <= 599:
            raise ControlError(400, "status must be 4xx or 5xx")
    state.fault_seq += 1
    return {"id": state.fault_seq, "method": method, "path": doc.get("path", ".*"), "re": pattern, "times": times,
            "status": status,
            "code": doc.get("code") or (STATUS_CODES.get(status, "InjectedFault") if status else None),
            "message": doc.get("message"), "retryAfter": doc.get("retryAfter", 1 if status == 429 else None),
            "when": when, "delay": delay, "drop": bool(doc.get("drop")), "operationFailure": opf,
            "headers": dict(doc.get("headers") or {}), "hits": 0}


def fault_public(f):
    return {k: v for k, v in f.items() if k != "re"}


def default_fault_message(f, ctx):
    if f["message"]:
        return f["message"]
    st = f["status"]
    if st == 429:
        kind = "Read" if ctx.method == "GET" else "Write"
        return ("The request is being throttled as the limit has been reached for operation type - %s_"
                "ObservationWindow_00:05:00. For more information, see - https://aka.ms/srpthrottlinglimits" % kind)
    if st == 500:
        return "Encountered internal server error. Diagnostic information: tracking id '%s'." % uuid.uuid4()
    if st == 503:
        return "The server is currently unable to receive requests. Please retry your request."
    return "Injected by the fake ARM server (status %d)." % st


# --------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "capwin-fake-arm"
    sys_version = ""
    timeout = 120

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (iso(), fmt % args))

    def log_request(self, code="-", size="-"):
        path = self.path.split("?", 1)[0]
        sys.stderr.write("%s %s %s %s\n" % (iso(), self.command, path, code))

    def do_GET(self):
        self.handle_any()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        if n > 16 * 1024 * 1024:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def send(self, resp, head_only=False):
        data, ctype = resp.payload()
        self.send_response(resp.status)
        if ctype and resp.status not in (204, 304):
            self.send_header("Content-Type", ctype)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and not head_only and resp.status not in (204, 304):
            self.wfile.write(data)

    def handle_any(self):
        st = self.server.state
        arm = self.server.arm
        t0 = time.monotonic()
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send(Resp(400, {"error": {"code": "InvalidRequestContent", "message": "Bad request body."}}))
            return
        ctx = Ctx(self.command, self.path, self.headers, body)
        if ctx.path == "/_capwin" or ctx.path.startswith("/_capwin/"):
            with st.lock:
                try:
                    resp = control(st, ctx)
                except ControlError as e:
                    resp = Resp(e.status, {"error": str(e)})
                except (ValueError, TypeError, KeyError) as e:
                    resp = Resp(400, {"error": "%s: %s" % (type(e).__name__, e)})
            self.send(resp, head_only=self.command == "HEAD")
            return
        family = family_of(ctx)
        fault = None
        resp = None
        with st.lock:
            try:
                if family == "arm":
                    check_auth(st, ctx)
                    if not ctx.api_version:
                        raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter "
                                       "(?api-version=) is required for all requests.")
                    if not API_VERSION_RE.match(ctx.api_version):
                        raise ArmError(400, "InvalidApiVersionParameter", "The api-version '%s' is invalid. An "
                                       "api-version is a date such as '2024-07-01', optionally with a '-preview' "
                                       "suffix." % ctx.api_version)
                fault = take_fault(st, ctx, family)
            except ArmError as e:
                resp = error_resp(e, family)
                type_for(ctx, family)
        if fault and fault["delay"]:
            time.sleep(fault["delay"])
        with st.lock:
            injected = False
            if resp is None:
                if fault and fault["when"] == "before" and (fault["drop"] or fault["status"]):
                    type_for(ctx, family)
                    resp = None if fault["drop"] else fault_resp(st, fault, ctx, family)
                    injected = True
                else:
                    if fault and fault["operationFailure"]:
                        ctx.op_failure = fault["operationFailure"]
                    try:
                        resp = dispatch(st, arm, ctx, family)
                    except ArmError as e:
                        resp = error_resp(e, family)
                    except Exception as e:  # a bug in the fake: say so rather than drop the connection
                        import traceback
                        traceback.print_exc()
                        resp = error_resp(ArmError(500, "CapwinFakeInternalError", "The fake ARM server failed: "
                                                   "%s: %s" % (type(e).__name__, e)), family)
                    if fault and fault["when"] == "after" and (fault["drop"] or fault["status"]):
                        resp = None if fault["drop"] else fault_resp(st, fault, ctx, family)
                        injected = True
            if resp is not None and family == "arm":
                add_arm_headers(st, ctx, resp)
            record(st, ctx, family, resp, injected, fault if injected else None, t0)
        if resp is None:  # dropped on purpose
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send(resp, head_only=self.command == "HEAD")


def family_of(ctx):
    p = ctx.path
    if p.startswith("/_blob/"):
        return "blob"
    if re.match(r"^/[^/]+/oauth2/(v2\.0/)?token/?$", p) or re.match(r"^/[^/]+/v2\.0/\.well-known/", p) \
            or p.startswith("/common/discovery/"):
        return "aad"
    return "arm"


def type_for(ctx, family):
    if ctx.rtype:
        return ctx.rtype
    if family == "blob":
        ctx.rtype = "blob"
    elif family == "aad":
        ctx.rtype = "oauth2/token" if "/oauth2/" in ctx.path else "aad/discovery"
    else:
        # best effort from the path, for counts of calls that never reached a handler
        segs = [s for s in ctx.path.strip("/").split("/") if s]
        low = [s.lower() for s in segs]
        if "providers" in low:
            i = low.index("providers")
            rest = segs[i + 1:]
            if rest:
                ns = NAMESPACES.get(rest[0].lower(), rest[0])
                types = rest[1::2]
                t = ns + "/" + "/".join(types)
                ctx.rtype = KNOWN_TYPES.get(t.lower(), t)
                if low[i + 1: i + 3] and len(rest) >= 5 and rest[1].lower() == "locations":
                    ctx.rtype = "%s/locations/%s" % (ns, "operationResults" if rest[3].lower() == "operationresults"
                                                     else rest[3])
        elif len(low) >= 3 and low[2] == "resourcegroups":
            ctx.rtype = RG_TYPE
        else:
            ctx.rtype = "?"
    return ctx.rtype


def check_auth(st, ctx):
    h = ctx.header("Authorization")
    www = 'Bearer authorization_uri="%s/common", error="invalid_token"' % st.url
    if not h:
        raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                       headers={"WWW-Authenticate": www + ', error_description="The authentication failed because '
                                "of missing 'Authorization' header.\""})
    parts = h.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
        raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is provided "
                       "in an invalid format.", headers={"WWW-Authenticate": www})
    need = st.cfg("requiredToken")
    if need and parts[1].strip() != need:
        raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.",
                       headers={"WWW-Authenticate": www + ', error_description="The access token is invalid."'})


def take_fault(st, ctx, family):
    for f in st.faults:
        if f["method"] not in ("*", ctx.method):
            continue
        if not f["re"].search(ctx.path):
            continue
        f["hits"] += 1
        if f["times"] > 0:
            f["times"] -= 1
            if f["times"] == 0:
                st.faults.remove(f)
        return f
    return None


def fault_resp(st, f, ctx, family):
    type_for(ctx, family)
    status = f["status"]
    headers = dict(f["headers"])
    if f["retryAfter"] is not None:
        headers["Retry-After"] = str(f["retryAfter"])
    if status == 429:
        kind = "reads" if ctx.method == "GET" else ("deletes" if ctx.method == "DELETE" else "writes")
        headers.setdefault("x-ms-ratelimit-remaining-subscription-%s" % kind, "0")
    msg = default_fault_message(f, ctx)
    if family == "aad":
        kind = "temporarily_unavailable" if status >= 500 or status == 429 else "invalid_request"
        return Resp(status, {"error": kind,
                             "error_description": "AADSTS90000: %s" % msg, "error_codes": [90000],
                             "timestamp": iso(), "trace_id": str(uuid.uuid4()),
                             "correlation_id": str(uuid.uuid4())}, headers)
    if family == "blob":
        return blob_error(status, f["code"], msg, headers)
    return Resp(status, {"error": {"code": f["code"], "message": msg}}, headers)


def error_resp(e, family):
    if family == "blob":
        return blob_error(e.status, e.code, e.message, e.headers)
    return Resp(e.status, e.envelope(), e.headers)


def blob_error(status, code, message, headers=None):
    rid = str(uuid.uuid4())
    xml = ('<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>%s\nRequestId:%s\nTime:%s'
           '</Message></Error>' % (code, message, rid, iso()))
    h = {"x-ms-error-code": code, "x-ms-request-id": rid, "x-ms-version": "2022-11-02"}
    h.update(headers or {})
    return Resp(status, xml.encode(), h, "application/xml")


def add_arm_headers(st, ctx, resp):
    h = resp.headers
    rid = str(uuid.uuid4())
    h.setdefault("x-ms-request-id", rid)
    h.setdefault("x-ms-correlation-request-id", ctx.header("x-ms-correlation-request-id") or rid)
    h.setdefault("x-ms-routing-request-id", "WESTEUROPE:%s:%s" % (utcnow().strftime("%Y%m%dT%H%M%SZ"), rid))
    if ctx.header("x-ms-client-request-id"):
        h.setdefault("x-ms-client-request-id", ctx.header("x-ms-client-request-id"))
    h.setdefault("Cache-Control", "no-cache")
    h.setdefault("Pragma", "no-cache")
    h.setdefault("Expires", "-1")
    kind = "reads" if ctx.method == "GET" else ("deletes" if ctx.method == "DELETE" else "writes")
    name = "x-ms-ratelimit-remaining-subscription-%s" % kind
    if name not in h:
        cap = {"reads": 12000, "writes": 1200, "deletes": 15000}[kind]
        n = st.ratelimit.get(kind, cap) - 1
        st.ratelimit[kind] = max(n, 0)
        h[name] = str(max(n, 0))


def record(st, ctx, family, resp, injected, fault, t0):
    rtype = type_for(ctx, family)
    key = "%s %s" % (ctx.method, rtype)
    st.counts[key] = st.counts.get(key, 0) + 1
    if injected:
        st.injected[key] = st.injected.get(key, 0) + 1
    st.log_seq += 1
    q = {k: ("<redacted>" if k.lower() in SECRET_KEYS else v) for k, v in ctx.query.items()}
    entry = {"seq": st.log_seq, "time": iso(), "method": ctx.method, "path": ctx.path, "query": q,
             "apiVersion": ctx.api_version, "type": rtype, "status": resp.status if resp else None,
             "injected": injected, "auth": auth_kind(ctx.header("Authorization")),
             "clientRequestId": ctx.header("x-ms-client-request-id"),
             "userAgent": ctx.header("User-Agent"), "ms": round((time.monotonic() - t0) * 1000, 1)}
    if injected and fault:
        entry["fault"] = fault["id"]
    if resp is not None and resp.status >= 400 and isinstance(resp.body, dict):
        err = resp.body.get("error")
        entry["error"] = err.get("code") if isinstance(err, dict) else err
    if ctx.body:
        entry["body"] = loggable_body(ctx)
    st.log.append(entry)
    if len(st.log) > 20000:
        del st.log[:5000]


def auth_kind(h):
    if not h:
        return None
    return h.split(None, 1)[0].lower()


def loggable_body(ctx):
    ctype = (ctx.header("Content-Type") or "").lower()
    try:
        text = ctx.body.decode("utf-8")
    except UnicodeDecodeError:
        return {"bytes": len(ctx.body)}
    if "x-www-form-urlencoded" in ctype:
        return redact(dict(urllib.parse.parse_qsl(text, keep_blank_values=True)))
    try:
        return redact(json.loads(text))
    except ValueError:
        return {"bytes": len(ctx.body)}


def dispatch(st, arm, ctx, family):
    if family == "blob":
        ctx.rtype = "blob"
        return blob_get(st, arm, ctx)
    if family == "aad":
        return aad(st, ctx)
    return arm.route(ctx)


# --------------------------------------------------------------------------------------
# Blob (boot diagnostics serial log) and AAD token endpoint
# --------------------------------------------------------------------------------------

def serial_for(st, vm):
    for k in ((vm["rg"].lower(), vm["name"].lower()), ("*", vm["name"].lower())):
        if k in st.serial:
            return st.serial[k]
    return None


def blob_get(st, arm, ctx):
    if ctx.method not in ("GET", "HEAD"):
        raise ArmError(405, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb.")
    if ctx.header("Authorization"):
        raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request. A SAS URL must not "
                       "be combined with an Authorization header (the fake refuses it; do not send the ARM token "
                       "to a storage URL).")
    m = re.match(r"^/_blob/bootdiagnostics-[0-9a-f]{8}/(.+)\.([0-9a-f-]{36})\.(serialconsole\.log|screenshot\.bmp)$",
                 ctx.path)
    if not m:
        raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
    vm_id, kind = m.group(2), m.group(3)
    se = ctx.query.get("se", "")
    sig = ctx.query.get("sig", "")
    if not hmac.compare_digest(sig, arm.blob_sig(vm_id, kind, se)):
        raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value "
                       "of Authorization header is formed correctly including the signature.")
    try:
        exp = datetime.datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request.")
    if exp < utcnow():
        raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request. Signed expiry time "
                       "[%s] must be after signed start time." % se)
    vm = next((r for r in st.res.values() if r["type"] == VM and r["vm_id"] == vm_id), None)
    if not vm or kind != "serialconsole.log":
        raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
    text = serial_for(st, vm)
    if text is None:
        raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
    data = text.encode("utf-8")
    etag = '"0x%s"' % hashlib.sha256(data).hexdigest()[:15].upper()
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2022-11-02", "ETag": etag,
               "Last-Modified": utcnow().strftime("%a, %d %b %Y %H:%M:%S GMT"), "Accept-Ranges": "bytes",
               "x-ms-request-id": str(uuid.uuid4())}
    rng = ctx.header("Range") or ctx.header("x-ms-range")
    if rng:
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())
        if not m:
            raise ArmError(416, "InvalidRange", "The range specified is invalid for the current size of the "
                           "resource.")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        if start >= len(data) or end < start:
            raise ArmError(416, "InvalidRange", "The range specified is invalid for the current size of the "
                           "resource.", headers={"Content-Range": "bytes */%d" % len(data)})
        end = min(end, len(data) - 1)
        headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, len(data))
        return Resp(206, data[start:end + 1], headers, "text/plain")
    return Resp(200, data, headers, "text/plain")


def aad_error(status, error, code, desc):
    return Resp(status, {"error": error, "error_description": "AADSTS%d: %s" % (code, desc), "error_codes": [code],
                         "timestamp": utcnow().strftime("%Y-%m-%d %H:%M:%SZ"), "trace_id": str(uuid.uuid4()),
                         "correlation_id": str(uuid.uuid4())})


def aad(st, ctx):
    type_for(ctx, "aad")
    segs = ctx.path.strip("/").split("/")
    tenant = segs[0]
    base = st.url
    if "/.well-known/" in ctx.path:
        return Resp(200, {"token_endpoint": "%s/%s/oauth2/v2.0/token" % (base, tenant),
                          "issuer": "%s/%s/v2.0" % (base, tenant),
                          "authorization_endpoint": "%s/%s/oauth2/v2.0/authorize" % (base, tenant),
                          "jwks_uri": "%s/%s/discovery/v2.0/keys" % (base, tenant),
                          "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                                    "client_secret_basic"]})
    if ctx.path.startswith("/common/discovery/"):
        return Resp(200, {"tenant_discovery_endpoint": "%s/common/v2.0/.well-known/openid-configuration" % base,
                          "api-version": "1.1", "metadata": [{"preferred_network": "localhost",
                                                              "preferred_cache": "localhost",
                                                              "aliases": ["localhost", "127.0.0.1"]}]})
    if ctx.method != "POST":
        return aad_error(405, "invalid_request", 900561, "The endpoint only accepts POST requests.")
    want_tenant = st.cfg("tenant")
    if want_tenant and tenant.lower() != want_tenant.lower():
        return aad_error(400, "invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have the "
                         "correct tenant ID and are signing into the correct cloud." % tenant)
    try:
        form = dict(urllib.parse.parse_qsl(ctx.body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        form = {}
    if form.get("grant_type") != "client_credentials":
        return aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'."
                         % form.get("grant_type"))
    cid = form.get("client_id")
    if not cid:
        return aad_error(400, "invalid_request", 900144, "The request body must contain the following parameter: "
                         "'client_id'.")
    scope = form.get("scope", "")
    if not scope or not all(s.endswith("/.default") for s in scope.split()):
        return aad_error(400, "invalid_scope", 1002012, "The provided value for scope %s is not valid. Client "
                         "credential flows must have a scope value with /.default suffixed to the resource "
                         "identifier (application ID URI)." % scope)
    secret, assertion = form.get("client_secret"), form.get("client_assertion")
    if not secret and not assertion:
        return aad_error(401, "invalid_client", 7000216, "'client_assertion', 'client_secret' or "
                         "'request' is required for the 'client_credentials' grant type.")
    clients = st.cfg("clients") or {}
    if clients:
        if cid not in clients:
            return aad_error(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found "
                             "in the directory '%s'." % (cid, tenant))
        if secret is not None and not hmac.compare_digest(str(clients[cid]), secret):
            return aad_error(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                             "being sent in the request is the client secret value, not the client secret ID, for "
                             "a secret added to app '%s'." % cid)
    now = int(time.time())
    token = st.cfg("requiredToken")
    if not token:
        def b64(o):
            return base64.urlsafe_b64encode(json.dumps(o, separators=(",", ":")).encode()).rstrip(b"=").decode()
        aud = scope.split()[0][:-len("/.default")]
        token = "%s.%s.%s" % (b64({"typ": "JWT", "alg": "RS256", "kid": "capwin-fake"}),
                              b64({"aud": aud, "iss": "https://sts.windows.net/%s/" % tenant, "iat": now,
                                   "nbf": now, "exp": now + 3600, "appid": cid, "tid": tenant,
                                   "oid": det_uuid("oid", cid), "sub": det_uuid("oid", cid), "ver": "1.0"}),
                              base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode())
    return Resp(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})


# --------------------------------------------------------------------------------------
# Control API (/_capwin/...)
# --------------------------------------------------------------------------------------

def control_body(ctx):
    if not ctx.body:
        return {}
    try:
        return json.loads(ctx.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError(400, "bad JSON: %s" % e)


def find_vm(st, name, rg=None, sub=None):
    if not name:
        raise ControlError(400, "vm is required")
    if name.startswith("/"):
        r = st.get(name)
        if not r or r["type"] != VM:
            raise ControlError(404, "no VM %s" % name)
        return r
    hits = [r for r in st.res.values() if r["type"] == VM and r["name"].lower() == name.lower()
            and (rg is None or r["rg"].lower() == rg.lower()) and (sub is None or r["sub"].lower() == sub.lower())]
    if not hits:
        raise ControlError(404, "no VM named %s" % name)
    if len(hits) > 1:
        raise ControlError(409, "several VMs named %s: give resourceGroup" % name)
    return hits[0]


def control(st, ctx):
    p = ctx.path[len("/_capwin"):].rstrip("/") or "/"
    m = ctx.method
    arm = Arm(st)
    if p == "/health":
        return Resp(200, {"ok": True, "pid": os.getpid(), "url": st.url})
    if p == "/reset" and m == "POST":
        st.reset()
        return Resp(200, {"reset": True})
    if p == "/seed" and m in ("POST", "PUT"):
        return Resp(200, {"seeded": st.seed(control_body(ctx))})
    if p == "/config":
        if m == "GET":
            return Resp(200, st.config)
        if m in ("POST", "PATCH", "PUT"):
            doc = control_body(ctx)
            if not isinstance(doc, dict):
                raise ControlError(400, "a JSON object expected")
            unknown = set(doc) - set(DEFAULT_CONFIG)
            if unknown:
                raise ControlError(400, "unknown config keys: %s" % ", ".join(sorted(unknown)))
            if "imageNotFound" in doc and doc["imageNotFound"] not in ("sync", "async"):
                raise ControlError(400, "imageNotFound must be sync or async")
            if "pollsBeforeDone" in doc and (not isinstance(doc["pollsBeforeDone"], int)
                                             or doc["pollsBeforeDone"] < 0):
                raise ControlError(400, "pollsBeforeDone must be an integer >= 0")
            st.config.update(copy.deepcopy(doc))
            return Resp(200, st.config)
    if p == "/faults":
        if m == "GET":
            return Resp(200, {"faults": [fault_public(f) for f in st.faults]})
        if m == "POST":
            doc = control_body(ctx)
            docs = doc if isinstance(doc, list) else [doc]
            added = [make_fault(st, d) for d in docs]
            st.faults.extend(added)
            return Resp(200, {"armed": [fault_public(f) for f in added]})
        if m == "DELETE":
            n = len(st.faults)
            st.faults.clear()
            return Resp(200, {"removed": n})
    mm = re.match(r"^/faults/(\d+)$", p)
    if mm and m == "DELETE":
        before = len(st.faults)
        st.faults[:] = [f for f in st.faults if f["id"] != int(mm.group(1))]
        return Resp(200, {"removed": before - len(st.faults)})
    if p == "/requests":
        if m == "GET":
            since = int(ctx.query.get("since", "0"))
            return Resp(200, {"requests": [e for e in st.log if e["seq"] > since], "last": st.log_seq})
        if m == "DELETE":
            st.log.clear()
            return Resp(200, {"cleared": True, "last": st.log_seq})
    if p == "/counts":
        if m == "GET":
            return Resp(200, {"counts": dict(sorted(st.counts.items())),
                              "injected": dict(sorted(st.injected.items()))})
        if m == "DELETE":
            st.counts.clear()
            st.injected.clear()
            return Resp(200, {"cleared": True})
    if p == "/serial-log":
        if m in ("POST", "PUT"):
            doc = control_body(ctx)
            if not isinstance(doc, dict) or not doc.get("vm") or not isinstance(doc.get("text", ""), str):
                raise ControlError(400, "serial-log needs {\"vm\": NAME, \"text\": STR[, \"resourceGroup\", "
                                        "\"append\"]}")
            key = ((doc.get("resourceGroup") or "*").lower(), doc["vm"].lower())
            text = doc.get("text", "")
            if doc.get("append"):
                text = st.serial.get(key, "") + text
            st.serial[key] = text
            return Resp(200, {"vm": doc["vm"], "bytes": len(text.encode())})
        if m == "GET":
            name, rg = ctx.query.get("vm"), ctx.query.get("resourceGroup")
            key = ((rg or "*").lower(), (name or "").lower())
            if key not in st.serial:
                raise ControlError(404, "no serial log set for %s" % name)
            return Resp(200, st.serial[key], ctype="text/plain; charset=utf-8")
        if m == "DELETE":
            name, rg = ctx.query.get("vm"), ctx.query.get("resourceGroup")
            st.serial.pop(((rg or "*").lower(), (name or "").lower()), None)
            return Resp(200, {"removed": True})
    if p == "/custom-data" and m == "GET":
        vm = find_vm(st, ctx.query.get("vm"), ctx.query.get("resourceGroup"), ctx.query.get("subscription"))
        raw = vm.get("custom")
        if raw is None:
            raise ControlError(404, "VM %s has no customData" % vm["name"])
        if ctx.query.get("format") == "raw":
            return Resp(200, raw, ctype="application/octet-stream")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return Resp(200, {"vm": vm["id"], "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                          "base64": base64.b64encode(raw).decode(), "text": text})
    if p == "/state" and m == "GET":
        out = {"subscriptions": sorted(st.subs.values()),
               "resourceGroups": [arm.render_rg(g) for g in st.rgs.values()],
               "resources": [arm.render(r) for r in sorted(st.res.values(), key=lambda r: r["seq"])],
               "images": [im["seed"] for im in st.images],
               "operations": [o.summary() for o in st.ops.values()],
               "serialLogs": ["%s/%s" % k for k in st.serial]}
        return Resp(200, out)
    if p == "/operations" and m == "GET":
        return Resp(200, {"operations": [o.summary() for o in st.ops.values()]})
    if p == "/operations/complete" and m == "POST":
        doc = control_body(ctx) or {}
        pat = re.compile(doc.get("target", ".*"), re.I)
        n = 0
        for o in list(st.ops.values()):
            if o.status == "InProgress" and pat.search(o.target):
                o.complete()
                n += 1
        return Resp(200, {"completed": n})
    if p == "/delete" and m == "POST":
        doc = control_body(ctx)
        rid = doc.get("id") if isinstance(doc, dict) else None
        r = st.get(rid)
        if not r:
            raise ControlError(404, "no resource %s" % rid)
        if r["type"] == VM:
            arm.remove_vm(r)
        else:
            st.res.pop(r["id"].lower(), None)
            for o in st.res.values():
                if o.get("managedBy") and o["managedBy"].lower() == r["id"].lower():
                    o["managedBy"] = None
                if o["type"] == NIC and (o.get("vm") or "").lower() == r["id"].lower():
                    o["vm"] = None
        return Resp(200, {"deleted": r["id"]})
    raise ControlError(404, "unknown control call %s %s" % (m, ctx.path))


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, family, ssl_ctx, state):
        self.address_family = family
        self.ssl_ctx = ssl_ctx
        self.state = state
        self.arm = Arm(state)
        super().__init__(addr, Handler)

    def server_bind(self):  # no getfqdn() reverse lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write("%s TLS handshake with %s failed: %s\n" % (iso(), client_address[0], e))
            return
        try:
            tls.settimeout(Handler.timeout)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)


def parse_listen(s):
    m = re.match(r"^\[?([^\]]+?)\]?:(\d+)$", s)
    if not m:
        raise SystemExit("fake_arm.py: --listen must be HOST:PORT")
    host, port = m.group(1), int(m.group(2))
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise SystemExit("fake_arm.py: --listen host must be 127.0.0.1, ::1 or localhost")
    if str(ip) not in ("127.0.0.1", "::1"):
        raise SystemExit("fake_arm.py: only 127.0.0.1 and ::1 are allowed (the certificate names only those)")
    return str(ip), port, (socket.AF_INET6 if ip.version == 6 else socket.AF_INET)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--state-dir", required=True, help="where the CA and the server certificate live")
    ap.add_argument("--seed", help="JSON seed applied at start and after every reset")
    ap.add_argument("--polls", type=int, default=DEFAULT_CONFIG["pollsBeforeDone"],
                    help="polls answering InProgress before an operation completes (default 2)")
    ap.add_argument("--ready-file", help="also write the ready JSON (plus pid) here; removed on exit")
    args = ap.parse_args()
    host, port, fam = parse_listen(args.listen)
    seed = None
    if args.seed:
        with open(args.seed) as f:
            seed = json.load(f)
    ca, cert, key = ensure_tls(args.state_dir)
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["pollsBeforeDone"] = max(0, args.polls)
    try:
        state = State(cfg, seed)
    except ControlError as e:
        raise SystemExit("fake_arm.py: bad seed %s: %s" % (args.seed, e))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = Server((host, port), fam, ctx, state)
    real_port = srv.server_address[1]
    url = "https://%s:%d" % ("[::1]" if fam == socket.AF_INET6 else host, real_port)
    state.url = url
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    ready = {"url": url, "ca": ca}
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(ready, pid=os.getpid()), f)
        os.replace(tmp, args.ready_file)
    print(json.dumps(ready), flush=True)
    sys.stderr.write("%s fake ARM listening on %s (pid %d, CA %s)\n" % (iso(), url, os.getpid(), ca))
    sys.stderr.flush()
    while not stop.wait(0.5):
        pass
    srv.shutdown()
    srv.server_close()
    if args.ready_file:
        try:
            os.unlink(args.ready_file)
        except OSError:
            pass
    sys.stderr.write("%s fake ARM stopped\n" % iso())
    return 0


if __name__ == "__main__":
    sys.exit(main())
