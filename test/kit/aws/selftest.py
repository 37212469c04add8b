#!/usr/bin/env python3
"""Checks of the local EC2 kit with boto3: moto (with our amis.json) and
throttle_proxy.py in front of it. Run by selftest.sh:

    selftest.py --moto http://127.0.0.1:M --proxy http://127.0.0.1:P

Each check prints "ok NAME" or "FAIL NAME: why"; the last line is
"aws kit selftest: N passed, M failed"; exit 1 if any failed.
"""
import argparse
import base64
import gzip
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import boto3
import botocore.exceptions
from botocore.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
OWNER = "123456789012"  # moto's default account: what Owners=["self"] means for the kit's credentials
OTHER_OWNER = "111122223333"
CLUSTER_TAG = "sigs.k8s.io/cluster-api-provider-capwin/cluster/demo"
OTHER_CLUSTER_TAG = "sigs.k8s.io/cluster-api-provider-capwin/cluster/other"
ROLE_TAG = "capwin.io/role"
REGION = "us-west-2"

ap = argparse.ArgumentParser()
ap.add_argument("--moto", required=True)
ap.add_argument("--proxy", required=True)
ARGS = ap.parse_args()

with open(os.path.join(HERE, "amis.json")) as f:
    CATALOGUE = json.load(f)

passed, failed = 0, 0


def case(fn):
    global passed, failed
    t = time.monotonic()
    try:
        fn()
        passed += 1
        print("ok   %-45s %5.2fs" % (fn.__name__, time.monotonic() - t), flush=True)
    except Exception as e:  # noqa: BLE001 - a check fails on anything
        failed += 1
        print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e), flush=True)
    return fn


def client(url=None, region=REGION, **cfg):
    # Fake credentials: moto does not check signatures, but it needs the SigV4
    # Authorization header to route the request to EC2.
    cfg.setdefault("retries", {"mode": "standard", "total_max_attempts": 3})
    return boto3.client("ec2", endpoint_url=url or ARGS.moto, region_name=region,
                        aws_access_key_id="AKIDCAPWINKIT", aws_secret_access_key="kit",
                        config=Config(**cfg))


EC2 = client()


def error_code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]
    raise AssertionError("no error")


def http_call(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def control(method, path, obj=None):
    body = None if obj is None else json.dumps(obj).encode()
    status, _, data = http_call(method, ARGS.proxy + "/_capwin/" + path, body,
                                {"Content-Type": "application/json"})
    return status, json.loads(data)


def arm(**spec):
    status, out = control("POST", "arm", spec)
    assert status == 200, (status, out)
    return out["armed"]


def stats():
    return control("GET", "stats")[1]


def reset_moto():
    status, _, _ = http_call("POST", ARGS.moto + "/moto-api/reset", b"")
    assert status == 200, status


def windows_images(pattern, owners=(OWNER,), platform=True, ec2=None):
    filters = [{"Name": "name", "Values": [pattern]}]
    if platform:
        filters.append({"Name": "platform", "Values": ["windows"]})
    kw = {"Owners": list(owners)} if owners else {}
    imgs = (ec2 or EC2).describe_images(Filters=filters, **kw)["Images"]
    # DescribeImages has no order: newest first is the caller's job (CreationDate
    # is ISO 8601 UTC with a fixed format, so it sorts as a string).
    return sorted(imgs, key=lambda i: i["CreationDate"], reverse=True)


def name_of(e):
    return e["Name"] if "Name" in e else e["name"]


def run_windows(ami, tags, user_data=b"", count=1, **kw):
    return EC2.run_instances(
        ImageId=ami, MinCount=count, MaxCount=count, InstanceType="m5.large",
        UserData=user_data,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]},
                           {"ResourceType": "volume",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        **kw)["Instances"]


def newest(base_os, version_glob):
    imgs = windows_images("capa-ami-%s-%s-*" % (base_os, version_glob))
    assert imgs, (base_os, version_glob)
    return imgs[0]


# ---------------------------------------------------------------- AMIs ----

@case
def amis_catalogue_loaded_in_every_region():
    want = {e["ami_id"] for e in CATALOGUE}
    for region in ("us-east-1", REGION, "eu-central-1"):
        got = {i["ImageId"] for i in client(region=region).describe_images()["Images"]}
        assert got == want, (region, sorted(got ^ want)[:5])
    ours = EC2.describe_images(Owners=[OWNER])["Images"]
    assert len(ours) == len(CATALOGUE) - 1, len(ours)


