"""Facts about the host's QEMU: which binary, which version, and whether KVM really works; and whether the host
hands its free memory back to a hypervisor.

The KVM probe boots the guest kernel under KVM with no root filesystem: a working KVM reaches the kernel's
"unable to mount root" panic in about a second and QEMU exits (``-no-reboot``).  Where nested virtualisation is
broken the kernel hangs, so the probe is bounded; its answer is cached per QEMU binary and version and host boot.
A guest without a kernel of its own (a disk image its firmware boots) is probed with a boot sector instead, which
the firmware runs: it writes a line to the serial port and exits QEMU through isa-debug-exit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from torpor import subp
from torpor.driver.values import Accel
from torpor.errors import DriverError
from torpor.store import atomic, filenames

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 15.0


class Qemu(NamedTuple):  # records on the restore path are not dataclasses (a 5 ms import)
    binary: str
    version: str  # "7.2.19"


def migration_capabilities(qemu: Qemu) -> set[str]:
    """The migration capabilities this QEMU knows, asked over QMP from a machine-less QEMU."""
    import tempfile  # here: this module is on the restore path, which never asks this

    from torpor.driver.qemu.qmpsync import SyncQMP

    with tempfile.TemporaryDirectory(prefix="torpor-qmp-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        argv = [
            qemu.binary,
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ]
        proc = subp.spawn(argv, stderr=subprocess.PIPE)
        try:
            qmp = SyncQMP(sock, 30.0, alive=lambda: proc.poll() is None)
            try:
                return {c["capability"] for c in qmp.execute("query-migrate-capabilities")}
            finally:
                qmp.close()
        except DriverError as e:
            raise DriverError(f"{qemu.binary} did not list its migration capabilities: {e}") from None
        finally:
            proc.kill()
            proc.wait()


def find_qemu(arch: str = "x86_64", cache_dir: Path | None = None) -> Qemu:
    """The QEMU system emulator for ``arch``: ``$TORPOR_QEMU`` if set, else from ``PATH``.

    With ``cache_dir`` the version is remembered per binary (path, size, mtime): asking QEMU costs a process
    start on every `torpor start`, restores included.
    """
    binary = os.environ.get("TORPOR_QEMU") or shutil.which(f"qemu-system-{arch}")
    if not binary:
        raise DriverError(
            f"qemu-system-{arch} not found",
            hint="install QEMU (Debian/Ubuntu: `sudo apt-get install qemu-system-x86 qemu-utils`)",
        )
    st = os.stat(binary)
    key = f"{os.path.realpath(binary)}:{st.st_size}:{st.st_mtime_ns}"
    cache = cache_dir / filenames.QEMU_VERSIONS if cache_dir else None
    known: dict[str, str] = {}
    if cache is not None:
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
        if key in known:
            return Qemu(binary, known[key])
    out = subp.run([binary, "--version"], timeout=30).stdout
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise DriverError(f"cannot tell the version of {binary} from: {out.strip()[:200]}")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache, json.dumps({**known, key: m.group(1)}))
    return Qemu(binary, m.group(1))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


# virtio-balloon's feature bit for free page reporting (VIRTIO_BALLOON_F_REPORTING in the virtio specification).
_BALLOON_F_REPORTING = 5


def hands_back_free_memory(sysfs: Path = Path("/sys")) -> bool:
    """Whether this host is a VM that hands its free memory back to its hypervisor (virtio-balloon free page
    reporting).  There, free memory goes back in blocks of 2 MiB and more a few seconds after it is freed, and the
    huge pages a copy-mode restore of a state that has waited fills come out of it, slowly (README: "How to read
    it"); instant mode maps its RAM file from the page cache instead."""
    for device in (sysfs / "bus/virtio/drivers/virtio_balloon").glob("virtio*"):
        try:
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        if features[_BALLOON_F_REPORTING : _BALLOON_F_REPORTING + 1] == "1":  # one character per bit, bit 0 first
            return True
    return False


def probe_accel(qemu: Qemu, kernel: Path | None, cache_dir: Path, arch: str = "x86_64") -> Accel:
    """KVM if it is usable and really runs a guest kernel, else TCG; the answer is cached.  A guest of another
    architecture than the host's runs under TCG (KVM runs the host's own)."""
    from torpor.config.machine import host_arch

    if arch != host_arch():
        return Accel("tcg", f"an {arch} guest on this {host_arch()} host is emulated")
    if kernel is None and arch != "x86_64":  # (the firmware probe is an x86 boot sector)
        return Accel("kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg", "not probed: no guest kernel")
    if not os.path.exists("/dev/kvm"):
        return Accel("tcg", "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is not accessible to this user (add yourself to the kvm group)")
    key = {
        "qemu": qemu.binary,
        "version": qemu.version,
        "bootId": _boot_id(),
        "probe": "kernel" if kernel is not None else "firmware",
    }
    cache = cache_dir / filenames.ACCEL_PROBE
    try:  # one answer per QEMU binary: alternating between two QEMUs does not probe each time
        probes = [
            p
            for p in json.loads(cache.read_text())["probes"]
            if p["key"]["bootId"] == key["bootId"] and {"name", "reason"} <= p.keys()
        ]
    except (OSError, ValueError, KeyError, TypeError):
        probes = []
    for cached in probes:
        if cached["key"] == key:
            return Accel(cached["name"], cached["reason"])
    accel = _run_probe(qemu, kernel)
    probes = [p for p in probes if (p["key"]["qemu"], p["key"].get("probe")) != (qemu.binary, key["probe"])]
    probes.append({"key": key, **accel._asdict()})
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cache, json.dumps({"probes": probes}))
    return accel


