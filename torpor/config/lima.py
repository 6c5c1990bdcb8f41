"""Lima's ``lima.yaml``, read as Lima reads it, before torpor's schema validates it.

Every field of Lima's templates has one fate here: implemented (the schema has it, with Lima's meaning),
ignored with a one-line warning that says why (macOS-only features, devices torpor's QEMU machine does not
have), or refused with what to use instead.  A ``null`` means "the default", as in Lima.  ``base`` templates are
merged in as Lima's ``limactl create`` embeds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torpor.config.machine import host_arch
from torpor.errors import ConfigError

# The Lima release whose lima.yaml fields this torpor version follows.
LIMA_VERSION = "2.2.0"


def strip_nulls(value: Any) -> Any:
    """``value`` without its ``null`` mapping entries and list items: Lima's null is the default."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value if v is not None]
    return value


# --- base templates -----------------------------------------------------------------------------------------

# Lima's image templates that name a guest torpor has: the template torpor reads for them instead.
LIMA_IMAGE_TEMPLATES = {"_images/debian-12": "_images/debian-12", "_default/mounts": "_default/mounts"}


def _locator(entry: Any, where: str) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("url"), str):
        return str(entry["url"])
    raise ConfigError(f"{where}: base entries are a path, a template: name, or {{url: ..., digest: ...}}")


def read_base(locator: str, relative_to: Path | None) -> tuple[str, str, Path | None]:
    """The text of the base template ``locator``, its name in messages, and the directory its own relative
    bases are read from (None for torpor's built-in templates)."""
    if locator.startswith("template:"):
        name = locator.split(":", 1)[1].lstrip("/").removesuffix(".yaml")
        path = resources.files("torpor.config").joinpath("templates", *f"{name}.yaml".split("/"))
        if not path.is_file():
            if name.startswith("_images/"):
                raise ConfigError(
                    f"base {locator}: torpor has no guest for {name.removeprefix('_images/')}",
                    hint="use template:_images/debian-12 (torpor's Debian 12), or images: with a cloud image's "
                    "location instead of the base",
                )
            from torpor.config.layering import template_names

            raise ConfigError(
                f"base {locator}: torpor has no template {name!r}",
                hint=f"torpor's templates: {', '.join(template_names())}",
            )
        return path.read_text(), locator, None
    text, path = read_local(locator, relative_to, f"base {locator}")
    return text, str(path), path.parent


