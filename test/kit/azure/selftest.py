#!/usr/bin/env python3
"""Checks of the fake ARM server with nothing but urllib and ssl, trusting only the
server's own test CA. Run by selftest.sh:

    selftest.py --url https://127.0.0.1:P --ca /path/ca.pem [--shell-passed N --shell-failed M]

Each check prints "ok NAME" or "FAIL NAME: why"; the last line is
"azure kit selftest: N passed, M failed" (N and M include selftest.sh's own checks);
exit 1 if any failed.
"""
import argparse
import base64
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--url", required=True)
ap.add_argument("--ca", required=True)
ap.add_argument("--shell-passed", type=int, default=0)
ap.add_argument("--shell-failed", type=int, default=0)
ARGS = ap.parse_args()

URL = ARGS.url.rstrip("/")
TLS = ssl.create_default_context(cafile=ARGS.ca)  # trusts only the kit's CA
SUB = "aaaaaaaa-0000-4000-8000-000000000001"
RG = "SelfTest-RG"
LOC = "westeurope"
VNET = "st-vnet"
SUBNET_ID = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/virtualNetworks/%s/subnets/st-nodes" % (
    SUB, RG, VNET)
TINY_ID = SUBNET_ID.replace("st-nodes", "st-tiny")
CAPI = ("capwin-test", "capi-windows", "windows-2025")
PASSWORD = "S3lf-Test-P@ss!word-7781"   # must never show up in GET answers or the request log
COMPUTE_API = "2024-07-01"
NETWORK_API = "2024-05-01"
DISK_API = "2024-03-02"

passed, failed = ARGS.shell_passed, ARGS.shell_failed


def case(fn):
    global passed, failed
    t = time.monotonic()
    try:
        fn()
        passed += 1
        print("ok   %-44s %5.2fs" % (fn.__name__, time.monotonic() - t), flush=True)
    except Exception as e:  # noqa: BLE001 - a check fails on anything
        failed += 1
        print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e), flush=True)
    return fn


class R:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, {k.lower(): v for k, v in headers.items()}, raw
        try:
            self.json = json.loads(raw.decode()) if raw else None
        except ValueError:
            self.json = None

    @property
    def code(self):
        return ((self.json or {}).get("error") or {}).get("code") if isinstance(self.json, dict) else None

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:300])


def http(method, url, body=None, headers=None, context=TLS, raw_body=None):
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return R(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return R(e.code, dict(e.headers), e.read())


def arm(method, path, body=None, api=COMPUTE_API, token="selftest-token", headers=None, query=None):
    q = dict(query or {})
    if api:
        q["api-version"] = api
    url = URL + path + ("?" + urllib.parse.urlencode(q) if q else "")
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    return http(method, url, body, h)


def ctl(method, path, body=None):
    r = http(method, URL + "/_capwin" + path, body)
    if r.status != 200:
        raise AssertionError("control %s %s -> %r" % (method, path, r))
    return r.json if r.json is not None else r.raw


def expect(r, status, code=None):
    if r.status != status or (code and r.code != code):
        raise AssertionError("expected %d%s, got %r" % (status, " " + code if code else "", r))
    if code:  # the ARM error envelope, exactly
        err = r.json["error"]
        assert set(r.json) == {"error"} and isinstance(err.get("message"), str) and err["message"], r.json
    return r


def rid(rtype, *names, rg=RG):
    ns, types = rtype.split("/", 1)
    segs = []
    for t, n in zip(types.split("/"), names):
        segs += [t, n]
    return "/subscriptions/%s/resourceGroups/%s/providers/%s/%s" % (SUB, rg, ns, "/".join(segs))


def vm_path(name):
    return rid("Microsoft.Compute/virtualMachines", name)


def nic_path(name):
    return rid("Microsoft.Network/networkInterfaces", name)


def disk_path(name):
    return rid("Microsoft.Compute/disks", name)


def make_nic(name, subnet=SUBNET_ID):
    r = arm("PUT", nic_path(name), {"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": subnet}}}]}}, api=NETWORK_API)
    assert r.status in (200, 201), r
    return r


def vm_body(nic, **kw):
    img = kw.pop("image", {"publisher": CAPI[0], "offer": CAPI[1], "sku": CAPI[2], "version": "1.35.10"})
    os_profile = {"computerName": kw.pop("computer_name", "st-win-01"), "adminUsername": "capi",
                  "adminPassword": kw.pop("password", PASSWORD),
                  "windowsConfiguration": {"enableAutomaticUpdates": False, "provisionVMAgent": True}}
    if "custom_data" in kw:
        os_profile["customData"] = kw.pop("custom_data")
    if "computer_name_absent" in kw:
        kw.pop("computer_name_absent")
        os_profile.pop("computerName")
    body = {
        "location": kw.pop("location", LOC),
        "tags": kw.pop("tags", {"sigs.k8s.io_cluster-api-provider-capwin_cluster_demo": "owned",
                                "capwin.io_role": "node"}),
        "properties": {
            "hardwareProfile": {"vmSize": kw.pop("size", "Standard_D4s_v5")},
            "storageProfile": {"imageReference": img,
                               "osDisk": kw.pop("os_disk", {"createOption": "FromImage", "deleteOption": "Delete",
                                                            "diskSizeGB": 200,
                                                            "managedDisk": {"storageAccountType": "Premium_LRS"}})},
            "osProfile": os_profile,
            "networkProfile": {"networkInterfaces": [{"id": nic_path(nic), "properties": {"primary": True}}]},
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": kw.pop("boot_diag", True)}},
        },
    }
    if kw.pop("zones", True):
        body["zones"] = ["2"]
    ident = kw.pop("identity", True)
    if ident:
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {
            "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/capwin-node"
            % (SUB, RG): {}}}
    assert not kw, kw
    return body