# The firmware probe's boot sector (real mode, at 0x7c00): DS = 0; print MARKER to COM1 (0x3f8); write 0x21 to
# isa-debug-exit at 0xf4 (QEMU exits with (0x21 << 1) | 1 = 67); halt.
FIRMWARE_PROBE_MARKER = b"TORPOR-KVM-OK"
FIRMWARE_PROBE_CODE = (
    bytes.fromhex("31C08ED8BE1B7CBAF803AC84C07403EEEBF8BAF400B021EEF4EBFD") + FIRMWARE_PROBE_MARKER + b"\0"
)
FIRMWARE_PROBE_EXIT = 67


def firmware_probe_disk(path: Path) -> None:
    """A 1 MiB raw disk whose boot sector is the firmware probe (SeaBIOS does not boot a disk of one sector)."""
    with path.open("wb") as f:
        f.write(FIRMWARE_PROBE_CODE.ljust(510, b"\0") + b"\x55\xaa")
        f.truncate(1 << 20)


def probe_argv(qemu: Qemu, accel: str, kernel: Path | None, tmp: Path) -> list[str]:
    """QEMU's command line for the probe: the guest kernel, or (None) the boot sector through the firmware."""
    argv = [qemu.binary, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-machine", "q35"]
    argv += ["-accel", accel, *(["-cpu", "host"] if accel == "kvm" else []), "-m", "256M" if kernel else "64M"]
    if kernel is not None:
        argv += ["-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
    else:
        firmware_probe_disk(tmp / "probe.img")
        argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        argv += ["-drive", f"file={tmp / 'probe.img'},format=raw,if=none,id=probe,readonly=on"]
        argv += ["-device", "virtio-blk-pci,drive=probe,bootindex=1"]
    return [*argv, "-serial", f"file:{tmp / 'serial.log'}"]


def probe_ran(kernel: Path | None, serial_text: str) -> bool:
    """Whether the probe's guest ran, from what it wrote to its serial port."""
    if kernel is None:
        return FIRMWARE_PROBE_MARKER.decode() in serial_text
    return "Kernel panic" in serial_text or "Linux version" in serial_text


def _run_probe(qemu: Qemu, kernel: Path | None, accel: str = "kvm") -> Accel:
    """Boot the probe's guest under ``accel`` (kvm; the tests run the same guest under tcg): "kvm" if it ran."""
    import tempfile  # here: this module is on the restore path, the probe runs once per host boot

    what = "guest kernel" if kernel is not None else "boot sector"
    with tempfile.TemporaryDirectory(prefix="torpor-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = probe_argv(qemu, accel, kernel, Path(tmp))
        started = time.monotonic()
        proc = subp.spawn(argv, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return Accel(
                "tcg",
                f"KVM is present but a {what} hung under it (probe timed out after "
                f"{PROBE_TIMEOUT:.0f} s; nested virtualisation?)",
            )
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if probe_ran(kernel, text):
            return Accel("kvm", f"KVM works (probe {what} ran in {time.monotonic() - started:.1f} s)")
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"no output from the {what}"]
        return Accel("tcg", f"KVM is present but unusable: {detail[0]}")