def read_local(locator: str, relative_to: Path | None, where: str) -> tuple[str, Path]:
    """The text of a local file named by a path (relative to ``relative_to``) or a ``file://`` URL, and its path;
    a ConfigError beginning with ``where`` for a download URL or a file that cannot be read."""
    if re.match(r"[a-z][a-z0-9+.-]*://", locator) and not locator.startswith("file://"):
        raise ConfigError(f"{where}: torpor reads files only ({locator})", hint="download it and name the local path")
    path = Path(locator.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = (relative_to or Path.cwd()) / path
    try:
        return path.read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def embed_bases(
    data: dict[str, Any],
    relative_to: Path | None,
    parse: Callable[[str, str], dict[str, Any]],
    seen: tuple[str, ...] = (),
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """``data`` with its ``base`` templates merged in (recursively) and removed, as ``limactl create`` does.

    A base that cannot be read raises a ConfigError, or with ``problems`` given is added to them and left out.
    """
    bases = data.get("base")
    if bases is None:
        return data
    out = {k: v for k, v in data.items() if k != "base"}
    for entry in bases if isinstance(bases, list) else [bases]:
        try:
            locator = _locator(entry, "base")
            text, name, base_dir = read_base(locator, relative_to)
            if name in seen:
                raise ConfigError(f"base {locator}: a template that is its own base ({' -> '.join([*seen, name])})")
            base = embed_bases(strip_nulls(parse(text, name)), base_dir, parse, (*seen, name), problems)
        except ConfigError as e:
            if problems is None:
                raise
            problems.append(f"{e.message}" + (f" ({e.hint})" if e.hint else ""))
            continue
        out = merge_base(out, base)
    return out


def embed_files(data: dict[str, Any], relative_to: Path | None) -> None:
    """Read each ``provision`` and ``probes`` entry's ``file`` (a path, or ``{url: path}``) into its ``script``
    (``content`` for ``mode: data``), as Lima does when it creates an instance."""
    for kind in ("provision", "probes"):
        for i, entry in enumerate(data.get(kind) or []):
            if not isinstance(entry, dict) or "file" not in entry:
                continue
            where = f"{kind}[{i}].file"
            text, _ = read_local(_locator(entry["file"], where), relative_to, where)
            target = "content" if entry.get("mode") == "data" else "script"
            if entry.get(target):
                raise ConfigError(f"{kind}[{i}]: give either file or {target}, not both")
            data[kind][i] = {**{k: v for k, v in entry.items() if k != "file"}, target: text}


def merge_base(tmpl: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Lima's merge of a base into a template: the template's values win, mappings merge, lists append the
    base's entries after the template's, except ``provision`` and ``probes`` (the base's run first), ``dns`` (the
    base's only if the template has none) and ``mounts`` (an entry for a location already there fills in its
    missing fields); ``minimumLimaVersion`` is the higher one."""
    out = dict(tmpl)
    for k, v in base.items():
        if k not in out:
            out[k] = v
        elif k == "minimumLimaVersion":
            out[k] = max(str(out[k]), str(v), key=_version_key)
        elif k == "dns":
            out[k] = out[k] or v
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = merge_base(out[k], v)
        elif isinstance(out[k], list) and isinstance(v, list):
            if k in ("provision", "probes"):
                out[k] = v + out[k]
            elif k == "mounts":
                out[k] = _combine_mounts(out[k] + v)
            elif k == "mountTypesUnsupported":
                out[k] = list(dict.fromkeys(out[k] + v))
            else:
                out[k] = out[k] + v
    return out


def _combine_mounts(mounts: list[Any]) -> list[Any]:
    out: list[Any] = []
    by_location: dict[str, dict[str, Any]] = {}
    for m in mounts:
        loc = m.get("location") if isinstance(m, dict) else None
        if isinstance(loc, str) and loc in by_location:
            earlier = by_location[loc]
            for k, v in m.items():
                earlier.setdefault(k, v)
            continue
        copy = dict(m) if isinstance(m, dict) else m
        if isinstance(loc, str):
            by_location[loc] = copy
        out.append(copy)
    return out


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3]) or (0,)


# --- the fate of each field ---------------------------------------------------------------------------------


def _on(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true")


def _non_empty(v: Any) -> bool:
    return bool(v)


def _not_none_display(v: Any) -> bool:
    return isinstance(v, str) and v.lower() not in ("", "none", "default")


# path -> (does this value do something, why torpor leaves it out).  A value for which the test is false is what
# torpor does anyway, and is dropped without a word.
IGNORED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rosetta": (lambda v: isinstance(v, dict) and _on(v.get("enabled")), "Rosetta is macOS-only"),
    "vmOpts.vz": (
        lambda v: isinstance(v, dict) and any(_on(x) for x in (v.get("rosetta") or {}).values()),
        "vz options are macOS-only",
    ),
    "vmOpts.krunkit": (_non_empty, "krunkit is macOS-only"),
    "audio": (
        lambda v: isinstance(v, dict) and _not_none_display(v.get("device")),
        "torpor's guests have no sound device",
    ),
    "video": (
        lambda v: (
            isinstance(v, dict) and (_not_none_display(v.get("display")) or bool((v.get("vnc") or {}).get("display")))
        ),
        "torpor's guests are headless (no display)",
    ),
    "networks": (
        _non_empty,
        "torpor's guests have QEMU's user-mode network only (reachable through port "
        "forwards); no socket_vmnet or vzNAT network is added",
    ),
    "mountInotify": (_on, "host file changes are not sent to the guest as inotify events"),
    "firmware.images": (
        _non_empty,
        "torpor's UEFI is the firmware QEMU's descriptors name (/usr/share/qemu/firmware; Debian's ovmf)",
    ),
    "ssh.overVsock": (_on, "torpor reaches SSH through QEMU's user network, not vsock"),
    "nestedVirtualization": (_on, "nested virtualization is not offered to torpor's guests"),
    "tpm": (_on, "torpor's guests have no TPM"),
    "guestInstallPrefix": (lambda v: v not in ("/usr/local", ""), "torpor installs nothing into the guest"),
    "hostResolver.ipv6": (_on, "QEMU's user network answers DNS over IPv4"),
    "mounts[].virtiofs": (_non_empty, "virtiofs queue sizes are virtiofsd's defaults"),
}

# path -> what to do instead.  Checked on the value: the callable says whether the value is refused.
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "vmType": (lambda v: v not in ("qemu", "vz", "krunkit"), "torpor runs QEMU (vmType: qemu)"),
    "os": (lambda v: str(v).lower() != "linux", "torpor runs Linux guests (os: Linux)"),
    "osOpts": (_non_empty, "osOpts are for non-Linux guests; torpor runs Linux guests"),
    "arch": (lambda v: v not in ("x86_64", "aarch64", "default"), "torpor runs x86_64 and aarch64 guests"),
    "provision[].mode": (
        lambda v: v == "ansible",
        "run ansible-playbook from the host (`torpor show-ssh NAME` gives the address), or a `mode: system` script",
    ),
    "provision[].playbook": (_non_empty, "run ansible-playbook from the host (`torpor show-ssh NAME`)"),
    "mountType": (lambda v: v == "wsl2", "wsl2 mounts are Windows-only; use reverse-sshfs, 9p or virtiofs"),
    "portForwards[].proto": (lambda v: v not in ("tcp", "udp", "any"), "proto is tcp, udp or any"),
}

# Lima fields torpor turns into its own before validating (see :func:`normalize`).
TRANSLATED = ("base", "cpuType", "plain", "mountTypesUnsupported", "vmType", "arch", "os")


def field_names() -> set[str]:
    """The names of the Lima fields handled here (beyond torpor's schema), for "did you mean"."""
    return {p.rsplit(".", 1)[-1].removesuffix("[]") for p in (*IGNORED, *REFUSED, *TRANSLATED)}


@dataclass
class Reading:
    """What reading a configuration for torpor said: warnings to show and problems that refuse it."""

    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _walk(data: Any, path: str, fn: Callable[[str, str, Any, Any, Any], None], shown: str = "") -> None:
    """Call ``fn(path, shown, value, container, key)`` for every mapping entry below ``data``: ``path`` names
    list items ``[]``, ``shown`` with their index."""
    if isinstance(data, dict):
        for k in list(data):
            if k not in data:
                continue
            p = f"{path}.{k}" if path else str(k)
            q = f"{shown}.{k}" if shown else str(k)
            fn(p, q, data[k], data, k)
            if k in data:
                _walk(data[k], p, fn, q)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _walk(item, path + "[]", fn, f"{shown}[{i}]")


def normalize(data: dict[str, Any]) -> tuple[dict[str, Any], Reading]:
    """``data`` (nulls stripped, bases embedded) as torpor's schema reads it, with the warnings and refusals."""
    data = dict(data)
    reading = Reading()

    def fate(path: str, shown: str, value: Any, container: Any, key: Any) -> None:
        if path in REFUSED and REFUSED[path][0](value):
            what = f"{value!r} is" if isinstance(value, (str, int, float, bool)) else "is"
            reading.problems.append(f"{shown}: {what} not supported: {REFUSED[path][1]}")
            if path == "provision[].mode":  # the entry's other fields are that mode's
                container.clear()
                container["mode"] = "system"
                container["script"] = ""
            else:
                container.pop(key)
        elif path in IGNORED:
            does, why = IGNORED[path]
            if does(value):
                reading.warnings.append(f"`{shown}` is ignored: {why}")
            container.pop(key)

    _walk(data, "", fate)
    _translate(data, reading)
    reading.problems += _undefined_params(data)
    return data, reading


def _translate(data: dict[str, Any], reading: Reading) -> None:
    """Lima's fields that become torpor's own: vmType, os, arch default, cpuType, plain, mountTypesUnsupported,
    containerd, proto any, minimumLimaVersion."""
    vm_type = data.pop("vmType", "qemu")
    if vm_type in ("vz", "krunkit"):
        reading.warnings.append(f"vmType {vm_type} is macOS-only: torpor uses qemu")
    data.pop("os", None)
    if data.get("arch") == "default":
        data["arch"] = host_arch()
    # Lima's deprecated top-level cpuType is vmOpts.qemu.cpuType
    if "cpuType" in data:
        cpu = data.pop("cpuType")
        qemu = data.setdefault("vmOpts", {}).setdefault("qemu", {})
        if isinstance(cpu, dict) and isinstance(qemu, dict):
            qemu["cpuType"] = {**cpu, **(qemu.get("cpuType") or {})}
    if _on(data.pop("plain", False)):
        # Lima's plain mode: no mounts, no port forwards but static ones, no containerd
        data.pop("mounts", None)
        data.pop("containerd", None)
        data["portForwards"] = [p for p in data.get("portForwards") or [] if isinstance(p, dict) and p.get("static")]
    unsupported = data.pop("mountTypesUnsupported", None) or []
    if isinstance(unsupported, list) and unsupported:
        chosen = data.get("mountType")
        usable = [t for t in ("reverse-sshfs", "9p", "virtiofs") if t not in unsupported]
        if chosen is None and usable:
            data["mountType"] = usable[0]
        elif chosen is None:
            if data.get("mounts"):
                reading.problems.append("mountTypesUnsupported leaves no mount type torpor has; remove the mounts")
        elif chosen in unsupported:
            reading.problems.append(f"mountType: {chosen} is in mountTypesUnsupported; choose another mountType")
    containerd = data.get("containerd")
    if isinstance(containerd, dict) and (_on(containerd.get("system")) or _on(containerd.get("user"))):
        reading.warnings.append(
            "`containerd` is ignored: torpor does not install containerd and nerdctl into the guest; "
            "template:docker has Docker (`torpor start docker`)"
        )
    for i, pf in enumerate(data.get("portForwards") or []):
        if isinstance(pf, dict) and pf.get("proto") == "any":
            data["portForwards"][i] = {**pf, "proto": "tcp"}
            reading.warnings.append(
                f"portForwards[{i}]: proto any forwards TCP (add a rule with proto: udp and its ports for UDP)"
            )
    version = data.get("minimumLimaVersion")
    if version is not None and _version_key(str(version)) > _version_key(LIMA_VERSION):
        reading.warnings.append(
            f"minimumLimaVersion {version}: torpor follows Lima {LIMA_VERSION}'s fields; newer ones may be refused"
        )


def _undefined_params(data: dict[str, Any]) -> list[str]:
    """``{{.Param.X}}`` used where ``param`` has no X (Lima refuses those too)."""
    params = data.get("param") or {}
    out: list[str] = []

    def check(path: str, shown: str, value: Any, container: Any, key: Any) -> None:
        if isinstance(value, str) and "{{" in value:
            for name in re.findall(r"\.Param\.(\w+)", value):
                if not isinstance(params, dict) or name not in params:
                    out.append(f"{shown}: uses {{{{.Param.{name}}}}} but param has no {name}")

    _walk(data, "", check)
    return sorted(set(out))


# --- template variables -------------------------------------------------------------------------------------


def host_variables(name: str, inst_dir: Path, param: dict[str, str]) -> dict[str, Any]:
    """The variables of Lima's host-side templates (hostSocket, copyToHost's host, message)."""
    home = os.path.expanduser("~")
    import getpass

    user = getpass.getuser()
    return {
        "Name": name,
        "Dir": str(inst_dir),
        "Home": home,
        "HostHomeDir": home,
        "User": user,
        "UID": os.getuid(),
        "GlobalTempDir": "/tmp",
        "TempDir": str(inst_dir / "tmp"),
        "HostOS": "linux",
        "HostArch": "amd64",
        "Param": dict(param),
        "Instance": {"Name": name, "Dir": str(inst_dir)},
    }


def guest_variables(
    name: str, *, hostname: str, user: str, uid: int, home: str, param: dict[str, str]
) -> dict[str, Any]:
    """The variables of Lima's guest-side templates (provision scripts and data, probes, guestSocket)."""
    return {
        "Name": name,
        "Hostname": hostname,
        "User": user,
        "UID": uid,
        "Home": home,
        "HostOS": "linux",
        "HostArch": "amd64",
        "Param": dict(param),
    }
