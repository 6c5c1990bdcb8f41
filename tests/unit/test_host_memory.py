"""Whether the host hands its free memory back to a hypervisor: read from virtio-balloon's features in sysfs."""

from __future__ import annotations

from pathlib import Path

from torpor.driver.qemu import host


def _balloon(sysfs: Path, name: str, features: str) -> None:
    device = sysfs / "bus/virtio/drivers/virtio_balloon" / name
    device.mkdir(parents=True)
    (device / "features").write_text(features + "\n")


def test_free_page_reporting_is_feature_bit_5(tmp_path: Path) -> None:
    assert not host.hands_back_free_memory(tmp_path)  # no balloon driver at all
    # Bits 1 (stats) and 2 (deflate on OOM) only: a balloon that does not report free pages.
    _balloon(tmp_path, "virtio0", "0110000000000000000000000000000010000000")
    assert not host.hands_back_free_memory(tmp_path)
    # A second balloon with bit 5 (free page reporting), as this machine's: "01100101..." in sysfs.
    _balloon(tmp_path, "virtio3", "0110010100000000000000000000000010000000")
    assert host.hands_back_free_memory(tmp_path)


def test_a_short_or_unreadable_features_file_is_no(tmp_path: Path) -> None:
    _balloon(tmp_path, "virtio0", "011")
    (tmp_path / "bus/virtio/drivers/virtio_balloon/virtio1").mkdir()  # no features file
    assert not host.hands_back_free_memory(tmp_path)