@case
def amis_filter_owner_name_platform_v134_on_2025():
    imgs = windows_images("capa-ami-windows-2025-v1.34.*")
    assert [i["Name"] for i in imgs] == [
        "capa-ami-windows-2025-v1.34.13-1794474600",
        "capa-ami-windows-2025-v1.34.13-1792055400",
        "capa-ami-windows-2025-v1.34.12-1789031400",
    ], [i["Name"] for i in imgs]
    i = imgs[0]
    assert (i["OwnerId"], i["Platform"], i["State"], i["Architecture"], i["RootDeviceName"],
            i["CreationDate"], i["BootMode"]) == \
        (OWNER, "windows", "available", "x86_64", "/dev/sda1",
         "2026-11-12T09:57:00.000Z", "uefi-preferred"), i


@case
def amis_newest_first_per_windows_version_and_minor():
    for base_os in ("windows-2019", "windows-2022", "windows-2025"):
        for minor in range(32, 38):
            imgs = windows_images("capa-ami-%s-v1.%d.*" % (base_os, minor))
            expect = sorted((e for e in CATALOGUE if e["owner_id"] == OWNER
                             and e.get("platform") == "windows"
                             and e["name"].startswith("capa-ami-%s-v1.%d." % (base_os, minor))),
                            key=lambda e: e["creation_date"], reverse=True)
            assert len(imgs) >= 2, (base_os, minor, len(imgs))
            assert [i["ImageId"] for i in imgs] == [e["ami_id"] for e in expect], (base_os, minor)
            assert all(i["Name"].startswith("capa-ami-%s-v1.%d." % (base_os, minor))
                       for i in imgs)
    # v1.35.10 is newer than v1.35.9 but sorts before it by name.
    for base_os in ("windows-2019", "windows-2022", "windows-2025"):
        imgs = windows_images("capa-ami-%s-v1.35.*" % base_os)
        assert imgs[0]["Name"].startswith("capa-ami-%s-v1.35.10-" % base_os), imgs[0]["Name"]
        by_name = sorted(imgs, key=lambda i: i["Name"], reverse=True)
        assert by_name[0]["Name"].startswith("capa-ami-%s-v1.35.9-" % base_os)


@case
def amis_two_builds_of_one_version_newest_wins():
    imgs = windows_images("capa-ami-windows-2022-v1.37.2-*")
    assert [i["Name"] for i in imgs] == ["capa-ami-windows-2022-v1.37.2-1795089900",
                                         "capa-ami-windows-2022-v1.37.2-1794485100"], imgs
    assert newest("windows-2019", "v1.34.13")["Name"] == \
        "capa-ami-windows-2019-v1.34.13-1794474000"


@case
def amis_owner_filter_matters():
    pattern = "capa-ami-windows-2025-v1.34.13-*"
    anyone = windows_images(pattern, owners=())
    assert len(anyone) == 3 and anyone[0]["OwnerId"] == OTHER_OWNER, \
        [(i["Name"], i["OwnerId"]) for i in anyone]
    ours = windows_images(pattern)
    assert len(ours) == 2 and {i["OwnerId"] for i in ours} == {OWNER}, ours
    other = windows_images(pattern, owners=(OTHER_OWNER,))
    assert len(other) == 1, other
    # the owner-id filter works like Owners=
    f = EC2.describe_images(Filters=[{"Name": "owner-id", "Values": [OWNER]},
                                     {"Name": "name", "Values": [pattern]}])["Images"]
    assert len(f) == 2, f


@case
def amis_self_owner_alias_finds_the_accounts_own_images():
    # capwin's default look-up (controllers/aws/src/model.rs): Owners=["self"] and CAPA's
    # pattern with `?` standing for the `v` of the version; the impostor (another account,
    # newer) is never found.
    pattern = "capa-ami-windows-2019-?1.34.13-*"
    got = windows_images(pattern, owners=("self",))
    assert [i["Name"] for i in got] == ["capa-ami-windows-2019-v1.34.13-1794474000",
                                        "capa-ami-windows-2019-v1.34.13-1792054800"], got
    assert {i["OwnerId"] for i in windows_images("capa-ami-windows-2025-?1.34.13-*", owners=("self",))} == {OWNER}


