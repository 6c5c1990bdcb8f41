"""The instance YAML schema.  Field names follow Lima's ``lima.yaml`` where torpor has the same concept, and are
the Python names too (camelCase): the YAML, the JSON records and the code name a field the same way.

Unknown fields are errors (``extra="forbid"``): a field torpor does not implement must not be silently ignored.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from torpor.config import machine

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: object) -> int:
    """Parse a byte size such as ``4GiB``, ``512MiB``, ``10G`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 4GiB")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; use a number with a unit such as 512MiB or 4GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = _UNITS[unit.lower()]
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n}B"


Size = Annotated[int, BeforeValidator(parse_size)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def check_digest(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", v):
        raise ValueError("digest must be sha256: followed by 64 lowercase hex digits, or sha512: and 128")
    return v


class File(Model):
    location: str
    digest: str | None = None

    _digest = field_validator("digest")(check_digest)


class Kernel(File):
    cmdline: str = ""


class Image(Model):
    """One entry of ``images``: a disk image (``location``) and/or a kernel and initrd to boot directly.

    ``location: build:default`` names the small guest torpor builds itself from Debian packages, ``build:debian``
    a full Debian system it builds with mmdebstrap (see ``torpor image``).
    """

    location: str | None = None
    arch: str = ""  # default: the instance's arch, as in Lima
    digest: str | None = None
    kernel: Kernel | None = None
    initrd: File | None = None
    # Lima's labels of an image (a distribution's variant, an architecture's variant): shown, not acted on.
    variant: str = ""
    archVariant: str = ""

    _digest = field_validator("digest")(check_digest)

    @model_validator(mode="after")
    def _something_to_boot(self) -> Image:
        if self.location is None and self.kernel is None:
            raise ValueError("an image needs a location (disk image) or a kernel")
        if self.initrd is not None and self.kernel is None:
            raise ValueError("initrd given without kernel")
        return self


class SSH(Model):
    localPort: int = Field(0, ge=0, le=65535)
    loadDotSSHPubKeys: bool = False
    # `torpor shell`'s ssh: -A, -X, -Y (Lima's meanings)
    forwardAgent: bool = False
    forwardX11: bool = False
    forwardX11Trusted: bool = False


class Firmware(Model):
    # A disk image's firmware: BIOS (true) or UEFI (false); unset, what the image holds decides (BIOS where it has
    # a BIOS boot loader).  A guest booted from its own kernel file chooses none.
    legacyBIOS: bool | None = None


class PortForward(Model):
    guestPort: int | None = Field(None, ge=1, le=65535)
    guestPortRange: tuple[int, int] | None = None
    hostIP: str = "127.0.0.1"
    hostPort: int | None = Field(None, ge=0, le=65535)
    hostPortRange: tuple[int, int] | None = None
    # The guest address a listening socket must be on: 127.0.0.1 (the default) matches loopback and wildcard
    # listeners, 0.0.0.0 only wildcard ones (as Lima; guestIPMustBeZero: true is the same as guestIP 0.0.0.0).
    guestIP: str = "127.0.0.1"
    guestIPMustBeZero: bool = False
    proto: Literal["tcp", "udp"] = "tcp"  # udp: forwarded by QEMU from the boot on (guestPort or a range)
    ignore: bool = False
    static: bool = False  # Lima's: forwarded in plain mode too
    reverse: bool = False  # a socket forward the other way: hostSocket (the host's) reached at guestSocket
    # A unix socket in the guest, forwarded to hostSocket on the host (relative: under the instance directory).
    guestSocket: str | None = None
    hostSocket: str | None = None

    @field_validator("hostSocket")
    @classmethod
    def _expand_host_socket(cls, v: str | None) -> str | None:
        return expand_host_path(v) if v is not None else None

    @model_validator(mode="after")
    def _socket_or_ports(self) -> PortForward:
        if self.guestSocket is None and self.hostSocket is None:
            return self
        if self.guestSocket is None or self.hostSocket is None:
            raise ValueError("guestSocket and hostSocket go together: a socket forward needs both")
        if not self.guestSocket.startswith("/"):
            raise ValueError(f"guestSocket {self.guestSocket!r} must be an absolute path in the guest")
        if self.guestPort is not None or self.guestPortRange is not None or self.hostPort is not None:
            raise ValueError("a socket forward (guestSocket, hostSocket) has no guestPort, guestPortRange, hostPort")
        return self

    @model_validator(mode="after")
    def _reverse(self) -> PortForward:
        if self.reverse and self.guestSocket is None:
            raise ValueError("reverse forwards a host socket into the guest: it needs guestSocket and hostSocket")
        return self

    @model_validator(mode="after")
    def _udp(self) -> PortForward:
        if self.proto == "udp":
            if self.guestSocket is not None:
                raise ValueError("a socket forward has no proto: udp")
            if self.guestPort is None and self.guestPortRange is None:
                raise ValueError("a UDP forward names its guestPort (or guestPortRange)")
            low, high = self.guestPortRange or (self.guestPort or 0, self.guestPort or 0)
            if high - low >= 256:
                raise ValueError("a UDP forward covers at most 256 ports")
        return self

    @model_validator(mode="after")
    def _ranges(self) -> PortForward:
        for name in ("guestPortRange", "hostPortRange"):
            r = getattr(self, name)
            if r is not None and not 0 <= r[0] <= r[1] <= 65535:
                raise ValueError(f"{name} {list(r)} must be [low, high] with 0 <= low <= high <= 65535")
        if self.hostPortRange is not None:
            guest = self.guestPortRange or (self.guestPort or 0, self.guestPort or 0)
            if self.guestPort is None and self.guestPortRange is None:
                raise ValueError("hostPortRange needs guestPortRange (or guestPort)")
            if guest[1] - guest[0] != self.hostPortRange[1] - self.hostPortRange[0]:
                raise ValueError("hostPortRange must be as wide as guestPortRange (or guestPort)")
        if self.guestIP not in ("127.0.0.1", "0.0.0.0"):
            raise ValueError(
                f"guestIP {self.guestIP}: torpor forwards ports on the guest's loopback (127.0.0.1) or wildcard "
                "(0.0.0.0) address"
            )
        return self


def expand_host_path(path: str) -> str:
    """``~`` and ``$HOME`` at the start of a host path are the host user's home, as Lima reads them."""
    home = os.path.expanduser("~")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path == "$HOME" or path.startswith("$HOME/"):
        path = home + path[5:]
    return os.path.normpath(path) if path else path


class SSHFS(Model):
    """Lima's per-mount ``sshfs`` block."""

    cache: bool = True
    followSymlinks: bool = False
    # Lima's choice between its built-in SFTP server and OpenSSH's; torpor always uses OpenSSH's sftp-server.
    sftpDriver: Literal["", "builtin", "openssh-sftp-server"] = ""


class NineP(Model):
    """Lima's per-mount ``9p`` block (mountType: 9p), with Lima's defaults."""

    securityModel: Literal["passthrough", "mapped-xattr", "mapped-file", "none"] = "none"
    protocolVersion: Literal["9p2000", "9p2000.u", "9p2000.L"] = "9p2000.L"
    msize: Size = Field(parse_size("128KiB"), ge=4096)
    cache: Literal["none", "loose", "fscache", "mmap"] | None = None  # default: fscache read-only, mmap writable


class Mount(Model):
    """One host directory in the guest (Lima's ``mounts`` entry)."""

    location: str
    mountPoint: str = ""  # default: the same path as ``location`` (filled in by validation)
    writable: bool = False
    sshfs: SSHFS = SSHFS()
    nineP: NineP = Field(NineP(), alias="9p")

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        v = expand_host_path(v)
        if not os.path.isabs(v):
            raise ValueError(f"location {v!r} must be an absolute path (or start with ~)")
        return _plain_path(v)

    @field_validator("mountPoint", mode="before")
    @classmethod
    def _mount_point(cls, v: object) -> object:
        if v is None:  # Lima's null: the default
            return ""
        if not isinstance(v, str) or not v:
            return v
        v = expand_host_path(v)
        if not os.path.isabs(v) or v == "/":
            raise ValueError(f"mountPoint {v!r} must be an absolute path in the guest other than /")
        return _plain_path(v)

    @model_validator(mode="after")
    def _mount_point_default(self) -> Mount:
        # Filled in here, so that every reader of the configuration (records, the guest's table) finds it.
        if not self.mountPoint:
            object.__setattr__(self, "mountPoint", self.location)
        return self


def _plain_path(v: str) -> str:
    if any(c in v for c in "\t\n\r"):
        raise ValueError(f"{v!r}: a path with a tab or a line break in it cannot be mounted")
    return v


class Provision(Model):
    """One ``provision`` entry, with Lima's modes.  Every boot runs them, in Lima's order: ``boot`` early (before
    the network), then ``dependency``, ``data`` (a file written), ``system`` (as root), ``user`` (as the user).
    ``file`` (a path relative to the template) is read into ``script`` (``content`` for data) when the instance
    is created."""

    mode: Literal["system", "user", "boot", "dependency", "data", "yq"] = "system"
    script: str | None = None
    skipDefaultDependencyResolution: bool = False  # (torpor's guests come with what torpor needs)
    # mode: data
    path: str | None = None
    content: str | None = None
    owner: str = "root:root"
    permissions: str = "644"
    overwrite: bool = True
    # mode: yq (assignments only, on a JSON, YAML or INI file; needs python3 in the guest)
    expression: str | None = None
    format: Literal["auto", "json", "yaml", "ini"] = "auto"

    @field_validator("permissions", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)  # YAML reads 644 as a number; Lima means the octal digits
        return v

    @model_validator(mode="after")
    def _what(self) -> Provision:
        if self.mode == "yq":
            from torpor.config.edits import assignments

            if self.path is None or self.expression is None:
                raise ValueError("mode: yq needs path and expression")
            ops = assignments(self.expression, "expression")
            fmt = yq_format(self.path, self.format)
            if fmt not in ("json", "yaml", "ini"):
                raise ValueError(
                    f"mode: yq edits JSON, YAML and INI files; give format: json, yaml or ini for {self.path}"
                )
            if fmt == "ini" and any(len(path) != 2 or append for path, append, _ in ops):
                raise ValueError("mode: yq on an INI file sets .Section.key = value")
        elif self.mode == "data":
            if self.path is None or self.content is None:
                raise ValueError("mode: data needs path and content")
            if not self.path.startswith(("/", "{{")):
                raise ValueError(f"path {self.path!r} must be an absolute path in the guest")
            if not re.fullmatch(r"[0-7]{3,4}", self.permissions):
                raise ValueError(f"permissions {self.permissions!r} must be octal digits such as 644")
        elif self.script is None:
            raise ValueError(f"mode: {self.mode} needs a script")
        return self


def yq_format(path: str, given: str) -> str:
    """The format a ``mode: yq`` entry edits: as given, or by the file's extension (as yq's "auto")."""
    if given != "auto":
        return given
    ext = path.rsplit(".", 1)[-1].lower()
    return {"yml": "yaml", "yaml": "yaml", "json": "json", "ini": "ini"}.get(ext, ext)


class Probe(Model):
    """Lima's readiness probe: a script run as the user once the guest is up; start waits for it to succeed."""

    mode: Literal["readiness"] = "readiness"
    description: str = ""
    script: str
    hint: str = ""


class User(Model):
    """The guest user (Lima's ``user``); unset fields follow the host user as Lima does."""

    name: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_-]{0,30}$")
    comment: str | None = None
    uid: int | None = Field(None, ge=1, le=2**31)
    home: str | None = None
    shell: str = "/bin/bash"
    passwordlessSudo: bool = True


class HostResolver(Model):
    # QEMU's user network always answers DNS with the host's resolver; `enabled`/`ipv6` are Lima's switches for
    # its own resolver and change nothing here.
    enabled: bool = True
    ipv6: bool = False
    hosts: dict[str, str] = Field(default_factory=dict)  # name -> IP, or another name defined here


class CACerts(Model):
    removeDefaults: bool = False
    files: list[str] = Field(default_factory=list)  # host paths, read when the seed is written
    certs: list[str] = Field(default_factory=list)  # PEM text


class Containerd(Model):
    system: bool = False
    user: bool = False
    archives: list[File] = Field(default_factory=list)


class CopyToHost(Model):
    guest: str
    host: str
    skipIfMissing: bool = False
    deleteOnStop: bool = False


class AdditionalDisk(Model):
    """Lima's ``additionalDisks`` entry: a disk made with ``torpor disk create NAME``, mounted at
    /mnt/lima-NAME in the guest (formatted first if it holds no filesystem and ``format`` is true)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    format: bool = True
    fsType: str = Field("ext4", pattern=r"^[a-z0-9]+$")
    fsArgs: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, v: object) -> object:
        return {"name": v} if isinstance(v, str) else v


class QemuOpts(Model):
    minimumVersion: str | None = Field(None, pattern=r"^\d+(\.\d+){0,2}$")
    cpuType: dict[str, str] = Field(default_factory=dict)  # arch -> QEMU -cpu model


class VMOpts(Model):
    qemu: QemuOpts = QemuOpts()


Arch = Literal["x86_64", "aarch64"]


def default_arch() -> Arch:
    """The host's architecture where torpor runs it natively, else x86_64 (emulated)."""
    return "aarch64" if machine.host_arch() == "aarch64" else "x86_64"


class Config(Model):
    """The effective configuration of an instance (after layering)."""

    vmType: Literal["qemu"] = "qemu"
    arch: Arch = Field(default_factory=default_arch)
    cpus: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=255)
    memory: Size = Field(parse_size("1GiB"), ge=parse_size("64MiB"))
    disk: Size = Field(parse_size("10GiB"), ge=parse_size("256MiB"))
    images: list[Image] = Field(default_factory=list, validate_default=True)
    firmware: Firmware = Firmware()
    ssh: SSH = SSH()
    portForwards: list[PortForward] = Field(default_factory=list)
    provision: list[Provision] = Field(default_factory=list)
    probes: list[Probe] = Field(default_factory=list)
    mounts: list[Mount] = Field(default_factory=list)
    user: User = User()
    env: dict[str, str] = Field(default_factory=dict)
    param: dict[str, str] = Field(default_factory=dict)
    timezone: str | None = None  # default: the host's
    dns: list[str] = Field(default_factory=list)
    hostResolver: HostResolver = HostResolver()
    propagateProxyEnv: bool = True
    caCerts: CACerts = CACerts()
    upgradePackages: bool = False
    containerd: Containerd = Containerd()
    copyToHost: list[CopyToHost] = Field(default_factory=list)
    additionalDisks: list[AdditionalDisk] = Field(default_factory=list)
    message: str = ""
    vmOpts: VMOpts = VMOpts()
    minimumLimaVersion: str | None = None  # accepted: torpor reads the fields of the Lima version in torpor.config.lima
    # Lima's mount types.  torpor's reverse-sshfs runs over a virtio-serial channel rather than SSH, and its mounts
    # survive a save; 9p and virtiofs ones are unmounted for a save (QEMU cannot save them mounted) and mounted
    # again after.  virtiofs needs a virtiofsd on the host.
    mountType: Literal["reverse-sshfs", "9p", "virtiofs"] = "reverse-sshfs"
    saveOnStop: bool = Field(False, description="save the running state on stop and restore it on start")
    # copy: RAM is copied into the state file when saving (mapped-ram where QEMU has it, else a stream).
    # instant: guest RAM lives in a file in the instance directory all the time, so saving writes only device
    # state and restoring maps the file.
    saveMode: Literal["copy", "instant"] = "copy"
    bootTimeout: int = Field(300, ge=1, description="seconds to wait for the guest to report ready")
    shutdownTimeout: int = Field(60, ge=1, description="seconds to wait for a clean guest shutdown")

    @field_validator("env", "param", mode="before")
    @classmethod
    def _strings(cls, v: object) -> object:
        # YAML reads `true` and `8` as a bool and a number; Lima's maps hold strings
        if isinstance(v, dict):
            return {k: _scalar_text(x) for k, x in v.items()}
        return v

    @field_validator("env", "param")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        # (env's are variables; param's become PARAM_<key> variables)
        for k in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"{k!r}: a name of letters, digits and _, not starting with a digit")
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        import ipaddress

        for addr in v:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"dns: {addr!r} is not an IP address") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", v):
            raise ValueError(f"timezone {v!r} is not a zone name such as Europe/Berlin or UTC")
        return v

    @field_validator("images")
    @classmethod
    def _has_images(cls, v: list[Image]) -> list[Image]:
        if not v:
            raise ValueError(
                "at least one image is required, for example images: [{location: 'build:default'}] "
                "(torpor's small guest) or [{location: 'build:debian'}]"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _images_default_to_the_arch(cls, data: object) -> object:
        """An image without an ``arch`` is for the instance's (Lima's default)."""
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            arch = data.get("arch") or default_arch()
            images = [
                dict(img, arch=img.get("arch") or arch) if isinstance(img, dict) else img for img in data["images"]
            ]
            data = {**data, "images": images}
        return data

    @model_validator(mode="after")
    def _image_for_arch(self) -> Config:
        if self.images and not any(img.arch == self.arch for img in self.images):
            raise ValueError(f"images: none is for arch {self.arch}; add one with arch: {self.arch}")
        return self

    @field_validator("additionalDisks")
    @classmethod
    def _distinct_disks(cls, v: list[AdditionalDisk]) -> list[AdditionalDisk]:
        names = [d.name for d in v]
        if len(set(names)) != len(names):
            raise ValueError("a disk is listed twice")
        return v

    @field_validator("mounts")
    @classmethod
    def _distinct_mount_points(cls, v: list[Mount]) -> list[Mount]:
        seen: set[str] = set()
        for m in v:
            if m.mountPoint in seen:
                raise ValueError(f"two mounts at {m.mountPoint} in the guest; give one of them another mountPoint")
            seen.add(m.mountPoint)
        return v

    def image_for_arch(self) -> Image:
        for img in self.images:
            if img.arch == self.arch:
                return img
        raise ValueError(f"no image for arch {self.arch}")


def _scalar_text(v: object) -> object:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return v


def known_fields() -> list[str]:
    """The name of every field of every part of the schema (for "did you mean")."""
    names: set[str] = set()
    for model in (
        Config,
        Image,
        Kernel,
        SSH,
        PortForward,
        SSHFS,
        NineP,
        Mount,
        Provision,
        Probe,
        User,
        HostResolver,
        CACerts,
        Containerd,
        CopyToHost,
        QemuOpts,
        VMOpts,
    ):
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
    return sorted(names)
