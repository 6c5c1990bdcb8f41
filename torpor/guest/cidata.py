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
    from torpor.config.schema import Mount, Provision

from torpor.store import atomic, filenames


@dataclass(frozen=True)
class GuestUser:
    name: str
    uid: int
    groups: tuple[str, ...] = ()  # beyond the distribution's defaults (template:docker's: docker)

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

    @property
    def home(self) -> str:
        # Not /home/NAME: that is where the host's home, mounted at the same path, goes (Lima's choice too).
        return f"/home/{self.name}.linux"


def instance_id(inst_dir: Path) -> str:
    """The instance's stable instance-id, created on first use."""
    path = inst_dir / filenames.INSTANCE_ID
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        iid = f"torpor-{uuid.uuid4()}"
        atomic.write_text(path, iid + "\n")
        return iid


def sshfs_options(m: Mount) -> str:
    """sshfs's options for a mount (beyond the ones every mount has).

    Reads and writes go in SFTP requests of 64 KiB, sshfs's largest (32 KiB by default).  sshfs's cache of
    attributes and listings keeps entries 1 s (sshfs's default is 20 s), so that a change on the host shows within
    about a second; its clock is the guest's wall clock, which a restore moves on by the time saved, so that
    nothing cached before a save is trusted after it.  ``sshfs.cache: false``: no cache, the kernel's included.
    """
    opts = ["max_read=65536", "max_write=65536"]
    if m.sshfs.cache:
        opts.append("dcache_timeout=1")
    else:
        opts.append("cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0")
    if m.sshfs.followSymlinks:
        opts.append("follow_symlinks")
    return ",".join(opts)


def ninep_options(m: Mount) -> str:
    """The guest's 9p mount options for a mount of mountType 9p (Lima's defaults for the cache)."""
    cache = m.nineP.cache or ("mmap" if m.writable else "fscache")
    return f"version={m.nineP.protocolVersion},msize={m.nineP.msize},cache={cache}"


def mount_options(m: Mount, mount_type: str) -> str:
    if mount_type == "9p":
        return ninep_options(m)
    if mount_type == "virtiofs":
        return "defaults"  # (the table's fields are never empty: the guest's shell would merge two tabs)
    return sshfs_options(m)


def mount_table(mounts: list[Mount], mount_type: str = "reverse-sshfs") -> str:
    """The guests' table of mounts (read by the ``mounts`` script): index, type, ro/rw, options, mount point."""
    return "".join(
        f"{i}\t{mount_type}\t{'rw' if m.writable else 'ro'}\t{mount_options(m, mount_type)}\t{m.mountPoint}\n"
        for i, m in enumerate(mounts)
    )


def id_maps(user: GuestUser) -> dict[str, str]:
    """sshfs's maps (``idmap=file``) of the host user's uid and gid to the guest user's."""
    return {"uidmap": f"{user.name}:{os.getuid()}\n", "gidmap": f"{user.name}:{os.getgid()}\n"}


PER_BOOT_SCRIPT = "/var/lib/cloud/scripts/per-boot/torpor-mounts"


def _mount_bootcmd(mounts: list[Mount], mount_type: str, user: GuestUser) -> list[str]:
    """cloud-init's boot command for the mounts of a cloud image: on every boot (bootcmd runs on each, before
    write_files), the table, the id maps and the script go to /run/torpor, and a per-boot script that runs it.
    cloud-init runs that in its last stage, after it has written the users' and root's SSH keys (a read-only
    mount of the host's home at /root would refuse them), and start waits for cloud-init."""
    from importlib import resources

    script = (resources.files("torpor.guest") / "rootfs" / "mounts").read_text()
    maps = id_maps(user)
    setup = (
        'mkdir -p /run/torpor "${0%/*}" && printf %s "$1" > /run/torpor/mounts && '
        'printf %s "$2" > /run/torpor/uidmap && printf %s "$3" > /run/torpor/gidmap && '
        'printf %s "$4" > /run/torpor/mount.sh && '
        'printf "#!/bin/sh\\n[ -f /run/torpor/mount.sh ] || exit 0\\n'
        'exec sh /run/torpor/mount.sh /run/torpor/mounts\\n" > "$0" && chmod 755 "$0"'
    )
    return ["sh", "-c", setup, PER_BOOT_SCRIPT, mount_table(mounts, mount_type), maps["uidmap"], maps["gidmap"], script]


def files(
    name: str,
    iid: str,
    user: GuestUser,
    pubkeys: list[str],
    *,
    provision: list[Provision],
    mounts: list[Mount],
    mount_type: str = "reverse-sshfs",
) -> dict[str, bytes]:
    """The seed's files by path; ``pubkeys`` are the SSH public keys the user may log in with."""
    import yaml

    hostname = f"torpor-{name}"
    meta = {"instance-id": iid, "local-hostname": hostname}
    cloud_user = {
        "name": user.name,
        "uid": user.uid,
        "homedir": user.home,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
        "ssh_authorized_keys": [k.strip() for k in pubkeys],
        **({"groups": list(user.groups)} if user.groups else {}),
    }
    user_data: dict[str, object] = {"hostname": hostname, "users": [cloud_user]}
    # cloud-init runs "runcmd" once per instance: the system and user scripts map onto it; boot scripts
    # go to "bootcmd", which runs on every boot.
    runcmd = [["/bin/sh", "-c", p.script] for p in provision if p.mode == "system"]
    runcmd += [["su", "-", user.name, "-c", p.script] for p in provision if p.mode == "user"]
    bootcmd = [["/bin/sh", "-c", p.script] for p in provision if p.mode == "boot"]
    if mounts:
        bootcmd.insert(0, _mount_bootcmd(mounts, mount_type, user))
    if runcmd:
        user_data["runcmd"] = runcmd
    if bootcmd:
        user_data["bootcmd"] = bootcmd
    env = {
        "TORPOR_INSTANCE_ID": iid,
        "TORPOR_HOSTNAME": hostname,
        "TORPOR_USER": user.name,
        "TORPOR_UID": str(user.uid),
        "TORPOR_HOME": user.home,
    }
    out = {
        "meta-data": yaml.safe_dump(meta, sort_keys=False).encode(),
        "user-data": b"#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False).encode(),
        "torpor/env": "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode(),
        "torpor/authorized_keys": "".join(k.strip() + "\n" for k in pubkeys).encode(),
    }
    for i, p in enumerate(provision):
        out[f"torpor/provision/{i:02d}-{p.mode}"] = p.script.encode()
    if mounts:
        out["torpor/mounts"] = mount_table(mounts, mount_type).encode()
        out.update({f"torpor/{k}": v.encode() for k, v in id_maps(user).items()})
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


def write(
    inst_dir: Path,
    name: str,
    user: GuestUser,
    pubkeys: list[str],
    *,
    provision: list[Provision],
    mounts: list[Mount],
    mount_type: str,
) -> Path:
    path = inst_dir / filenames.CIDATA
    seed = files(name, instance_id(inst_dir), user, pubkeys, provision=provision, mounts=mounts, mount_type=mount_type)
    iso = build_iso(seed)
    atomic.write_bytes(path, iso, 0o600)
    return path
