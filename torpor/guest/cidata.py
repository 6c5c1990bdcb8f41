"""The NoCloud seed (``cidata.iso``) torpor gives every guest.

``meta-data`` and ``user-data`` are what cloud-init in a cloud image reads; ``torpor/`` holds the same facts in a
form the default guest's shell init reads without a YAML parser.  The instance-id is created once per instance
and never changes, so nothing in the guest takes a restart for a new machine.
"""

from __future__ import annotations

import getpass
import io
import os
import re
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torpor.config.schema import Provision

from torpor.store import atomic, filenames


@dataclass(frozen=True)
class GuestUser:
    name: str
    uid: int

    @classmethod
    def from_host(cls) -> GuestUser:
        """A guest user named like the host user (``torpor`` for root or a name a guest cannot use)."""
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = ""
        if name == "root" or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", name):
            name = "torpor"
        uid = os.getuid()
        return cls(name, uid if uid >= 1000 else 1000)


def instance_id(inst_dir: Path) -> str:
    """The instance's stable instance-id, created on first use."""
    path = inst_dir / filenames.INSTANCE_ID
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        iid = f"torpor-{uuid.uuid4()}"
        atomic.write_text(path, iid + "\n")
        return iid


def files(name: str, iid: str, user: GuestUser, pubkeys: list[str], provision: list[Provision]) -> dict[str, bytes]:
    """The seed's files by path; ``pubkeys`` are the SSH public keys the user may log in with."""
    import yaml

    hostname = f"torpor-{name}"
    meta = {"instance-id": iid, "local-hostname": hostname}
    cloud_user = {
        "name": user.name,
        "uid": user.uid,
        "homedir": f"/home/{user.name}",
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
        "ssh_authorized_keys": [k.strip() for k in pubkeys],
    }
    user_data: dict[str, object] = {"hostname": hostname, "users": [cloud_user]}
    # cloud-init runs "runcmd" once per instance: the system and user scripts map onto it; boot scripts
    # go to "bootcmd", which runs on every boot.
    runcmd = [["/bin/sh", "-c", p.script] for p in provision if p.mode == "system"]
    runcmd += [["su", "-", user.name, "-c", p.script] for p in provision if p.mode == "user"]
    bootcmd = [["/bin/sh", "-c", p.script] for p in provision if p.mode == "boot"]
    if runcmd:
        user_data["runcmd"] = runcmd
    if bootcmd:
        user_data["bootcmd"] = bootcmd
    env = {
        "TORPOR_INSTANCE_ID": iid,
        "TORPOR_HOSTNAME": hostname,
        "TORPOR_USER": user.name,
        "TORPOR_UID": str(user.uid),
    }
    out = {
        "meta-data": yaml.safe_dump(meta, sort_keys=False).encode(),
        "user-data": b"#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False).encode(),
        "torpor/env": "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode(),
        "torpor/authorized_keys": "".join(k.strip() + "\n" for k in pubkeys).encode(),
    }
    for i, p in enumerate(provision):
        out[f"torpor/provision/{i:02d}-{p.mode}"] = p.script.encode()
    return out


def build_iso(content: dict[str, bytes]) -> bytes:
    """An ISO 9660 image with Joliet and Rock Ridge, volume label ``cidata``, holding ``content``."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    made: set[str] = set()
    for path in sorted(content):
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                iso.add_directory(iso_path=d.upper(), rr_name=parts[i - 1], joliet_path=d)
                made.add(d)
        data = content[path]
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            iso_path="/" + path.upper().replace("-", "_") + ";1",
            rr_name=parts[-1],
            joliet_path="/" + path,
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def write(inst_dir: Path, name: str, user: GuestUser, pubkeys: list[str], provision: list[Provision]) -> Path:
    path = inst_dir / filenames.CIDATA
    iso = build_iso(files(name, instance_id(inst_dir), user, pubkeys, provision))
    atomic.write_bytes(path, iso, 0o600)
    return path
