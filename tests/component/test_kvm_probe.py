"""The KVM probe without a guest kernel: a boot sector the firmware runs, the real QEMU running it (under TCG
here, where nested KVM does not work), and the probe's decisions with the KVM checks faked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torpor.driver.qemu import host
from torpor.driver.values import Accel


def test_the_boot_sector_runs_under_the_firmware_and_exits_qemu() -> None:
    qemu = host.find_qemu("x86_64")
    ran = host._run_probe(qemu, None, accel="tcg")
    assert ran.name == "kvm" and "probe boot sector ran in" in ran.reason, ran


def test_probe_disk_is_a_bootable_sector(tmp_path: Path) -> None:
    host.firmware_probe_disk(tmp_path / "d")
    data = (tmp_path / "d").read_bytes()
    assert len(data) == 1 << 20 and data[510:512] == b"\x55\xaa" and host.FIRMWARE_PROBE_MARKER in data[:510]
    assert not host.probe_ran(None, "") and host.probe_ran(None, "...TORPOR-KVM-OK")
    assert host.probe_ran(tmp_path, "Linux version 6.1") and not host.probe_ran(tmp_path, "TORPOR-KVM-OK")


def test_a_disk_image_guest_is_probed_too_and_cached_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the KVM checks faked (so it runs on machines without /dev/kvm): no kernel is a firmware probe, cached
    beside the kernel probe's answer for the same QEMU."""
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/kvm" or real_exists(p))
    monkeypatch.setattr(os, "access", lambda p, mode: True)
    probed: list[str] = []

    def fake(qemu: host.Qemu, kernel: Path | None, accel: str = "kvm") -> Accel:
        probed.append("kernel" if kernel else "firmware")
        return Accel("kvm", f"{probed[-1]} ran")

    monkeypatch.setattr(host, "_run_probe", fake)
    qemu = host.Qemu("/usr/bin/qemu-system-x86_64", "10.0.2")
    for _ in range(2):
        assert host.probe_accel(qemu, None, tmp_path) == ("kvm", "firmware ran")
        assert host.probe_accel(qemu, tmp_path / "vmlinuz", tmp_path) == ("kvm", "kernel ran")
    assert probed == ["firmware", "kernel"]
