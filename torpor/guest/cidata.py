"""The NoCloud seed (``cidata.iso``) torpor gives every guest.

``meta-data`` and ``user-data`` are what cloud-init in a cloud image reads; ``torpor/`` holds the same facts in a
form the default guest's shell init reads without a YAML parser.  The instance-id is created once per instance
and never changes, so nothing in the guest takes a restart for a new machine.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torpor.config.schema import AdditionalDisk, Config, Mount, Provision

from torpor.config.guestuser import GuestUser
from torpor.store import atomic, filenames

__all__ = ["GuestUser"]  # (the seed's user; defined with the configuration that describes it)


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


@dataclass(frozen=True)
class Setup:
    """What the guest is set up with at every boot beyond its user and mounts (Lima's fields of those names)."""

    env: dict[str, str] = field(default_factory=dict)  # env, and the host's proxy variables (propagateProxyEnv)
    hosts: dict[str, str] = field(default_factory=dict)  # name -> IP (hostResolver.hosts, resolved)
    dns: tuple[str, ...] = ()
    timezone: str | None = None  # a zone name; its zoneinfo file is copied from the host
    ca_certs: tuple[str, ...] = ()  # PEM texts
    remove_default_cas: bool = False
    upgrade_packages: bool = False
    param: dict[str, str] = field(default_factory=dict)  # PARAM_<key> in provisioning scripts' environment
    disks: tuple[AdditionalDisk, ...] = ()  # serial dataN in the guest, mounted at /mnt/lima-NAME

    @classmethod
    def of(cls, config: Config) -> Setup:
        """The setup a configuration asks for (host files read now: the time zone's, the CA certificates')."""
        env = dict(proxy_env() if config.propagateProxyEnv else {})
        env.update(config.env)
        certs = [*config.caCerts.certs]
        for path in config.caCerts.files:
            from torpor.config.schema import expand_host_path

            try:
                certs.append(Path(expand_host_path(path)).read_text())
            except OSError as e:
                from torpor.errors import ConfigError

                raise ConfigError(f"caCerts.files: cannot read {path}: {e.strerror}") from None
        return cls(
            env=env,
            hosts=resolve_hosts(config.hostResolver.hosts),
            dns=tuple(config.dns),
            timezone=config.timezone or host_timezone(),
            ca_certs=tuple(certs),
            remove_default_cas=config.caCerts.removeDefaults,
            upgrade_packages=config.upgradePackages,
            param=dict(config.param),
            disks=tuple(config.additionalDisks),
        )


# The host as QEMU's user network shows it to the guest, and the names Lima gives it.
HOST_IP = "10.0.2.2"
HOST_NAMES = ("host.lima.internal", "host.torpor.internal")
PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy")


def proxy_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The host's proxy variables (either case) for the guest, localhost rewritten to the host's address."""
    environ = dict(os.environ) if environ is None else environ
    out = {}
    for var in PROXY_VARS:
        for name in (var, var.upper()):
            if environ.get(name):
                value = environ[name]
                if var != "no_proxy":
                    value = re.sub(r"(?<=//)(localhost|127\.0\.0\.1)(?=[:/]|$)", HOST_IP, value)
                out[name] = value
    return out


def resolve_hosts(hosts: dict[str, str]) -> dict[str, str]:
    """hostResolver.hosts with names that point at other names (host.lima.internal included) resolved."""
    import ipaddress

    known = {n: HOST_IP for n in HOST_NAMES}
    out: dict[str, str] = {}
    for name, given in hosts.items():
        target, seen = given, {name}
        while target not in known and target in hosts and target not in seen:
            seen.add(target)
            target = hosts[target]
        target = known.get(target, target)
        try:
            ipaddress.ip_address(target)
        except ValueError:
            from torpor.errors import ConfigError

            raise ConfigError(
                f"hostResolver.hosts.{name}: {target!r} is neither an IP address nor a name defined there",
                hint="give an IP address, or host.lima.internal for the host",
            ) from None
        out[name] = target
    return {**known, **out}


def host_timezone() -> str | None:
    """The host's time zone name (Lima's default for ``timezone``), or None if it has none by name."""
    if os.environ.get("TZ", "").strip(":") and "/" in os.environ["TZ"]:
        return os.environ["TZ"].strip(":")
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            return link.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    try:
        return Path("/etc/timezone").read_text().strip() or None
    except OSError:
        return None


def _zoneinfo(zone: str) -> bytes | None:
    try:
        return (Path("/usr/share/zoneinfo") / zone).read_bytes()
    except OSError:
        return None


def setup_files(setup: Setup) -> dict[str, bytes]:
    """The seed's files the guests' ``setup`` script reads at every boot."""
    out: dict[str, bytes] = {}
    if setup.env:
        out["torpor/environment"] = "".join(f'{k}="{_pam_quote(v)}"\n' for k, v in setup.env.items()).encode()
        out["torpor/environment.sh"] = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in setup.env.items()).encode()
    if setup.hosts:
        out["torpor/hosts"] = "".join(f"{ip} {name}\n" for name, ip in setup.hosts.items()).encode()
    if setup.dns:
        out["torpor/resolv.conf"] = "".join(f"nameserver {ip}\n" for ip in setup.dns).encode()
    if setup.timezone and (tz := _zoneinfo(setup.timezone)) is not None:
        out["torpor/timezone"] = (setup.timezone + "\n").encode()
        out["torpor/localtime"] = tz
    for i, pem in enumerate(setup.ca_certs):
        out[f"torpor/ca/{i:02d}.crt"] = pem.encode()
    if setup.remove_default_cas:
        out["torpor/ca-remove-defaults"] = b""
    if setup.disks:
        # index, name, format (true/false), fsType, fsArgs (space separated)
        out["torpor/disks"] = "".join(
            f"{i}\t{d.name}\t{'true' if d.format else 'false'}\t{d.fsType}\t{' '.join(d.fsArgs) or '-'}\n"
            for i, d in enumerate(setup.disks)
        ).encode()
    if setup.param:
        out["torpor/param.env"] = "".join(
            f"export PARAM_{k}={shlex.quote(v)}\n" for k, v in setup.param.items()
        ).encode()
    return out


def _pam_quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


# Lima's order within a boot, after the boot scripts: dependency, data, then system and user.
MODE_ORDER = ("boot", "dependency", "data", "yq", "system", "user")


def provision_files(provision: list[Provision]) -> dict[str, bytes]:
    """``torpor/provision/R-NN-mode`` (R: the mode's place in Lima's order), with a data entry's file beside
    its ``.meta`` (path, owner, permissions, overwrite: one per line)."""
    out: dict[str, bytes] = {}
    for i, p in enumerate(provision):
        name = f"torpor/provision/{MODE_ORDER.index(p.mode)}-{i:02d}-{p.mode}"
        if p.mode == "data":
            out[name] = (p.content or "").encode()
            meta = f"{p.path}\n{p.owner}\n{p.permissions}\n{'true' if p.overwrite else 'false'}\n"
            out[name + ".meta"] = meta.encode()
        elif p.mode == "yq":
            import json

            from torpor.config.edits import assignments
            from torpor.config.schema import yq_format

            fmt = yq_format(p.path or "", p.format)
            ops = [[path, append, value] for path, append, value in assignments(p.expression or "", "expression")]
            out[name] = json.dumps({"format": fmt, "ops": ops}).encode()
            out[name + ".meta"] = f"{p.path}\n{p.owner}\n{p.permissions}\ntrue\n".encode()
        else:
            out[name] = (p.script or "").encode()
    return out


CLOUD_SCRIPT = "/var/lib/cloud/scripts/per-boot/torpor-setup"


# The per-boot script of a cloud-init guest: torpor's setup and provisioning from the seed; a seed that is not
# there fails it, so that cloud-init (and `start`) report the boot as failed rather than skip them unseen.
PER_BOOT_SETUP = """#!/bin/sh
[ -f /run/cidata/torpor/lib/setup ] || { echo "torpor: the cidata seed is not mounted at /run/cidata" >&2; exit 1; }
sh /run/cidata/torpor/lib/setup || exit 1
r=$(sh /run/cidata/torpor/lib/provision)
echo "torpor provisioning: $r"
case "$r" in failed:*) exit 1 ;; esac
"""


def _setup_bootcmd() -> list[str]:
    """cloud-init's boot command that mounts the seed at /run/cidata and writes the per-boot script that runs
    torpor's ``setup`` and ``provision`` scripts from it (the default guest's, carried in the seed)."""
    script = (
        'mkdir -p /run/cidata "${0%/*}"; mountpoint -q /run/cidata || '
        "mount -o ro /dev/disk/by-label/cidata /run/cidata; "
        'printf %s "$1" > "$0" && chmod 755 "$0"'
    )
    return ["sh", "-c", script, CLOUD_SCRIPT, PER_BOOT_SETUP]


def files(
    name: str,
    iid: str,
    user: GuestUser,
    pubkeys: list[str],
    *,
    provision: list[Provision],
    mounts: list[Mount],
    mount_type: str = "reverse-sshfs",
    setup: Setup | None = None,
) -> dict[str, bytes]:
    """The seed's files by path; ``pubkeys`` are the SSH public keys the user may log in with."""
    from importlib import resources

    import yaml

    setup = setup or Setup()
    hostname = f"torpor-{name}"
    meta = {"instance-id": iid, "local-hostname": hostname}
    cloud_user: dict[str, object] = {
        "name": user.name,
        "uid": user.uid,
        "homedir": user.home,
        "shell": user.shell,
        **({"gecos": user.comment} if user.comment else {}),
        **({"sudo": "ALL=(ALL) NOPASSWD:ALL"} if user.sudo else {}),
        "lock_passwd": True,
        "ssh_authorized_keys": [k.strip() for k in pubkeys],
        **({"groups": list(user.groups)} if user.groups else {}),
    }
    user_data: dict[str, object] = {
        "hostname": hostname,
        "users": [cloud_user],
        # Host keys of the fast kinds only (OpenSSH clients have taken ed25519 since 6.5): cloud-init's SSH set-up
        # took 10.5 s with an RSA key and under 0.3 s without at a first boot of the Docker image under TCG, ready
        # 57.6 s against 45.9 s (`cloud-init analyze blame`, 2026-12-07).  No GRUB to tell debconf about (1.2 s).
        "ssh_genkeytypes": ["ed25519", "ecdsa"],
        "grub_dpkg": {"enabled": False},
    }
    if setup.upgrade_packages:
        user_data["package_upgrade"] = True
    # cloud-init's "bootcmd" runs on every boot, early: the boot scripts, and the per-boot script that runs
    # the other provisioning modes in Lima's order (torpor/lib/provision, as in the default guest).
    bootcmd: list[list[str]] = [["/bin/sh", "-c", p.script or ""] for p in provision if p.mode == "boot"]
    bootcmd.insert(0, _setup_bootcmd())
    if mounts:
        bootcmd.insert(0, _mount_bootcmd(mounts, mount_type, user))
    user_data["bootcmd"] = bootcmd
    env = {
        "TORPOR_INSTANCE_ID": iid,
        "TORPOR_HOSTNAME": hostname,
        "TORPOR_USER": user.name,
        "TORPOR_UID": str(user.uid),
        "TORPOR_HOME": user.home,
        "TORPOR_SHELL": user.shell,
        "TORPOR_COMMENT": user.comment,
        "TORPOR_SUDO": "true" if user.sudo else "false",
    }
    rootfs = resources.files("torpor.guest") / "rootfs"
    out = {
        "meta-data": yaml.safe_dump(meta, sort_keys=False).encode(),
        "user-data": b"#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False).encode(),
        "torpor/env": "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode(),
        "torpor/authorized_keys": "".join(k.strip() + "\n" for k in pubkeys).encode(),
        "torpor/lib/setup": (rootfs / "setup").read_bytes(),
        "torpor/lib/provision": (rootfs / "provision").read_bytes(),
        "torpor/lib/yq.py": (rootfs / "yq.py").read_bytes(),
        **setup_files(setup),
        **provision_files(provision),
    }
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
    setup: Setup | None = None,
) -> Path:
    path = inst_dir / filenames.CIDATA
    seed = files(
        name,
        instance_id(inst_dir),
        user,
        pubkeys,
        provision=provision,
        mounts=mounts,
        mount_type=mount_type,
        setup=setup,
    )
    iso = build_iso(seed)
    atomic.write_bytes(path, iso, 0o600)
    return path
