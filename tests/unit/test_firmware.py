"""The firmware a disk image boots with, and what a saved state pins of it (driver/qemu/firmware.py)."""

import json
import os
from pathlib import Path

import pytest

from torpor.driver.qemu import firmware
from torpor.errors import ConfigError, DriverError

SECTOR = 512


def mbr(boot_code: bool, types: tuple[int, ...] = (0x83,)) -> bytearray:
    head = bytearray(firmware.HEAD)
    if boot_code:
        head[0:3] = b"\xeb\x63\x90"  # (GRUB's boot.img starts so)
    for i, t in enumerate(types):
        head[446 + 16 * i + 4] = t
    head[510:512] = b"\x55\xaa"
    return head


def gpt(boot_code: bool, esp: bool) -> bytes:
    head = mbr(boot_code, (0xEE,))
    header = SECTOR
    head[header : header + 8] = b"EFI PART"
    head[header + 72 : header + 80] = (2).to_bytes(8, "little")  # the entries from LBA 2
    head[header + 80 : header + 84] = (128).to_bytes(4, "little")
    head[header + 84 : header + 88] = (128).to_bytes(4, "little")
    linux = bytes.fromhex("af3dc60f838472478e793d69d8477de4")
    entries = [firmware.ESP_GUID if esp else linux, linux]
    for i, guid in enumerate(entries):
        start = 2 * SECTOR + i * 128
        head[start : start + 16] = guid
    return bytes(head)


@pytest.mark.parametrize(
    ("head", "kinds"),
    [
        (bytes(mbr(True)), {"bios"}),
        (bytes(mbr(False)), set()),  # a partition table and no boot code: nothing boots it
        (bytes(mbr(False, (0xEF, 0x83))), {"uefi"}),  # an ESP in an MBR
        (gpt(False, True), {"uefi"}),
        (gpt(True, True), {"bios", "uefi"}),  # a hybrid image, as distributions' cloud images are
        (gpt(True, False), {"bios"}),
        (bytes(firmware.HEAD), set()),
        (b"", set()),
    ],
)
def test_what_a_disk_s_first_sectors_say_it_boots_with(head: bytes, kinds: set[str]) -> None:
    assert firmware.boot_kinds(head) == kinds


def test_legacy_bios_chooses_and_unset_the_image_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    heads = {"hybrid": gpt(True, True), "efi": gpt(False, True), "none": bytes(mbr(False))}
    monkeypatch.setattr(firmware, "read_head", lambda disk: heads[disk.name])
    assert firmware.choose({"firmware": {"legacyBIOS": False}}, Path("hybrid")) == "uefi"
    assert firmware.choose({"firmware": {"legacyBIOS": True}}, Path("efi")) == "bios"
    assert firmware.choose({"firmware": {"legacyBIOS": None}}, Path("hybrid")) == "bios"
    assert firmware.choose({}, Path("efi")) == "uefi"
    with pytest.raises(ConfigError, match="neither a BIOS boot loader nor an EFI system partition") as e:
        firmware.choose({}, Path("none"))
    assert "legacyBIOS" in (e.value.hint or "")
    assert firmware.choose({"arch": "aarch64"}, Path("none")) == "uefi"
    with pytest.raises(ConfigError, match="aarch64 guests boot with UEFI only"):
        firmware.choose({"arch": "aarch64", "firmware": {"legacyBIOS": True}}, Path("none"))


def descriptor(path: Path, code: Path, template: Path, features: list[str], arch: str = "x86_64") -> None:
    machines = ["pc-q35-*"] if arch == "x86_64" else ["virt-*"]
    path.write_text(
        json.dumps(
            {
                "interface-types": ["uefi"],
                "mapping": {
                    "device": "flash",
                    "executable": {"filename": str(code), "format": "raw"},
                    "nvram-template": {"filename": str(template), "format": "raw"},
                },
                "targets": [{"architecture": arch, "machines": machines}],
                "features": features,
            }
        )
    )


def test_uefi_is_the_first_descriptor_without_secure_boot_for_the_arch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {n: tmp_path / n for n in ("secure.fd", "plain.fd", "vars.fd", "arm.fd", "later.fd")}
    for f in files.values():
        f.write_bytes(b"fw")
    system, user = tmp_path / "share", tmp_path / "etc"
    system.mkdir()
    user.mkdir()
    descriptor(system / "40-secure.json", files["secure.fd"], files["vars.fd"], ["secure-boot", "requires-smm"])
    descriptor(system / "50-arm.json", files["arm.fd"], files["vars.fd"], [], arch="aarch64")
    descriptor(system / "60-plain.json", files["plain.fd"], files["vars.fd"], ["acpi-s3"])
    descriptor(system / "70-later.json", files["later.fd"], files["vars.fd"], [])
    (system / "45-broken.json").write_text("{not json")
    monkeypatch.setattr(firmware, "DESCRIPTOR_DIRS", (str(system), str(user)))
    assert firmware.find_uefi("x86_64") == (files["plain.fd"], files["vars.fd"])
    assert firmware.find_uefi("aarch64") == (files["arm.fd"], files["vars.fd"])
    # A descriptor of the same name in a later directory overrides the system's.
    descriptor(user / "60-plain.json", files["later.fd"], files["vars.fd"], [])
    assert firmware.find_uefi("x86_64") == (files["later.fd"], files["vars.fd"])
    # A descriptor whose files are gone is skipped.
    files["later.fd"].unlink()
    monkeypatch.setattr(firmware, "FALLBACK", {})
    with pytest.raises(DriverError, match="no UEFI firmware for x86_64") as e:
        firmware.find_uefi("x86_64")
    assert "apt-get install ovmf" in (e.value.hint or "")