def poll_op(url, want_statuses):
    """GETs an Azure-AsyncOperation URL len(want) times, checking each status."""
    got = []
    for _ in want_statuses:
        r = http("GET", url, headers={"Authorization": "Bearer selftest-token"})
        assert r.status == 200, r
        got.append(r.json["status"])
    assert got == list(want_statuses), "operation statuses %s, expected %s" % (got, list(want_statuses))
    return r.json


def finish(url):
    for _ in range(20):
        r = http("GET", url, headers={"Authorization": "Bearer selftest-token"})
        if r.json["status"] != "InProgress":
            return r.json
    raise AssertionError("operation never finished")


def create_vm(name, nic, **kw):
    make_nic(nic)
    r = arm("PUT", vm_path(name), vm_body(nic, **kw))
    assert r.status == 201, r
    return r, finish(r.headers["azure-asyncoperation"])


def delete_vm(name):
    r = arm("DELETE", vm_path(name))
    if r.status == 202:
        loc = r.headers["location"]
        for _ in range(20):
            p = http("GET", loc, headers={"Authorization": "Bearer selftest-token"})
            if p.status != 202:
                break
    r = arm("GET", vm_path(name))
    assert r.status == 404, r


def log_since(seq):
    return ctl("GET", "/requests?since=%d" % seq)["requests"]


def last_seq():
    return ctl("GET", "/requests?since=999999999")["last"]


# ---------------------------------------------------------------------------------------


@case
def tls_trusts_only_the_kit_ca():
    r = http("GET", URL + "/_capwin/health")
    assert r.status == 200 and r.json["ok"], r
    try:
        urllib.request.urlopen(URL + "/_capwin/health", timeout=10, context=ssl.create_default_context())
        raise AssertionError("the system trust store accepted the kit's certificate")
    except urllib.error.URLError as e:
        assert isinstance(e.reason, ssl.SSLCertVerificationError), e
    # the leaf the server presents: CA:FALSE, SAN IP:127.0.0.1 + DNS:localhost, signed by ca.pem (CA:TRUE)
    host, port = urllib.parse.urlsplit(URL).hostname, urllib.parse.urlsplit(URL).port
    import socket
    with socket.create_connection((host, port), timeout=10) as s, TLS.wrap_socket(s, server_hostname=host) as t:
        der = t.getpeercert(binary_form=True)
        assert t.version() in ("TLSv1.2", "TLSv1.3"), t.version()
    leaf = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der,
                          capture_output=True, check=True).stdout.decode()
    assert "CA:FALSE" in leaf and "IP Address:127.0.0.1" in leaf and "DNS:localhost" in leaf, leaf
    assert "TLS Web Server Authentication" in leaf, leaf
    ca = subprocess.run(["openssl", "x509", "-in", ARGS.ca, "-noout", "-text"], capture_output=True,
                        check=True).stdout.decode()
    assert "CA:TRUE" in ca and "Certificate Sign" in ca, ca
    # localhost works too (same certificate)
    r = http("GET", "https://localhost:%d/_capwin/health" % port)
    assert r.status == 200, r
    # plain HTTP gets no HTTP answer
    try:
        urllib.request.urlopen("http://%s:%d/_capwin/health" % (host, port), timeout=10)
        raise AssertionError("plain HTTP was answered")
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        assert not isinstance(e, urllib.error.HTTPError), e


@case
def default_seed_is_loaded():
    r = expect(arm("GET", "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/capwin-e2e",
                   api="2021-04-01"), 200)
    assert r.json["type"] == "Microsoft.Resources/resourceGroups" and r.json["location"] == "westeurope", r.json


@case
def no_auth_is_401():
    r = expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), token=None), 401,
               "AuthenticationFailed")
    assert "www-authenticate" in r.headers, r.headers
    expect(arm("GET", vm_path("x"), token=None, headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401,
           "AuthenticationFailed")
    expect(arm("GET", vm_path("x"), token=None, headers={"Authorization": "Bearer "}), 401, "AuthenticationFailed")


@case
def missing_api_version_is_400():
    expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), api=None), 400,
           "MissingApiVersionParameter")
    expect(arm("GET", vm_path("x"), api=None), 400, "MissingApiVersionParameter")
    expect(arm("GET", vm_path("x"), api="2024-7-1"), 400, "InvalidApiVersionParameter")


@case
def seed_resource_group_vnet_subnet_image():
    expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), api="2021-04-01"), 404,
           "SubscriptionNotFound")
    out = ctl("POST", "/seed", {
        "subscription": SUB,
        "resourceGroups": [{"name": RG, "location": "West Europe", "tags": {"purpose": "selftest"}}],
        "virtualNetworks": [{"resourceGroup": RG, "name": VNET, "addressPrefixes": ["10.20.0.0/16"],
                             "subnets": [{"name": "st-nodes", "addressPrefix": "10.20.1.0/24"},
                                         {"name": "st-tiny", "addressPrefix": "10.20.2.0/29"}]}],
        "images": [{"publisher": CAPI[0], "offer": CAPI[1], "sku": CAPI[2], "version": v, "osDiskSizeGB": 128}
                   for v in ("1.35.9", "1.35.10", "1.34.13")] + [
            {"communityGalleryImageId": "/CommunityGalleries/capwin-st/Images/win2025/Versions/1.35.10"},
            {"id": rid("Microsoft.Compute/galleries/images/versions", "st_gallery", "win2025", "1.0.0")},
            {"id": rid("Microsoft.Compute/galleries/images/versions", "st_gallery", "win2025", "1.2.0")}]})
    assert out["seeded"]["resourceGroups"] == 1 and out["seeded"]["subnets"] == 2, out
    r = expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG.lower()), api="2021-04-01"), 200)
    assert r.json["name"] == RG and r.json["id"] == "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), r.json
    assert r.json["location"] == "westeurope" and r.json["tags"] == {"purpose": "selftest"}, r.json
    expect(arm("GET", "/subscriptions/%s/resourceGroups/nope" % SUB, api="2021-04-01"), 404,
           "ResourceGroupNotFound")
    expect(arm("GET", rid("Microsoft.Compute/virtualMachines", "x", rg="nope")), 404, "ResourceGroupNotFound")


