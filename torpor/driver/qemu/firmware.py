"""The firmware a disk image boots with: SeaBIOS (QEMU's default) or UEFI (OVMF), and what a restore pins of it.

A guest with a kernel file of its own boots that kernel directly and chooses no firmware. A disk image boots through
its firmware, chosen by ``firmware.legacyBIOS`` (true: BIOS, false: UEFI) or, unset, by what the image holds: boot
code in its MBR is a BIOS boot loader (BIOS, which needs no firmware package and no variables file), an EFI system
partition without one wants UEFI. UEFI's code is QEMU's firmware descriptor's (``/usr/share/qemu/firmware``, as
libvirt reads them; the variant without Secure Boot), mapped read-only; its variables live in a per-instance copy of
the descriptor's template, ``efi-vars.fd``, which the guest writes like a machine's NVRAM.

A saved state holds the firmware in RAM as it ran and the variables as the guest left them: :func:`record` pins
the code file by identity and the variables by digest, and :func:`problems` says what changed since.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from torpor import subp
from torpor.errors import ConfigError, DriverError
from torpor.store import filenames, savedstate

BIOS = "bios"
UEFI = "uefi"
SECTOR = 512
HEAD = 34 * SECTOR  # the MBR, the GPT header and its 128 partition entries
ESP_GUID = b"(s*\xc1\x1f\xf8\xd2\x11\xbaK\x00\xa0\xc9>\xc9;"  # C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as GPT stores it
ESP_MBR_TYPE = 0xEF

# Where QEMU's firmware descriptors live, later directories overriding earlier ones by file name (QEMU's
# docs/interop/firmware.json), and the machine types torpor runs per arch.
DESCRIPTOR_DIRS = ("/usr/share/qemu/firmware", "/etc/qemu/firmware", "~/.config/qemu/firmware")
MACHINE_TYPES = {"x86_64": "pc-q35-", "aarch64": "virt-"}
# Features a descriptor may have that torpor's command line does not provide (SMM, enrolled keys, SEV...).
UNWANTED = {"secure-boot", "requires-smm", "enrolled-keys", "amd-sev-es", "amd-sev-snp", "intel-tdx"}
FALLBACK = {  # where distributions put it, for a QEMU without descriptors
    "x86_64": [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ],
    "aarch64": [
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
    ],
}
PACKAGES = {"x86_64": "ovmf", "aarch64": "qemu-efi-aarch64"}


class Firmware(NamedTuple):  # (on the restore path: no dataclass import)
    """What a firmware-booted VM's command line maps: UEFI's code (read-only) and its variables; for BIOS,
    neither (QEMU's own SeaBIOS)."""

    kind: str
    code: Path | None = None
    vars: Path | None = None

    @property
    def files(self) -> tuple[Path, Path] | None:
        return (self.code, self.vars) if self.code is not None and self.vars is not None else None


def boot_kinds(head: bytes) -> set[str]:
    """What the first sectors of a disk show it can boot with: ``bios`` for boot code in the MBR, ``uefi`` for
    an EFI system partition (in a GPT, or an MBR partition of type 0xEF)."""
    kinds = set()
    if head[510:512] == b"\x55\xaa":  # an MBR (or a GPT's protective one)
        if any(head[:440]):
            kinds.add(BIOS)
        if ESP_MBR_TYPE in (head[446 + 16 * i + 4] for i in range(4)):
            kinds.add(UEFI)
    if head[SECTOR : SECTOR + 8] == b"EFI PART":
        entries_lba = int.from_bytes(head[SECTOR + 72 : SECTOR + 80], "little")
        count = int.from_bytes(head[SECTOR + 80 : SECTOR + 84], "little")
        size = int.from_bytes(head[SECTOR + 84 : SECTOR + 88], "little")
        start = entries_lba * SECTOR
        for i in range(min(count, 128)):
            entry = head[start + i * size : start + i * size + 16] if size >= 16 else b""
            if entry == ESP_GUID:
                kinds.add(UEFI)
    return kinds


def read_head(disk: Path) -> bytes:
    """The first :data:`HEAD` bytes the guest sees of ``disk`` (through its qcow2 layers)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="torpor-head-") as tmp:
        out = Path(tmp) / "head"
        subp.run(["qemu-img", "dd", "-O", "raw", f"bs={HEAD}", "count=1", f"if={disk}", f"of={out}"])
        return out.read_bytes()


def choose(config: dict[str, Any], disk: Path) -> str:
    """The firmware kind a disk image boots with (see the module's docstring)."""
    legacy = (config.get("firmware") or {}).get("legacyBIOS")
    if config.get("arch") == "aarch64":
        if legacy:
            raise ConfigError(
                "firmware.legacyBIOS: aarch64 guests boot with UEFI only", hint="remove firmware.legacyBIOS"
            )
        return UEFI
    if legacy is not None:
        return BIOS if legacy else UEFI
    kinds = boot_kinds(read_head(disk))
    if BIOS in kinds:
        return BIOS
    if UEFI in kinds:
        return UEFI
    raise ConfigError(
        "the image has neither a BIOS boot loader nor an EFI system partition that torpor recognises",
        hint="set `firmware: {legacyBIOS: true}` (BIOS) or `{legacyBIOS: false}` (UEFI) to choose, or check "
        "that the image is a bootable disk",
    )


def find_uefi(arch: str) -> tuple[Path, Path]:
    """UEFI's code and variables template for ``arch``: from QEMU's firmware descriptors, else the usual paths."""
    by_name: dict[str, Path] = {}
    for d in DESCRIPTOR_DIRS:
        directory = Path(d).expanduser()
        if directory.is_dir():
            by_name.update({p.name: p for p in directory.glob("*.json")})
    for name in sorted(by_name):
        found = _descriptor_files(by_name[name], arch)
        if found is not None:
            return found
    for code, template in FALLBACK.get(arch, []):
        if Path(code).exists() and Path(template).exists():
            return Path(code), Path(template)
    raise DriverError(
        f"no UEFI firmware for {arch} found (QEMU's firmware descriptors, {', '.join(DESCRIPTOR_DIRS)})",
        hint=f"install it (Debian/Ubuntu: `sudo apt-get install {PACKAGES.get(arch, 'ovmf')}`), or set "
        "`firmware: {legacyBIOS: true}` for an image that also boots with BIOS",
    )


def _descriptor_files(path: Path, arch: str) -> tuple[Path, Path] | None:
    try:
        d = json.loads(path.read_text())
        mapping = d["mapping"]
        if "uefi" not in d.get("interface-types", []) or mapping.get("device") != "flash":
            return None
        if UNWANTED & set(d.get("features", [])):
            return None
        prefix = MACHINE_TYPES[arch]
        if not any(
            t.get("architecture") == arch and any(m.startswith(prefix) for m in t.get("machines", []))
            for t in d.get("targets", [])
        ):
            return None
        if mapping["executable"].get("format", "raw") != "raw" or "nvram-template" not in mapping:
            return None
        code, template = Path(mapping["executable"]["filename"]), Path(mapping["nvram-template"]["filename"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return (code, template) if code.exists() and template.exists() else None


def prepare(inst_dir: Path, kind: str, arch: str) -> Firmware:
    """The firmware for a cold boot: for UEFI, the instance's variables file made from the template the first
    time (a guest's variables outlive its boots, as a machine's NVRAM does)."""
    if kind == BIOS:
        return Firmware(BIOS)
    code, template = find_uefi(arch)
    variables = inst_dir / filenames.EFI_VARS
    if not variables.exists():
        private_copy(template, variables)
    return Firmware(UEFI, code, variables)


def private_copy(src: Path, dest: Path) -> None:
    """``src`` copied to ``dest`` (0600, the user's only), renamed into place once whole."""
    import shutil

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o600)
    tmp.rename(dest)


def pinned_files(pinned: dict[str, Any] | None, inst_dir: Path) -> tuple[Path, Path] | None:
    """UEFI's code and variables as a saved state's record pins them (None: not UEFI)."""
    if not pinned or pinned.get("kind") != UEFI:
        return None
    return Path(pinned["code"]["path"]), inst_dir / pinned["vars"]["file"]


def of_spec(kernel: Path | None, uefi: tuple[Path, Path] | None) -> Firmware | None:
    """The firmware a VM runs: none of its own choosing with a kernel file, else UEFI's files or SeaBIOS."""
    if kernel is not None:
        return None
    return Firmware(UEFI, *uefi) if uefi is not None else Firmware(BIOS)


def identity(path: Path) -> dict[str, Any]:
    """A firmware file's path and what changes when a package update replaces it (the disk's identity)."""
    return {"path": str(path), **savedstate.file_identity(path)}


def record(firmware: Firmware | None) -> dict[str, Any] | None:
    """What a saved state pins of the firmware: the code file's identity, the variables' digest."""
    if firmware is None or firmware.files is None:
        return None if firmware is None else {"kind": BIOS}
    code, variables = firmware.files
    return {  # (the state's digest: AAVMF's variables are 64 MiB, which sha256 would take 0.2 s over)
        "kind": firmware.kind,
        "code": identity(code),
        "vars": {"file": variables.name, "digest": savedstate.state_digest(variables)},
    }


def copy_vars(pinned: dict[str, Any] | None, src_dir: Path, dest_dir: Path) -> None:
    """The variables file a record pins, copied from ``src_dir`` to ``dest_dir`` (a snapshot takes them with the
    memory state, and gives them back when it is applied); nothing for a guest without them."""
    if pinned and pinned.get("kind") == UEFI:
        private_copy(src_dir / pinned["vars"]["file"], dest_dir / pinned["vars"]["file"])


def problems(pinned: dict[str, Any] | None, vars_dir: Path) -> list[str]:
    """Why the firmware of a saved state cannot run it now (empty if it can): the code file it ran, and the
    variables file in ``vars_dir`` (the instance's, or a snapshot's copy)."""
    if not pinned or pinned.get("kind") != UEFI:
        return []
    try:
        code, name, digest = pinned["code"], pinned["vars"]["file"], pinned["vars"]["digest"]
        code_path = Path(code["path"])
    except (KeyError, TypeError):
        return ["its firmware record is not one this torpor reads"]
    out = []
    try:
        now: dict[str, Any] | None = identity(code_path)
    except OSError:
        now = None
    if now != code:
        out.append(f"the UEFI firmware {code_path} changed since the save (it was updated or removed)")
    variables = vars_dir / str(name)
    if not variables.exists():
        out.append(f"the UEFI variables file {variables.name} is missing")
    elif not savedstate.digest_matches(variables, digest):
        out.append(f"the UEFI variables file {variables.name} changed since the save")
    return out
