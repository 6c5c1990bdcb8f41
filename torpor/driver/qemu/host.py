"""Facts about the host's QEMU: which binary, which version, and whether KVM really works; and whether the host
hands its free memory back to a hypervisor.

The KVM probe boots the guest kernel under KVM with no root filesystem: a working KVM reaches the kernel's
"unable to mount root" panic in about a second and QEMU exits (``-no-reboot``).  Where nested virtualisation is
broken the kernel hangs, so the probe is bounded; its answer is cached per QEMU binary and version and host boot.
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


def probe_accel(qemu: Qemu, kernel: Path | None, cache_dir: Path) -> Accel:
    """KVM if it is usable and really runs a guest kernel, else TCG; the answer is cached."""
    if not os.path.exists("/dev/kvm"):
        return Accel("tcg", "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is not accessible to this user (add yourself to the kvm group)")
    if kernel is None:
        return Accel("tcg", "KVM not probed yet (it is probed with the guest kernel at the first start)")
    key = {"qemu": qemu.binary, "version": qemu.version, "bootId": _boot_id()}
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
    probes = [p for p in probes if p["key"]["qemu"] != qemu.binary] + [{"key": key, **accel._asdict()}]
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cache, json.dumps({"probes": probes}))
    return accel


def _run_probe(qemu: Qemu, kernel: Path) -> Accel:
    import tempfile  # here: this module is on the restore path, the probe runs once per host boot

    with tempfile.TemporaryDirectory(prefix="torpor-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [
            qemu.binary,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256M",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 root=/dev/nonexistent",
            "-serial",
            f"file:{serial}",
        ]
        started = time.monotonic()
        proc = subp.spawn(argv, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return Accel(
                "tcg",
                f"KVM is present but a guest kernel hung under it (probe timed out after "
                f"{PROBE_TIMEOUT:.0f} s; nested virtualisation?)",
            )
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if "Kernel panic" in text or "Linux version" in text:
            return Accel("kvm", f"KVM works (probe kernel ran in {time.monotonic() - started:.1f} s)")
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output from the guest kernel"]
        return Accel("tcg", f"KVM is present but unusable: {detail[0]}")
