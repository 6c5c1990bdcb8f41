"""The KVM probe's cache: one answer per QEMU binary and host boot (the probe costs up to 15 s where KVM hangs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torpor.driver.base import Accel
from torpor.driver.qemu import host
from torpor.store import filenames

needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="probed only with /dev/kvm")


@needs_kvm
def test_two_qemus_are_probed_once_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[str] = []

    def fake_probe(qemu: host.Qemu, kernel: Path) -> Accel:
        probed.append(qemu.binary)
        return Accel("tcg", f"{qemu.binary} hung")

    monkeypatch.setattr(host, "_run_probe", fake_probe)
    new, old = host.Qemu("/usr/bin/qemu-system-x86_64", "10.0.2"), host.Qemu("/opt/qemu-7.2", "7.2.22")
    for qemu in (new, old, new, old):
        assert host.probe_accel(qemu, tmp_path / "vmlinuz", tmp_path) == ("tcg", f"{qemu.binary} hung")
    assert probed == [new.binary, old.binary]
    # Another version of the same binary (an upgrade) is probed again and replaces the old answer.
    host.probe_accel(host.Qemu(new.binary, "10.1.0"), tmp_path / "vmlinuz", tmp_path)
    host.probe_accel(old, tmp_path / "vmlinuz", tmp_path)
    assert probed == [new.binary, old.binary, new.binary]


@needs_kvm
@pytest.mark.parametrize("content", ["", "{", '{"key": {"qemu": "q"}, "name": "kvm"}', '{"probes": [1, {}]}'])
def test_unreadable_cache_probes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    monkeypatch.setattr(host, "_run_probe", lambda qemu, kernel: Accel("tcg", "probed"))
    (tmp_path / filenames.ACCEL_PROBE).write_text(content)
    assert host.probe_accel(host.Qemu("q", "1"), tmp_path / "vmlinuz", tmp_path).reason == "probed"
    assert host.probe_accel(host.Qemu("q", "1"), tmp_path / "vmlinuz", tmp_path).reason == "probed"


def test_a_guest_of_another_arch_runs_under_tcg_unprobed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(qemu: host.Qemu, kernel: Path | None) -> Accel:
        raise AssertionError("KVM does not run another architecture: nothing to probe")

    monkeypatch.setattr(host, "_run_probe", no_probe)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    accel = host.probe_accel(host.Qemu("qemu-system-aarch64", "10.0.2"), None, tmp_path, "aarch64")
    assert accel == ("tcg", "an aarch64 guest on this x86_64 host is emulated")