@case
def amis_platform_filter_matters():
    pattern = "capa-ami-*-v1.34.13-*"
    all_os = windows_images(pattern, platform=False)
    win = windows_images(pattern)
    assert len(all_os) == 7 and len(win) == 6, (len(all_os), len(win))
    linux = [i for i in all_os if i not in win]
    assert [i["Name"] for i in linux] == ["capa-ami-ubuntu-24.04-v1.34.13-1794475800"], linux
    assert "Platform" not in linux[0], linux[0]


@case
def amis_question_mark_wildcard_and_case_sensitivity():
    imgs = windows_images("capa-ami-windows-20??-v1.36.6-*")
    assert len(imgs) == 3, len(imgs)
    assert windows_images("CAPA-ami-windows-2025-v1.36.6-*") == []


@case
def amis_moto_quirk_every_loaded_image_has_alias_amazon():
    # moto sets owner_alias="amazon" on every MOTO_AMIS_PATH entry: Owners=["amazon"]
    # matches our images (and the impostor). Real EC2 would not.
    imgs = EC2.describe_images(Owners=["amazon"])["Images"]
    assert len(imgs) == len(CATALOGUE), len(imgs)
    assert {i.get("ImageOwnerAlias") for i in imgs} == {"amazon"}


@case
def amis_unknown_id_is_not_found():
    code, _ = error_code(EC2.describe_images, ImageIds=["ami-0123456789abcdef0"])
    assert code == "InvalidAMIID.NotFound", code


# ----------------------------------------------------------- instances ----

@case
def run_instances_windows_with_tags_and_user_data():
    ami = newest("windows-2025", "v1.34.*")
    payload = b"<powershell>\r\nWrite-Host 'capwin kit'\r\n</powershell>\r\n<persist>true</persist>"
    tags = {CLUSTER_TAG: "owned", "Name": "demo-md-0-a1b2c", ROLE_TAG: "node"}
    inst = run_windows(ami["ImageId"], tags, payload)[0]
    iid = inst["InstanceId"]
    assert inst["ImageId"] == ami["ImageId"] and inst["InstanceType"] == "m5.large", inst
    assert inst.get("Platform") == "windows", inst.get("Platform")
    assert inst["State"] == {"Code": 0, "Name": "pending"}, inst["State"]
    assert {t["Key"]: t["Value"] for t in inst["Tags"]} == tags, inst["Tags"]
    attr = EC2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    # boto3 base64-encodes UserData on RunInstances; EC2 returns it base64-encoded.
    assert base64.b64decode(attr["UserData"]["Value"]) == payload, attr["UserData"]
    d = EC2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert d["State"]["Name"] == "running", d["State"]  # moto: no 'pending' phase
    assert d["Platform"] == "windows" and d["RootDeviceName"] == "/dev/sda1", d
    vol_ids = [b["Ebs"]["VolumeId"] for b in d["BlockDeviceMappings"]]
    assert vol_ids, d["BlockDeviceMappings"]
    vols = EC2.describe_volumes(VolumeIds=vol_ids)["Volumes"]
    assert all({t["Key"]: t["Value"] for t in v.get("Tags", [])} == tags for v in vols), vols


@case
def run_instances_gzip_user_data_round_trips_bytes():
    ami = newest("windows-2022", "v1.36.*")
    payload = gzip.compress(b"#cloud-config\nruncmd:\n  - echo gz\n" * 50, mtime=0)
    iid = run_windows(ami["ImageId"], {CLUSTER_TAG: "owned"}, payload)[0]["InstanceId"]
    v = EC2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(v) == payload


@case
def run_instances_user_data_over_16k_is_accepted_by_moto():
    # Real EC2 rejects user data over 16 KB (before base64); moto does not check.
    ami = newest("windows-2019", "v1.33.*")
    iid = run_windows(ami["ImageId"], {"capwin.io/kit": "big"}, b"x" * 20000)[0]["InstanceId"]
    v = EC2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    assert len(base64.b64decode(v)) == 20000


