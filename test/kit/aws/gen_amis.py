#!/usr/bin/env python3
"""Writes amis.json: capwin's own AMI catalogue for moto (MOTO_AMIS_PATH).

Deterministic: the same script always writes the same file (ids are derived
from the names). `python3 gen_amis.py --check` exits 1 if amis.json is stale.

Naming scheme: exactly what image-builder's AWS builds write (packer/ami,
`ami_name` = "capa-ami-{{build_name}}-{{kubernetes_semver}}-{{timestamp}}"; CAPA
looks them up with "capa-ami-{{.BaseOS}}-?{{.K8sVersion}}-*"):

    capa-ami-<base-os>-<k8s-version>-<build-unix-timestamp>
    e.g. capa-ami-windows-2019-v1.35.10-1794481200

base-os: windows-2019 (image-builder's only AWS Windows target,
`make build-ami-windows-2019`) | windows-2022 | windows-2025 (built the same way
by users who add those targets), plus one ubuntu-24.04 Linux image. The owner of
all our images is OWNER: moto's default account, i.e. what the owner alias
`self` means for the kit's credentials, as a user's own image-builder AMIs are
owned by their account. One impostor image with a capa name is owned by
OTHER_OWNER (another account; never found by `self`).

Each entry only uses keys that moto 5.2.5's Ami(**entry) accepts (an unknown
key makes moto_server fail on the first EC2 request).
"""
import datetime as dt
import hashlib
import json
import os
import sys

OWNER = "123456789012"
OTHER_OWNER = "111122223333"
BUILD_MINUTES = 47  # creation_date = build timestamp + this (AMI snapshot time)

# (minor, [(patch, [build dates...]), ...]): build dates are UTC 'YYYY-MM-DD HH:MM'.
# Two builds of one version = a rebuild after a Windows cumulative update
# (Patch Tuesday); v1.35.9 -> v1.35.10 makes "sort by name" differ from
# "sort by creation date".
K8S = [
    ("1.32", [("11", ["2026-01-15 09:00"]), ("12", ["2026-02-12 09:00"])]),
    ("1.33", [("11", ["2026-05-14 09:00"]), ("12", ["2026-06-11 09:00"])]),
    ("1.34", [("12", ["2026-09-10 09:00"]),
              ("13", ["2026-10-15 09:00", "2026-11-12 09:00"])]),
    ("1.35", [("9", ["2026-10-15 10:00"]), ("10", ["2026-11-12 10:00"])]),
    ("1.36", [("5", ["2026-10-15 11:00"]), ("6", ["2026-11-12 11:00"])]),
    ("1.37", [("1", ["2026-10-15 12:00"]),
              ("2", ["2026-11-12 12:00", "2026-11-19 12:00"])]),
]
WINDOWS = {  # base-os -> (description name, boot mode, minutes added per OS)
    "windows-2019": ("Windows Server 2019 Datacenter", "legacy-bios", 0),
    "windows-2022": ("Windows Server 2022 Datacenter", "legacy-bios", 5),
    "windows-2025": ("Windows Server 2025 Datacenter", "uefi-preferred", 10),
}


def ts(s, plus_minutes=0):
    t = dt.datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=dt.timezone.utc)
    return t + dt.timedelta(minutes=plus_minutes)


def ami_id(name, owner):
    return "ami-0" + hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:16]


def image(base_os, k8s, built, owner=OWNER, windows=True, desc=None):
    stamp = int(built.timestamp())
    name = f"capa-ami-{base_os}-{k8s}-{stamp}"
    created = built + dt.timedelta(minutes=BUILD_MINUTES)
    e = {
        "ami_id": ami_id(name, owner),
        "name": name,
        "description": desc or f"image-builder CAPI image: {base_os}, Kubernetes {k8s}",
        "owner_id": owner,
        "public": True,
        "state": "available",
        "creation_date": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "architecture": "x86_64",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "image_type": "machine",
        "image_location": f"{owner}/{name}",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "sriov": "simple",
        "boot_mode": WINDOWS[base_os][1] if windows else "uefi-preferred",
        "tags": {"capwin.io/base-os": base_os, "capwin.io/kubernetes-version": k8s,
                 "capwin.io/build-timestamp": str(stamp)},
    }
    if windows:
        e["platform"] = "windows"
    return e


def catalogue():
    out = []
    for base_os, (_, _, shift) in WINDOWS.items():
        for minor, patches in K8S:
            for patch, dates in patches:
                for d in dates:
                    out.append(image(base_os, f"v{minor}.{patch}", ts(d, shift)))
    # One Linux image in the same account, same name prefix (platform filter).
    out.append(image("ubuntu-24.04", "v1.34.13", ts("2026-11-12 09:30"), windows=False))
    # An impostor: capa name, another owner, newer than every real build, so
    # a lookup that forgets the owner filter picks it.
    out.append(image("windows-2025", "v1.34.13", ts("2026-11-20 06:00"),
                     owner=OTHER_OWNER,
                     desc="NOT this account's image: same name scheme, other owner"))
    ids = [e["ami_id"] for e in out]
    assert len(set(ids)) == len(ids)
    return out


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "amis.json")
    text = json.dumps(catalogue(), indent=1) + "\n"
    if sys.argv[1:] == ["--check"]:
        with open(path) as f:
            if f.read() != text:
                sys.exit("amis.json is stale: run python3 gen_amis.py")
        return
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