def uefi_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, firmware.Firmware]:
    code, template = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"code" * 100)
    template.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(firmware, "find_uefi", lambda arch: (code, template))
    inst = tmp_path / "inst"
    inst.mkdir()
    return inst, code, firmware.prepare(inst, "uefi", "x86_64")


def test_each_uefi_instance_has_its_own_variables_made_once_from_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst, code, fw = uefi_instance(tmp_path, monkeypatch)
    assert fw.files == (code, inst / "efi-vars.fd")
    assert (inst / "efi-vars.fd").read_bytes() == b"\0" * 4096
    assert (inst / "efi-vars.fd").stat().st_mode & 0o777 == 0o600
    (inst / "efi-vars.fd").write_bytes(b"written by the guest")
    firmware.prepare(inst, "uefi", "x86_64")  # a later cold boot keeps them
    assert (inst / "efi-vars.fd").read_bytes() == b"written by the guest"
    assert firmware.prepare(inst, "bios", "x86_64") == firmware.Firmware("bios")


def test_a_saved_state_pins_the_uefi_code_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst, code, fw = uefi_instance(tmp_path, monkeypatch)
    pinned = firmware.record(fw)
    assert pinned is not None
    assert json.loads(json.dumps(pinned)) == pinned  # (it goes into the manifest)
    assert firmware.problems(pinned, inst) == []
    assert firmware.pinned_files(pinned, inst) == fw.files

    variables = inst / "efi-vars.fd"
    saved = variables.read_bytes()
    variables.write_bytes(b"\1" + saved[1:])
    assert firmware.problems(pinned, inst) == ["the UEFI variables file efi-vars.fd changed since the save"]
    variables.unlink()
    assert firmware.problems(pinned, inst) == ["the UEFI variables file efi-vars.fd is missing"]
    variables.write_bytes(saved)
    assert firmware.problems(pinned, inst) == []

    # An updated firmware package replaces the file: same size, another inode and mtime.
    new = code.with_name("new")
    new.write_bytes(code.read_bytes())
    os.replace(new, code)
    assert firmware.problems(pinned, inst) == [
        f"the UEFI firmware {code} changed since the save (it was updated or removed)"
    ]
    code.unlink()
    assert len(firmware.problems(pinned, inst)) == 1


def test_a_bios_or_kernel_booted_guest_pins_no_files(tmp_path: Path) -> None:
    assert firmware.of_spec(tmp_path / "kernel", None) is None
    assert firmware.record(None) is None
    bios = firmware.of_spec(None, None)
    assert bios == firmware.Firmware("bios")
    assert firmware.record(bios) == {"kind": "bios"}
    assert firmware.problems({"kind": "bios"}, tmp_path) == []
    assert firmware.problems(None, tmp_path) == []
    assert firmware.pinned_files({"kind": "bios"}, tmp_path) is None


def test_a_snapshot_takes_the_variables_and_gives_them_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst, _, fw = uefi_instance(tmp_path, monkeypatch)
    pinned = firmware.record(fw)
    snap = tmp_path / "snap"
    snap.mkdir()
    firmware.copy_vars(pinned, inst, snap)
    (inst / "efi-vars.fd").write_bytes(b"later")
    assert firmware.problems(pinned, snap) == []  # the snapshot's copy is as pinned
    firmware.copy_vars(pinned, snap, inst)
    assert firmware.problems(pinned, inst) == []
    before = sorted(p.name for p in snap.iterdir())
    firmware.copy_vars({"kind": "bios"}, inst, snap)  # nothing to copy
    assert sorted(p.name for p in snap.iterdir()) == before


@pytest.mark.parametrize(
    "pinned",
    [
        {"kind": "uefi"},
        {"kind": "uefi", "code": "x", "vars": {}},
        {"kind": "uefi", "code": {"path": "/x"}, "vars": {"file": "efi-vars.fd", "sha256": "sha256:00"}},
    ],
)
def test_a_firmware_record_it_cannot_read_refuses_the_restore(tmp_path: Path, pinned: dict[str, object]) -> None:
    assert firmware.problems(pinned, tmp_path) == ["its firmware record is not one this torpor reads"]