@case
def describe_instances_by_tag_filters():
    ami = newest("windows-2025", "v1.37.*")["ImageId"]
    demo = {i["InstanceId"] for i in run_windows(ami, {CLUSTER_TAG: "owned", ROLE_TAG: "node"},
                                                  count=2)}
    other = {i["InstanceId"] for i in run_windows(ami, {OTHER_CLUSTER_TAG: "owned"})}

    def ids(filters):
        return {i["InstanceId"] for r in EC2.describe_instances(Filters=filters)["Reservations"]
                for i in r["Instances"]}

    by_tag = ids([{"Name": "tag:" + CLUSTER_TAG, "Values": ["owned"]}])
    assert demo <= by_tag and not (other & by_tag), (demo, other, by_tag)
    assert ids([{"Name": "tag-key", "Values": [OTHER_CLUSTER_TAG]}]) == other
    assert ids([{"Name": "tag:" + CLUSTER_TAG, "Values": ["shared"]}]) == set()
    both = ids([{"Name": "tag:" + CLUSTER_TAG, "Values": ["owned"]},
                {"Name": "tag:" + ROLE_TAG, "Values": ["node"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert demo <= both, (demo, both)
    # paginator over MaxResults works on the tag-filtered set
    pages = EC2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:" + CLUSTER_TAG, "Values": ["owned"]}],
        PaginationConfig={"PageSize": 5})
    assert {i["InstanceId"] for p in pages for r in p["Reservations"]
            for i in r["Instances"]} == by_tag


@case
def terminate_goes_shutting_down_then_terminated():
    ami = newest("windows-2022", "v1.35.*")["ImageId"]
    iid = run_windows(ami, {CLUSTER_TAG: "owned", "Name": "doomed"})[0]["InstanceId"]
    t = EC2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert t["CurrentState"] == {"Code": 32, "Name": "shutting-down"}, t
    assert t["PreviousState"] == {"Code": 16, "Name": "running"}, t
    d = EC2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert d["State"] == {"Code": 48, "Name": "terminated"}, d["State"]  # at once
    assert d["StateReason"]["Code"] == "Client.UserInitiatedShutdown", d["StateReason"]
    alive = {i["InstanceId"] for r in EC2.describe_instances(Filters=[
        {"Name": "tag:Name", "Values": ["doomed"]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ])["Reservations"] for i in r["Instances"]}
    assert iid not in alive
    # terminating again is fine (idempotent), and the instance stays listed
    t2 = EC2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert t2["PreviousState"]["Name"] == "terminated", t2


@case
def moto_gap_client_token_not_honoured():
    ami = newest("windows-2025", "v1.36.*")["ImageId"]
    token = "capwin-kit-" + uuid.uuid4().hex
    a = run_windows(ami, {"capwin.io/kit": "token"}, ClientToken=token)[0]
    b = run_windows(ami, {"capwin.io/kit": "token"}, ClientToken=token)[0]
    assert a["InstanceId"] != b["InstanceId"], "moto now honours ClientToken: update README"
    assert a["ClientToken"] == b["ClientToken"] == token


@case
def run_instances_validation():
    code, _ = error_code(EC2.run_instances, ImageId="ami-0123456789abcdef0", MinCount=1,
                         MaxCount=1, InstanceType="m5.large")
    assert code == "InvalidAMIID.NotFound", code
    ami = newest("windows-2025", "v1.37.*")["ImageId"]
    code, _ = error_code(EC2.run_instances, ImageId=ami, MinCount=1, MaxCount=1,
                         InstanceType="m9.colossal")
    assert code == "InvalidInstanceType.NotFound", code


@case
def moto_gap_console_output_and_password_data():
    ami = newest("windows-2025", "v1.37.*")["ImageId"]
    iid = run_windows(ami, {"capwin.io/kit": "console"})[0]["InstanceId"]
    out = EC2.get_console_output(InstanceId=iid)["Output"]
    assert out.startswith("Linux version 2.6.16-xenU"), out[:80]
    pw = EC2.get_password_data(InstanceId=iid)["PasswordData"]
    assert len(pw) == 128, pw  # random text, not base64 RSA-encrypted data


@case
def moto_gaps_misc():
    # Each of these differs from real EC2; README lists them. A failure here
    # means moto changed: update the README.
    ami = newest("windows-2025", "v1.37.*")["ImageId"]
    r = EC2.run_instances(ImageId=ami, MinCount=1, MaxCount=3, InstanceType="m5.large")
    assert len(r["Instances"]) == 1, "MaxCount is no longer ignored"
    assert r["ResponseMetadata"]["RequestId"] == "request-id", r["ResponseMetadata"]
    d = EC2.describe_instances(InstanceIds=[r["Instances"][0]["InstanceId"]])
    inst = d["Reservations"][0]["Instances"][0]
    assert "PlatformDetails" not in inst and "UsageOperation" not in inst, inst
    r = EC2.run_instances(MinCount=1, MaxCount=1, InstanceType="m5.large")  # no ImageId
    assert "ImageId" not in r["Instances"][0], r["Instances"][0]
    st, hdrs, body = http_call(
        "POST", ARGS.moto + "/",
        b"Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=client-token&Filter.1.Value.1=x",
        {"Content-Type": "application/x-www-form-urlencoded",
         "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20261121/us-west-2/ec2/aws4_request,"
                          " SignedHeaders=host, Signature=00"})
    assert st == 500 and body.lstrip().lower().startswith(b"<!doctype html"), (st, body[:80])
    # name filters are fnmatch patterns: [..] is a character class in moto, literal in EC2
    assert len(windows_images("capa-ami-windows-202[25]-v1.36.6-*")) == 2


@case
def reset_wipes_state_and_reloads_amis():
    assert EC2.describe_instances()["Reservations"], "expected instances before reset"
    reset_moto()
    assert EC2.describe_instances()["Reservations"] == []
    assert len(EC2.describe_images()["Images"]) == len(CATALOGUE)
    assert newest("windows-2025", "v1.34.*")["Name"] == \
        "capa-ami-windows-2025-v1.34.13-1794474600"


# --------------------------------------------------------------- proxy ----

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _echo(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            body = b""
            while True:
                n = int(self.rfile.readline().strip(), 16)
                if n == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(n)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = json.dumps({"method": self.command, "path": self.path,
                          "headers": [[k, v] for k, v in self.headers.items()],
                          "body": base64.b64encode(body).decode()}).encode()
        self.send_response(299, "Echoed")
        self.send_header("X-Echo", "yes")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _echo


def with_echo_proxy(fn):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "throttle_proxy.py"),
                          "--listen", "127.0.0.1:0",
                          "--upstream", "http://127.0.0.1:%d" % srv.server_address[1]],
                         stdout=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        fn(url)
    finally:
        p.terminate()
        p.wait(10)
        srv.shutdown()
        srv.server_close()


@case
def proxy_forwards_requests_unchanged():
    def check(url):
        host, port = url[len("http://"):].split(":")
        body = b"Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Aa%2Fb.c"
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        hdrs = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20261121/us-west-2/ec2/"
                                 "aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
                "X-Amz-Date": "20261121T000000Z", "X-Custom": "kept as is",
                "User-Agent": "aws-sdk-rust/1.x"}
        c.request("POST", "/some/path?x=1&y=%2F", body=body, headers=hdrs)
        r = c.getresponse()
        got = json.loads(r.read())
        assert (r.status, r.reason, r.getheader("X-Echo")) == (299, "Echoed", "yes")
        assert (got["method"], got["path"]) == ("POST", "/some/path?x=1&y=%2F"), got
        assert base64.b64decode(got["body"]) == body
        sent = {k.lower(): v for k, v in got["headers"]}
        for k, v in hdrs.items():
            assert sent[k.lower()] == v, (k, sent)
        assert sent["host"] == "%s:%s" % (host, port), sent  # Host is not rewritten
        # same keep-alive connection: a chunked PUT
        c.putrequest("PUT", "/chunked")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = c.getresponse()
        got = json.loads(r.read())
        assert base64.b64decode(got["body"]) == b"hello world", got
        assert got["method"] == "PUT" and got["path"] == "/chunked"
        c.close()
    with_echo_proxy(check)


@case
def proxy_relays_moto_answers_and_errors():
    control("POST", "clear")
    px = client(ARGS.proxy)
    r = px.describe_images(Owners=[OWNER], Filters=[
        {"Name": "name", "Values": ["capa-ami-windows-2019-v1.32.*"]}])
    assert len(r["Images"]) == 2
    code, meta = error_code(px.describe_instances, InstanceIds=["i-0123456789abcdef0"])
    assert code == "InvalidInstanceID.NotFound" and meta["HTTPStatusCode"] == 400, (code, meta)
    assert meta["RetryAttempts"] == 0
    st, _, _ = http_call("GET", ARGS.proxy + "/moto-api/")
    assert st == 200
    s = stats()
    assert s["requests"] == {"DescribeImages": 1, "DescribeInstances": 1, "-": 1}, s
    assert s["forwarded"] == s["requests"] and s["injected"] == {}, s


@case
def proxy_error_envelope_is_ec2_xml():
    control("POST", "clear")
    arm(action="DescribeRegions", code="RequestLimitExceeded", status=503)
    st, hdrs, body = http_call("POST", ARGS.proxy + "/", b"Action=DescribeRegions&Version=2016-11-15",
                               {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 503, st
    root = ET.fromstring(body)
    assert root.tag == "Response", root.tag
    assert root.findtext("Errors/Error/Code") == "RequestLimitExceeded"
    assert root.findtext("Errors/Error/Message") == "Request limit exceeded."
    rid = root.findtext("RequestID")
    assert rid and uuid.UUID(rid), body
    assert hdrs.get("x-amzn-RequestId") == rid, hdrs


@case
def throttled_twice_then_standard_retry_succeeds():
    control("POST", "clear")
    reset_moto()
    arm(action="DescribeInstances", times=2, code="RequestLimitExceeded", status=503)
    r = client(ARGS.proxy).describe_instances()
    assert r["ResponseMetadata"]["RetryAttempts"] == 2, r["ResponseMetadata"]
    s = stats()
    assert s["requests"] == {"DescribeInstances": 3}, s
    assert s["injected"] == {"DescribeInstances": 2}, s
    assert s["forwarded"] == {"DescribeInstances": 1}, s
    assert s["rules"] == [], s["rules"]


@case
def persistent_throttling_fails_after_max_attempts():
    control("POST", "clear")
    arm(action="DescribeInstances", times=-1, code="RequestLimitExceeded", status=503)
    code, meta = error_code(client(ARGS.proxy).describe_instances)
    assert code == "RequestLimitExceeded" and meta["HTTPStatusCode"] == 503, (code, meta)
    assert meta["RetryAttempts"] == 2, meta
    s = stats()
    assert s["requests"] == {"DescribeInstances": 3} == s["injected"], s
    assert s["rules"][0]["remaining"] == -1, s["rules"]
    # other Actions are untouched while armed
    client(ARGS.proxy).describe_images(ImageIds=[CATALOGUE[0]["ami_id"]])
    assert control("POST", "disarm", {"action": "DescribeInstances"})[1] == {"removed": 1}
    client(ARGS.proxy).describe_instances()
    assert stats()["forwarded"] == {"DescribeImages": 1, "DescribeInstances": 1}


@case
def internal_error_after_forwarding_duplicates_run_instances():
    # The call reaches moto, the client sees a 500 and retries with the same
    # ClientToken; moto does not honour it, so there are now two instances.
    control("POST", "clear")
    reset_moto()
    ami = newest("windows-2025", "v1.34.*")["ImageId"]
    arm(action="RunInstances", times=1, code="InternalError", status=500, when="after")
    r = client(ARGS.proxy).run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                                         InstanceType="m5.large")
    assert r["ResponseMetadata"]["RetryAttempts"] == 1, r["ResponseMetadata"]
    token = r["Instances"][0]["ClientToken"]
    same = [i for res in EC2.describe_instances()["Reservations"] for i in res["Instances"]
            if i.get("ClientToken") == token]
    assert len(same) == 2, same
    s = stats()
    assert s["requests"] == {"RunInstances": 2} == s["forwarded"], s
    assert s["injected"] == {"RunInstances": 1}, s


@case
def internal_error_before_forwarding_is_retried_once():
    control("POST", "clear")
    reset_moto()
    ami = newest("windows-2022", "v1.34.*")["ImageId"]
    arm(action="RunInstances", code="InternalError", status=500)
    r = client(ARGS.proxy).run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                                         InstanceType="m5.large")
    assert r["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(EC2.describe_instances()["Reservations"]) == 1
    assert stats()["forwarded"] == {"RunInstances": 1}


@case
def delay_then_forward():
    control("POST", "clear")
    arm(action="DescribeImages", delay=1.0)
    t = time.monotonic()
    r = client(ARGS.proxy).describe_images(ImageIds=[CATALOGUE[1]["ami_id"]])
    took = time.monotonic() - t
    assert 1.0 <= took < 5, took
    assert len(r["Images"]) == 1 and r["ResponseMetadata"]["RetryAttempts"] == 0
    s = stats()
    assert s["delayed"] == {"DescribeImages": 1} and s["injected"] == {}, s


@case
def delay_longer_than_read_timeout_times_out():
    control("POST", "clear")
    arm(action="DescribeVpcs", delay=1.5)
    px = client(ARGS.proxy, read_timeout=0.5, retries={"total_max_attempts": 1, "mode": "standard"})
    try:
        px.describe_vpcs()
        raise AssertionError("no timeout")
    except botocore.exceptions.ReadTimeoutError:
        pass
    # The proxy still forwards it after the delay (1 s after the client gave up; polled, not
    # slept, so a loaded machine does not make this flaky).
    deadline = time.monotonic() + 10
    while stats()["forwarded"] != {"DescribeVpcs": 1} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats()["forwarded"] == {"DescribeVpcs": 1}, stats()


@case
def dropped_connection_is_retried():
    control("POST", "clear")
    arm(action="DescribeInstances", drop=True)
    r = client(ARGS.proxy).describe_instances()
    assert r["ResponseMetadata"]["RetryAttempts"] == 1, r["ResponseMetadata"]
    s = stats()
    assert s["requests"] == {"DescribeInstances": 2} and s["injected"] == {"DescribeInstances": 1}


@case
def wildcard_rule_and_exact_rules_first():
    control("POST", "clear")
    arm(action="*", times=1, code="Unavailable")
    arm(action="DescribeVpcs", times=1, code="RequestLimitExceeded")
    px = client(ARGS.proxy, retries={"total_max_attempts": 1, "mode": "standard"})
    assert error_code(px.describe_vpcs)[0] == "RequestLimitExceeded"
    code, meta = error_code(px.describe_subnets)
    assert (code, meta["HTTPStatusCode"]) == ("Unavailable", 503), (code, meta)
    px.describe_subnets()
    assert stats()["rules"] == []


@case
def control_api_rejects_bad_input():
    for bad in ({"times": 2}, {"action": "X", "times": 0, "code": "A"}, {"action": "X"},
                {"action": "X", "code": "A", "status": 200}, {"action": "X", "delay": -1},
                {"action": "X", "code": "A", "drop": True}, {"action": "X", "bogus": 1},
                {"action": "X", "delay": 1, "when": "after"}):
        st, out = control("POST", "arm", bad)
        assert st == 400 and "error" in out, (bad, st, out)
    st, _, _ = http_call("POST", ARGS.proxy + "/_capwin/arm", b"{not json")
    assert st == 400
    assert control("GET", "nope")[0] == 404
    assert control("GET", "health")[1] == {"ok": True, "upstream": ARGS.moto}
    assert control("POST", "clear")[0] == 200 and stats()["requests"] == {}


# ------------------------------------------------------------- moto.sh ----

@case
def moto_sh_stop_never_kills_a_foreign_pid():
    import tempfile
    with tempfile.TemporaryDirectory(prefix="capwin-kit-") as st:
        env = dict(os.environ, CAPWIN_KIT_STATE=st)
        sh = os.path.join(HERE, "moto.sh")
        r = subprocess.run([sh, "status"], env=env, capture_output=True, text=True)
        assert (r.returncode, r.stdout.strip()) == (3, "not running"), r
        r = subprocess.run([sh, "stop"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r
        victim = subprocess.Popen(["sleep", "60"])
        try:
            with open(os.path.join(st, "moto.pid"), "w") as f:
                f.write("%d\n" % victim.pid)
            with open(os.path.join(st, "moto.url"), "w") as f:
                f.write("http://127.0.0.1:1\n")
            r = subprocess.run([sh, "stop"], env=env, capture_output=True, text=True)
            assert r.returncode == 0, r
            assert victim.poll() is None, "moto.sh stop killed a process that is not moto"
            assert not os.path.exists(os.path.join(st, "moto.pid"))
            r = subprocess.run([sh, "status"], env=env, capture_output=True, text=True)
            assert r.returncode == 3, r
        finally:
            victim.kill()
            victim.wait()


print("aws kit selftest: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