@case
def subnet_get_case_insensitive_and_not_found():
    path = "/SUBSCRIPTIONS/%s/resourcegroups/%s/providers/microsoft.network/VIRTUALNETWORKS/%s/subnets/ST-NODES" % (
        SUB.upper(), RG.upper(), VNET.upper())
    r = expect(arm("GET", path, api=NETWORK_API), 200)
    assert r.json["id"] == SUBNET_ID and r.json["name"] == "st-nodes", r.json
    assert r.json["properties"]["addressPrefix"] == "10.20.1.0/24", r.json
    assert r.json["type"] == "Microsoft.Network/virtualNetworks/subnets", r.json
    expect(arm("GET", SUBNET_ID.replace("st-nodes", "nope"), api=NETWORK_API), 404, "NotFound")
    expect(arm("GET", SUBNET_ID.replace(VNET, "nope-vnet"), api=NETWORK_API), 404, "ResourceNotFound")
    r = expect(arm("GET", rid("Microsoft.Network/virtualNetworks", VNET), api=NETWORK_API), 200)
    assert [s["name"] for s in r.json["properties"]["subnets"]] == ["st-nodes", "st-tiny"], r.json


@case
def token_endpoint_and_required_token():
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "app-1",
                                   "client_secret": "sekrit-value-123",
                                   "scope": "https://management.azure.com/.default"}).encode()
    ct = {"Content-Type": "application/x-www-form-urlencoded"}
    seq = last_seq()
    r = http("POST", URL + "/tenant-1/oauth2/v2.0/token", raw_body=form, headers=ct)
    assert r.status == 200 and r.json["token_type"] == "Bearer" and r.json["expires_in"] > 3000, r
    assert r.json["access_token"].count(".") == 2, r.json
    bad = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "app-1",
                                  "client_secret": "x", "scope": "https://management.azure.com"}).encode()
    r = http("POST", URL + "/tenant-1/oauth2/v2.0/token", raw_body=bad, headers=ct)
    assert r.status == 400 and r.json["error"] == "invalid_scope", r
    ctl("POST", "/config", {"clients": {"app-1": "right-secret"}, "requiredToken": "the-only-token"})
    try:
        r = http("POST", URL + "/tenant-1/oauth2/v2.0/token", raw_body=form, headers=ct)
        assert r.status == 401 and r.json["error"] == "invalid_client", r
        good = form.replace(b"sekrit-value-123", b"right-secret")
        r = http("POST", URL + "/tenant-1/oauth2/v2.0/token", raw_body=good, headers=ct)
        assert r.status == 200 and r.json["access_token"] == "the-only-token", r
        expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), api="2021-04-01"), 401,
               "InvalidAuthenticationToken")
        expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), api="2021-04-01",
                   token="the-only-token"), 200)
    finally:
        ctl("POST", "/config", {"clients": {}, "requiredToken": None})
    text = json.dumps(log_since(seq))
    assert "sekrit-value-123" not in text and "right-secret" not in text, "client secret in the request log"
    assert "the-only-token" not in text, "a token in the request log"


@case
def nic_put_get_ip_allocation():
    expect(arm("PUT", nic_path("st-nic-bad"), {"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": SUBNET_ID.replace("st-nodes", "nope")}}}]}},
        api=NETWORK_API), 400, "InvalidResourceReference")
    expect(arm("PUT", nic_path("st-nic-bad"), {"location": "eastus", "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": SUBNET_ID}}}]}}, api=NETWORK_API), 400,
        "InvalidResourceReference")
    r = make_nic("St-Nic-A")
    assert r.status == 201 and r.headers["azure-asyncoperation"].startswith(URL + "/"), r.headers
    ip = r.json["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    assert ip == "10.20.1.4", ip
    assert make_nic("st-nic-b").json["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] \
        == "10.20.1.5"
    r = make_nic("st-nic-a")  # update, other casing: same NIC, same IP, created casing kept
    assert r.status == 200 and r.json["name"] == "St-Nic-A", r
    assert r.json["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] == "10.20.1.4", r.json
    r = expect(arm("GET", nic_path("ST-NIC-A"), api=NETWORK_API), 200)
    assert r.json["id"] == nic_path("St-Nic-A") and r.json["location"] == LOC, r.json
    assert r.json["properties"]["provisioningState"] == "Succeeded", r.json
    expect(arm("PUT", nic_path("st-nic-static"), {"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": SUBNET_ID}, "privateIPAllocationMethod": "Static",
                                             "privateIPAddress": "10.20.1.5"}}]}}, api=NETWORK_API), 400,
        "PrivateIPAddressInUse")
    # a /29 has 3 usable addresses (Azure keeps 4 at the start and 1 at the end)
    for i in range(3):
        make_nic("st-tiny-%d" % i, TINY_ID)
    expect(arm("PUT", nic_path("st-tiny-3"), {"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": TINY_ID}}}]}}, api=NETWORK_API), 400, "SubnetIsFull")
    r = expect(arm("GET", TINY_ID, api=NETWORK_API), 200)
    assert len(r.json["properties"]["ipConfigurations"]) == 3, r.json
    for i in range(3):
        assert arm("DELETE", nic_path("st-tiny-%d" % i), api=NETWORK_API).status in (200, 202)
    expect(arm("DELETE", nic_path("st-nic-b"), api=NETWORK_API), 202)
    expect(arm("GET", nic_path("st-nic-b"), api=NETWORK_API), 404, "ResourceNotFound")
    expect(arm("DELETE", nic_path("st-nic-b"), api=NETWORK_API), 204)


@case
def keep_alive_chunked_and_parallel_calls():
    import http.client
    import threading
    u = urllib.parse.urlsplit(URL)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=TLS, timeout=30)
    auth = {"Authorization": "Bearer t"}
    body = json.dumps({"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": SUBNET_ID}}}]}}).encode()

    def chunks():
        yield body[:10]
        yield body[10:]
    seen = []
    for method, path, data in (("GET", nic_path("st-nic-a"), None), ("DELETE", nic_path("no-such"), None),
                               ("PUT", nic_path("st-chunked"), chunks()), ("DELETE", nic_path("st-chunked"), None),
                               ("GET", nic_path("st-nic-a"), None)):
        h = dict(auth)
        if data is not None:
            h["Content-Type"] = "application/json"
        conn.request(method, path + "?api-version=" + NETWORK_API, body=data, headers=h,
                     encode_chunked=data is not None)
        r = conn.getresponse()
        r.read()
        seen.append(r.status)
    assert seen == [200, 204, 201, 202, 200], seen
    assert conn.sock is not None, "the connection was not kept alive"
    conn.close()
    # 16 NIC PUTs at once: 16 distinct addresses
    results, errors = {}, []

    def one(i):
        try:
            r = make_nic("st-par-%02d" % i)
            results[i] = r.json["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(set(results.values())) == 16, (errors, results)
    for i in range(16):
        expect(arm("DELETE", nic_path("st-par-%02d" % i), api=NETWORK_API), 202)


@case
def vm_create_lro_disk_and_echoes():
    seq = last_seq()
    cd = b"<powershell>Write-Host capwin</powershell>\r\n" * 10
    body = vm_body("St-Nic-A", custom_data=base64.b64encode(cd).decode())
    r = arm("PUT", vm_path("St-Win-01"), body)
    expect(r, 201)
    aop = r.headers.get("azure-asyncoperation", "")
    assert aop.startswith(URL + "/subscriptions/%s/providers/Microsoft.Compute/locations/westeurope/operations/"
                          % SUB) and "api-version=" + COMPUTE_API in aop, aop
    assert r.json["properties"]["provisioningState"] == "Creating", r.json
    assert "adminPassword" not in r.json["properties"]["osProfile"], r.json
    assert "customData" not in r.json["properties"]["osProfile"], r.json
    poll_op(aop, ["InProgress", "InProgress", "Succeeded"])
    done = http("GET", aop, headers={"Authorization": "Bearer selftest-token"}).json
    assert done["status"] == "Succeeded" and "endTime" in done and "startTime" in done, done
    r = expect(arm("GET", vm_path("st-win-01")), 200)
    vm = r.json
    p = vm["properties"]
    assert vm["id"] == vm_path("St-Win-01") and vm["name"] == "St-Win-01", vm
    assert vm["type"] == "Microsoft.Compute/virtualMachines" and vm["location"] == LOC, vm
    assert p["provisioningState"] == "Succeeded", p
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", p["vmId"]), p["vmId"]
    assert vm["tags"] == body["tags"] and vm["zones"] == ["2"], vm
    uai = vm["identity"]["userAssignedIdentities"]
    assert vm["identity"]["type"] == "UserAssigned" and len(uai) == 1, vm["identity"]
    assert all(v["principalId"] and v["clientId"] for v in uai.values()), uai
    assert p["osProfile"]["windowsConfiguration"]["enableAutomaticUpdates"] is False, p["osProfile"]
    assert p["osProfile"]["computerName"] == "st-win-01" and "adminPassword" not in p["osProfile"], p
    assert p["diagnosticsProfile"]["bootDiagnostics"]["enabled"] is True, p
    assert p["storageProfile"]["imageReference"]["exactVersion"] == "1.35.10", p["storageProfile"]
    od = p["storageProfile"]["osDisk"]
    assert re.match(r"^St-Win-01_OsDisk_1_[0-9a-f]{32}$", od["name"]), od
    assert od["deleteOption"] == "Delete" and od["diskSizeGB"] == 200 and od["osType"] == "Windows", od
    assert od["managedDisk"]["storageAccountType"] == "Premium_LRS", od
    assert od["managedDisk"]["id"] == disk_path(od["name"]), od
    d = expect(arm("GET", disk_path(od["name"]), api=DISK_API), 200).json
    assert d["managedBy"].lower() == vm["id"].lower(), d
    assert d["type"] == "Microsoft.Compute/disks" and d["sku"]["name"] == "Premium_LRS", d
    assert d["properties"]["diskSizeGB"] == 200 and d["properties"]["diskState"] == "Attached", d
    assert d["zones"] == ["2"], d
    nic = expect(arm("GET", nic_path("st-nic-a"), api=NETWORK_API), 200).json
    assert nic["properties"]["virtualMachine"]["id"].lower() == vm["id"].lower(), nic
    assert re.match(r"^00-0D-3A(-[0-9A-F]{2}){3}$", nic["properties"]["macAddress"]), nic
    iv = expect(arm("GET", vm_path("st-win-01"), query={"$expand": "instanceView"}), 200).json
    codes = [s["code"] for s in iv["properties"]["instanceView"]["statuses"]]
    assert codes == ["ProvisioningState/succeeded", "PowerState/running"], codes
    got = ctl("GET", "/custom-data?vm=st-win-01")
    assert base64.b64decode(got["base64"]) == cd and got["bytes"] == len(cd), got
    # the password: nowhere in answers, state dump or request log (the log keeps a redacted body)
    entries = log_since(seq)
    put = [e for e in entries if e["method"] == "PUT" and e["type"] == "Microsoft.Compute/virtualMachines"]
    assert put and put[0]["apiVersion"] == COMPUTE_API and put[0]["status"] == 201, put
    assert put[0]["body"]["properties"]["osProfile"]["adminPassword"].startswith("<redacted"), put[0]
    assert put[0]["body"]["properties"]["osProfile"]["customData"].startswith("<redacted"), put[0]
    polls = [e for e in entries if e["type"] == "Microsoft.Compute/locations/operations"]
    assert len(polls) >= 3 and all(e["apiVersion"] == COMPUTE_API for e in polls), polls
    for where, text in (("request log", json.dumps(entries)), ("GET", json.dumps(vm)),
                        ("state dump", json.dumps(ctl("GET", "/state")))):
        assert PASSWORD not in text, "adminPassword found in the %s" % where


@case
def vm_put_again_is_update_and_immutables_409():
    body = vm_body("St-Nic-A")
    body["tags"]["extra"] = "1"
    r = expect(arm("PUT", vm_path("st-win-01"), body), 200)
    assert r.json["properties"]["provisioningState"] == "Updating" and r.json["tags"]["extra"] == "1", r.json
    finish(r.headers["azure-asyncoperation"])
    assert arm("GET", vm_path("st-win-01")).json["properties"]["provisioningState"] == "Succeeded"
    body["properties"]["osProfile"]["computerName"] = "other-name"
    r = expect(arm("PUT", vm_path("st-win-01"), body), 409, "PropertyChangeNotAllowed")
    body = vm_body("St-Nic-A", image={"publisher": CAPI[0], "offer": CAPI[1], "sku": CAPI[2], "version": "1.35.9"})
    expect(arm("PUT", vm_path("st-win-01"), body), 409, "PropertyChangeNotAllowed")
    expect(arm("PUT", vm_path("st-win-01"), vm_body("St-Nic-A"), headers={"If-None-Match": "*"}), 412,
           "PreconditionFailed")


@case
def vm_bad_image_sync_404_no_vm():
    make_nic("st-nic-img")
    img = {"publisher": CAPI[0], "offer": CAPI[1], "sku": CAPI[2], "version": "9.9.9"}
    r = expect(arm("PUT", vm_path("st-img"), vm_body("st-nic-img", image=img, computer_name="st-img")), 404,
               "PlatformImageNotFound")
    assert r.json["error"]["target"] == "imageReference", r.json
    expect(arm("GET", vm_path("st-img")), 404, "ResourceNotFound")
    gal = {"id": rid("Microsoft.Compute/galleries/images/versions", "st_gallery", "win2025", "7.0.0")}
    expect(arm("PUT", vm_path("st-img"), vm_body("st-nic-img", image=gal, computer_name="st-img")), 404,
           "ImageNotFound")
    nic = arm("GET", nic_path("st-nic-img"), api=NETWORK_API).json
    assert "virtualMachine" not in nic["properties"], nic


@case
def vm_bad_image_async_mode_operation_failed():
    ctl("POST", "/config", {"imageNotFound": "async"})
    try:
        img = {"publisher": CAPI[0], "offer": CAPI[1], "sku": "no-such-sku", "version": "latest"}
        r = expect(arm("PUT", vm_path("st-img"), vm_body("st-nic-img", image=img, computer_name="st-img")), 201)
        doc = poll_op(r.headers["azure-asyncoperation"], ["InProgress", "InProgress", "Failed"])
        assert doc["error"]["code"] == "PlatformImageNotFound", doc
        vm = expect(arm("GET", vm_path("st-img"), query={"$expand": "instanceView"}), 200).json
        assert vm["properties"]["provisioningState"] == "Failed", vm
        assert vm["properties"]["instanceView"]["statuses"][0]["code"] == \
            "ProvisioningState/failed/PlatformImageNotFound", vm["properties"]["instanceView"]
        disks = [x for x in ctl("GET", "/state")["resources"] if x["type"] == "Microsoft.Compute/disks"
                 and x["name"].startswith("st-img_")]
        assert not disks, disks
    finally:
        ctl("POST", "/config", {"imageNotFound": "sync"})
    delete_vm("st-img")


@case
def vm_image_latest_community_and_gallery_definition():
    for n, img, want in (
            ("st-latest", {"publisher": CAPI[0], "offer": CAPI[1], "sku": CAPI[2], "version": "latest"}, "1.35.10"),
            ("st-comm", {"communityGalleryImageId": "/CommunityGalleries/capwin-st/Images/win2025/Versions/latest"},
             None),
            ("st-gal", {"id": rid("Microsoft.Compute/galleries/images", "st_gallery", "win2025")}, None)):
        disk = {"name": n + "-osdisk", "deleteOption": "Delete"} if n == "st-gal" else None
        r, op = create_vm(n, n + "-nic", image=img, computer_name=n, zones=False, identity=False,
                          **({"os_disk": disk} if disk else {}))
        assert op["status"] == "Succeeded", op
        vm = arm("GET", vm_path(n)).json
        if want:
            assert vm["properties"]["storageProfile"]["imageReference"]["exactVersion"] == want, vm
        disk = arm("GET", disk_path(vm["properties"]["storageProfile"]["osDisk"]["name"]), api=DISK_API).json
        cd = disk["properties"]["creationData"]
        if n == "st-gal":
            assert cd["galleryImageReference"]["id"].endswith("/versions/1.2.0"), cd
            assert disk["name"] == "st-gal-osdisk" and disk["managedBy"].lower() == vm["id"].lower(), disk
            # 127 GB: the gallery image's default size
            assert disk["properties"]["diskSizeGB"] == 127 and disk["sku"]["name"] == "Premium_LRS", disk
        if n == "st-comm":
            assert cd["galleryImageReference"]["communityGalleryImageId"].endswith("/Versions/1.35.10"), cd
        delete_vm(n)
        expect(arm("DELETE", nic_path(n + "-nic"), api=NETWORK_API), 202)


@case
def computer_name_too_long_is_400():
    r = expect(arm("PUT", vm_path("st-cn"), vm_body("st-nic-img", computer_name="a-very-long-name16")), 400,
               "InvalidParameter")
    assert r.json["error"]["target"] == "computerName", r.json
    # no computerName: ARM uses the VM name, 16 characters here
    expect(arm("PUT", vm_path("st-sixteen-chars"), vm_body("st-nic-img", computer_name_absent=True)), 400,
           "InvalidParameter")
    expect(arm("PUT", vm_path("st-cn"), vm_body("st-nic-img", computer_name="12345")), 400, "InvalidParameter")
    expect(arm("GET", vm_path("st-cn")), 404, "ResourceNotFound")


@case
def custom_data_limits():
    too_big = base64.b64encode(b"x" * 65536).decode()
    r = expect(arm("PUT", vm_path("st-cd"), vm_body("st-nic-img", computer_name="st-cd", custom_data=too_big)),
               400, "InvalidParameter")
    assert r.json["error"]["target"] == "customData", r.json
    expect(arm("PUT", vm_path("st-cd"), vm_body("st-nic-img", computer_name="st-cd", custom_data="not base64!")),
           400, "InvalidParameter")
    just = bytes(range(256)) * 255 + b"\x00" * 255  # 65535 bytes, binary
    assert len(just) == 65535
    r = expect(arm("PUT", vm_path("st-cd"), vm_body("st-nic-img", computer_name="st-cd", zones=False,
                                                    custom_data=base64.b64encode(just).decode())), 201)
    finish(r.headers["azure-asyncoperation"])
    got = ctl("GET", "/custom-data?vm=st-cd")
    assert got["bytes"] == 65535 and got["text"] is None and base64.b64decode(got["base64"]) == just, got["bytes"]
    raw = http("GET", URL + "/_capwin/custom-data?vm=st-cd&format=raw")
    assert raw.raw == just
    delete_vm("st-cd")


@case
def vm_validation_errors():
    def put(**kw):
        return arm("PUT", vm_path("st-val"), vm_body("st-nic-img", computer_name="st-val", **kw))
    r = expect(put(size="Standard_Nope_v9"), 400, "InvalidParameter")
    assert r.json["error"]["target"] == "vmSize", r.json
    r = expect(put(password="short1!"), 400, "InvalidParameter")
    assert r.json["error"]["target"] == "adminPassword" and "short1!" not in r.raw.decode(), r.json
    expect(put(password="alllowercaseletters"), 400, "InvalidParameter")
    b = vm_body("st-nic-img", computer_name="st-val")
    b["properties"]["osProfile"]["adminUsername"] = "admin"
    expect(arm("PUT", vm_path("st-val"), b), 400, "InvalidParameter")
    expect(put(tags={"sigs.k8s.io/cluster-api-provider-capwin/cluster/demo": "owned"}), 400,
           "InvalidTagNameCharacters")
    b = vm_body("st-nic-img", computer_name="st-val")
    del b["location"]
    expect(arm("PUT", vm_path("st-val"), b), 400, "LocationRequired")
    expect(put(size="Standard_D2_v3"), 400, "BadRequest")  # Premium_LRS on a non-premium size
    expect(put(os_disk={"diskSizeGB": 64, "managedDisk": {"storageAccountType": "Premium_LRS"}}), 409,
           "OperationNotAllowed")  # smaller than the image's 128 GB
    b = vm_body("st-nic-img", computer_name="st-val")
    b["properties"]["networkProfile"]["networkInterfaces"][0]["id"] = nic_path("no-such-nic")
    expect(arm("PUT", vm_path("st-val"), b), 400, "InvalidResourceReference")
    expect(http("PUT", URL + vm_path("st-val") + "?api-version=" + COMPUTE_API, raw_body=b"{not json",
                headers={"Authorization": "Bearer t", "Content-Type": "application/json"}), 400,
           "InvalidRequestContent")
    expect(arm("GET", vm_path("st-val")), 404, "ResourceNotFound")


@case
def throttle_429_retry_after_then_success():
    before = ctl("GET", "/counts")
    ctl("POST", "/faults", {"method": "GET", "path": r"/virtualMachines/st-win-01$", "times": 2, "status": 429})
    t = time.monotonic()
    statuses = []
    for _ in range(5):
        r = arm("GET", vm_path("st-win-01"))
        statuses.append(r.status)
        if r.status != 429:
            break
        assert r.code == "TooManyRequests" and r.headers.get("retry-after") == "1", r
        assert r.headers.get("x-ms-ratelimit-remaining-subscription-reads") == "0", r.headers
        time.sleep(int(r.headers["retry-after"]))
    assert statuses == [429, 429, 200], statuses
    assert time.monotonic() - t >= 2.0
    after = ctl("GET", "/counts")
    k = "GET Microsoft.Compute/virtualMachines"
    assert after["counts"][k] - before["counts"].get(k, 0) == 3, (before, after)
    assert after["injected"][k] - before["injected"].get(k, 0) == 2, (before, after)
    assert ctl("GET", "/faults")["faults"] == []


@case
def faults_503_and_500_after_the_fact():
    ctl("POST", "/faults", {"method": "GET", "path": "networkInterfaces/st-nic-a$", "status": 503})
    r = expect(arm("GET", nic_path("st-nic-a"), api=NETWORK_API), 503, "ServiceUnavailable")
    expect(arm("GET", nic_path("st-nic-a"), api=NETWORK_API), 200)
    ctl("POST", "/faults", {"method": "PUT", "path": "networkInterfaces/st-nic-late$", "status": 500,
                            "when": "after"})
    r = arm("PUT", nic_path("st-nic-late"), {"location": LOC, "properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {"subnet": {"id": SUBNET_ID}}}]}}, api=NETWORK_API)
    expect(r, 500, "InternalServerError")
    expect(arm("GET", nic_path("st-nic-late"), api=NETWORK_API), 200)  # it did take effect
    expect(arm("DELETE", nic_path("st-nic-late"), api=NETWORK_API), 202)
    e = [x for x in ctl("GET", "/requests")["requests"] if x["injected"]]
    assert {x["status"] for x in e[-2:]} == {503, 500}, e[-2:]


@case
def operation_failure_injection_then_retry():
    make_nic("st-osp-nic")
    ctl("POST", "/faults", {"method": "PUT", "path": "virtualMachines/st-osp$",
                            "operationFailure": {"code": "OSProvisioningTimedOut"}})
    r = expect(arm("PUT", vm_path("st-osp"), vm_body("st-osp-nic", computer_name="st-osp", zones=False)), 201)
    doc = finish(r.headers["azure-asyncoperation"])
    assert doc["status"] == "Failed" and doc["error"]["code"] == "OSProvisioningTimedOut", doc
    assert "st-osp" in doc["error"]["message"], doc
    assert arm("GET", vm_path("st-osp")).json["properties"]["provisioningState"] == "Failed"
    r = expect(arm("PUT", vm_path("st-osp"), vm_body("st-osp-nic", computer_name="st-osp", zones=False)), 200)
    assert finish(r.headers["azure-asyncoperation"])["status"] == "Succeeded"
    assert arm("GET", vm_path("st-osp")).json["properties"]["provisioningState"] == "Succeeded"
    delete_vm("st-osp")


@case
def delete_while_creating_preempts_create():
    make_nic("st-pre-nic")
    r = expect(arm("PUT", vm_path("st-pre"), vm_body("st-pre-nic", computer_name="st-pre", zones=False)), 201)
    create_op = r.headers["azure-asyncoperation"]
    expect(arm("DELETE", vm_path("st-pre")), 202)
    doc = http("GET", create_op, headers={"Authorization": "Bearer t"}).json
    assert doc["status"] == "Canceled" and doc["error"]["code"] == "OperationPreempted", doc
    delete_vm("st-pre")


@case
def boot_diagnostics_serial_log():
    line = 'CAPWIN-BOOTSTRAP {"step":"join","status":"failed","message":"kubelet could not reach the API server"}'
    ctl("POST", "/serial-log", {"vm": "st-win-01", "text": "Windows boot\r\n" + line + "\r\n"})
    r = expect(arm("POST", vm_path("st-win-01") + "/retrieveBootDiagnosticsData",
                   query={"sasUriExpirationTimeInMinutes": "60"}), 200)
    uri = r.json["serialConsoleLogBlobUri"]
    assert uri.startswith(URL + "/") and "sig=" in uri and "consoleScreenshotBlobUri" in r.json, r.json
    b = http("GET", uri)
    assert b.status == 200 and line in b.raw.decode(), b
    assert b.headers["x-ms-blob-type"] == "BlockBlob", b.headers
    part = http("GET", uri, headers={"Range": "bytes=0-11"})
    assert part.status == 206 and part.raw == b"Windows boot", part
    assert http("GET", uri, headers={"Authorization": "Bearer selftest-token"}).status == 403
    assert http("GET", uri.replace("sig=", "sig=AA")).status == 403
    ctl("POST", "/serial-log", {"vm": "st-win-01", "text": "more\r\n", "append": True})
    assert http("GET", uri).raw.decode().endswith(line + "\r\nmore\r\n")
    assert http("GET", r.json["consoleScreenshotBlobUri"]).status == 404
    # boot diagnostics off: the call is refused
    make_nic("st-nodiag-nic")
    r = expect(arm("PUT", vm_path("st-nodiag"), vm_body("st-nodiag-nic", computer_name="st-nodiag",
                                                        boot_diag=False, zones=False)), 201)
    expect(arm("POST", vm_path("st-nodiag") + "/retrieveBootDiagnosticsData"), 409, "OperationNotAllowed")


@case
def nic_in_use_then_vm_delete_lro_disk_gone_nic_free():
    expect(arm("DELETE", nic_path("st-nic-a"), api=NETWORK_API), 400, "NicInUse")
    disk_name = arm("GET", vm_path("st-win-01")).json["properties"]["storageProfile"]["osDisk"]["name"]
    r = expect(arm("DELETE", vm_path("st-win-01"), query={"forceDeletion": "false"}), 202)
    loc = r.headers.get("location", "")
    assert loc.startswith(URL + "/subscriptions/%s/providers/Microsoft.Compute/locations/westeurope/operations/"
                          % SUB) and "monitor=true" in loc, r.headers
    assert r.headers.get("azure-asyncoperation", "").startswith(URL + "/"), r.headers
    got = []
    for _ in range(10):
        p = http("GET", loc, headers={"Authorization": "Bearer selftest-token"})
        got.append(p.status)
        if p.status == 202:
            assert p.headers.get("retry-after") == "0", p.headers
            continue
        break
    assert got == [202, 202, 200], got
    expect(arm("GET", vm_path("st-win-01")), 404, "ResourceNotFound")
    expect(arm("GET", disk_path(disk_name), api=DISK_API), 404, "ResourceNotFound")
    nic = expect(arm("GET", nic_path("st-nic-a"), api=NETWORK_API), 200).json
    assert "virtualMachine" not in nic["properties"], nic
    expect(arm("DELETE", nic_path("st-nic-a"), api=NETWORK_API), 202)
    expect(arm("GET", nic_path("st-nic-a"), api=NETWORK_API), 404, "ResourceNotFound")
    expect(arm("DELETE", vm_path("st-win-01")), 204)


@case
def disk_detached_by_default_then_deleted():
    _, op = create_vm("st-keep", "st-keep-nic", computer_name="st-keep", zones=False,
                      os_disk={"managedDisk": {"storageAccountType": "StandardSSD_LRS"}})
    vm = arm("GET", vm_path("st-keep")).json
    od = vm["properties"]["storageProfile"]["osDisk"]
    assert od["deleteOption"] == "Detach" and od["diskSizeGB"] == 128, od
    expect(arm("DELETE", disk_path(od["name"]), api=DISK_API), 409, "OperationNotAllowed")
    delete_vm("st-keep")
    d = expect(arm("GET", disk_path(od["name"]), api=DISK_API), 200).json
    assert "managedBy" not in d and d["properties"]["diskState"] == "Unattached", d
    r = expect(arm("DELETE", disk_path(od["name"]), api=DISK_API), 202)
    for _ in range(10):
        if http("GET", r.headers["location"], headers={"Authorization": "Bearer t"}).status != 202:
            break
    expect(arm("GET", disk_path(od["name"]), api=DISK_API), 404, "ResourceNotFound")


@case
def list_paging_and_marketplace_versions():
    ctl("POST", "/config", {"listPageSize": 1})
    try:
        make_nic("st-l2-nic")
        create_vm("st-l2", "st-l2b-nic", computer_name="st-l2", zones=False)
        names = []
        url = URL + rid("Microsoft.Compute/virtualMachines", "").rstrip("/") + "?api-version=" + COMPUTE_API
        pages = 0
        while url:
            r = http("GET", url, headers={"Authorization": "Bearer t"})
            assert r.status == 200, r
            names += [v["name"] for v in r.json["value"]]
            url = r.json.get("nextLink")
            pages += 1
        assert pages >= 2 and "st-l2" in names and "st-nodiag" in names, (pages, names)
    finally:
        ctl("POST", "/config", {"listPageSize": 100})
    base = ("/subscriptions/%s/providers/Microsoft.Compute/locations/westeurope/publishers/%s/artifacttypes/vmimage/"
            "offers/%s/skus/%s/versions" % (SUB, CAPI[0], CAPI[1], CAPI[2]))
    r = expect(arm("GET", base), 200)
    assert [v["name"] for v in r.json] == ["1.34.13", "1.35.9", "1.35.10"], r.json
    r = expect(arm("GET", base, query={"$orderby": "name desc", "$top": "1"}), 200)
    assert [v["name"] for v in r.json] == ["1.35.10"], r.json
    r = expect(arm("GET", base + "/1.35.9"), 200)
    assert r.json["properties"]["osDiskImage"]["operatingSystem"] == "Windows", r.json
    expect(arm("GET", base + "/0.0.1"), 404, "NotFound")


@case
def counts_and_request_log_shape():
    c = ctl("GET", "/counts")["counts"]
    for k in ("PUT Microsoft.Compute/virtualMachines", "DELETE Microsoft.Compute/virtualMachines",
              "GET Microsoft.Compute/locations/operations", "PUT Microsoft.Network/networkInterfaces",
              "POST Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData", "GET blob",
              "POST oauth2/token", "GET Microsoft.Network/virtualNetworks/subnets"):
        assert c.get(k, 0) >= 1, (k, c)
    e = ctl("GET", "/requests")["requests"][-1]
    for k in ("seq", "time", "method", "path", "apiVersion", "type", "status", "injected"):
        assert k in e, e


@case
def reset_wipes_state_seed_comes_back():
    ctl("POST", "/faults", {"path": "never-matches", "status": 500, "times": -1})
    ctl("POST", "/config", {"pollsBeforeDone": 7})
    assert ctl("POST", "/reset")["reset"] is True
    expect(arm("GET", "/subscriptions/%s/resourceGroups/%s" % (SUB, RG), api="2021-04-01"), 404,
           "SubscriptionNotFound")
    expect(arm("GET", "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/capwin-e2e",
               api="2021-04-01"), 200)
    assert ctl("GET", "/faults")["faults"] == []
    assert ctl("GET", "/config")["pollsBeforeDone"] == 2
    st = ctl("GET", "/state")
    assert not [r for r in st["resources"] if r["type"] in ("Microsoft.Compute/virtualMachines",
                                                            "Microsoft.Network/networkInterfaces",
                                                            "Microsoft.Compute/disks")], st
    assert st["operations"] == [] and st["serialLogs"] == [], st
    req = ctl("GET", "/requests")["requests"]
    assert len(req) == 2, req  # just the two GETs above
    assert ctl("GET", "/counts")["counts"] == {"GET Microsoft.Resources/resourceGroups": 2}


print("azure kit selftest: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
