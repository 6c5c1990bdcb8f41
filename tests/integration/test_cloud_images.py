"""Cloud images booted by their own firmware: a Debian disk with GRUB for BIOS, and one with an EFI system
partition for UEFI, each made offline by tests/cloudimage.py and given to torpor as a user gives a distribution's
image (a Lima-style ``images`` list with a sha512 digest, compressed with xz, after an entry that does not exist).
cloud-init in the image makes the user, installs the key, names the host and grows the root partition to the
instance's disk; a process keeps running across `stop --save` / `start`, and the UEFI guest's firmware files are
pinned by the saved state and travel with a memory snapshot.  An aarch64 image runs emulated (TCG) the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import cloudimage
from tests.integration.conftest import Torpor, wait_for
from torpor.driver.qemu import factory
from torpor.store import savedstate

pytestmark = pytest.mark.integration

# A counter in guest RAM and the pid that writes it: both survive only if the running machine does.
COUNTER = (
    "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.1; done' "
    "</dev/null >/dev/null 2>&1 & echo $!"
)


@pytest.fixture(scope="module")
def cloud_images(image_cache: Path) -> dict[str, Path]:
    return cloudimage.build(image_cache)


def template(torpor: Torpor, image: Path, arch: str = "x86_64") -> Path:
    path = torpor.home / "cloud.yaml"
    path.write_text(
        f"arch: {arch}\n"
        "images:\n"
        f"  - location: {torpor.home}/no-such-image.qcow2\n"
        f"    arch: {arch}\n"
        f"  - location: {image}\n"
        f"    arch: {arch}\n"
        f"    digest: {cloudimage.sha512(image)}\n"
        "memory: 1GiB\n"
        "disk: 5GiB\n"
        "mounts: []\n"
        "user: {name: cloud}\n"
        "bootTimeout: 600\n"  # (an emulated aarch64 guest boots slowly under TCG)
    )
    return path


def boot_and_check(torpor: Torpor, name: str, image: Path, kind: str, arch: str = "x86_64") -> str:
    """Start ``name`` from ``image``; check what cloud-init made of it; return the pid of a process left running."""
    out = torpor.run("start", "--name", name, str(template(torpor, image, arch)), timeout=900)
    assert "image 1 of 2 failed" in out.stderr and "no-such-image.qcow2" in out.stderr, out.stderr
    facts = torpor.sh(
        name,
        "id -un; hostname; df -B1 --output=size / | tail -n 1; cat ~/.ssh/authorized_keys; "
        "test -d /sys/firmware/efi && echo efi || echo no-efi; uname -m",
    ).splitlines()
    assert facts.pop() == arch
    assert facts[0] == "cloud"
    assert facts[1] == f"torpor-{name}"
    assert int(facts[2]) > 4.5 * 2**30, "the root partition was not grown to the instance's disk"
    key = (torpor.home / "_config" / "user.pub").read_text().split()[1]
    assert any(key in line for line in facts[3:-1])
    assert facts[-1] == ("efi" if kind == "uefi" else "no-efi")
    argv = json.loads((torpor.dir(name) / "boot.json").read_text())["argv"]
    assert any("bootindex=0" in a for a in argv) and "-kernel" not in argv
    assert any("if=pflash" in a for a in argv) == (kind == "uefi")
    return torpor.sh(name, COUNTER).strip()


def still_running(torpor: Torpor, name: str, pid: str) -> None:
    first = int(torpor.sh(name, "cat /dev/shm/counter"))
    assert torpor.sh(name, f"kill -0 {pid} && echo alive").strip() == "alive"
    assert wait_for(lambda: int(torpor.sh(name, "cat /dev/shm/counter")) > first, timeout=10)


def test_a_bios_cloud_image_boots_by_grub_and_restores(torpor: Torpor, cloud_images: dict[str, Path]) -> None:
    pid = boot_and_check(torpor, "cb", cloud_images["bios"], "bios")
    torpor.run("stop", "--save", "cb")
    manifest = json.loads((torpor.dir("cb") / "saved" / "manifest.json").read_text())
    assert manifest["firmware"] == {"kind": "bios"}
    out = torpor.run("start", "cb")
    assert "restored in" in out.stderr, out.stderr
    still_running(torpor, "cb", pid)


def test_a_uefi_cloud_image_restores_and_its_firmware_is_pinned(torpor: Torpor, cloud_images: dict[str, Path]) -> None:
    pid = boot_and_check(torpor, "cu", cloud_images["uefi"], "uefi")
    d = torpor.dir("cu")
    torpor.run("snapshot", "create", "cu", "--tag", "warm")
    assert (d / "snapshots" / "warm" / "efi-vars.fd").read_bytes() == (d / "efi-vars.fd").read_bytes()
    torpor.run("stop", "--save", "cu")

    saved = savedstate.load(d)
    assert saved is not None
    pinned = saved.manifest["firmware"]
    assert pinned["kind"] == "uefi" and Path(pinned["code"]["path"]).exists()
    # The variables as the guest left them are part of the state: changed, the state is not restored.
    variables = (d / "efi-vars.fd").read_bytes()
    (d / "efi-vars.fd").write_bytes(variables[:-1] + bytes([variables[-1] ^ 1]))
    assert "the UEFI variables file efi-vars.fd changed since the save" in factory.QemuFactory().restore_problems(
        saved, d
    )
    (d / "efi-vars.fd").unlink()
    assert "the UEFI variables file efi-vars.fd is missing" in factory.QemuFactory().restore_problems(saved, d)
    (d / "efi-vars.fd").write_bytes(variables)
    assert factory.QemuFactory().restore_problems(saved, d) == []

    out = torpor.run("start", "cu")
    assert "restored in" in out.stderr, out.stderr
    still_running(torpor, "cu", pid)

    # A memory snapshot gives back the variables it was taken with: written since, they would not match the
    # snapshot's state, and the restore would refuse it.
    torpor.run("stop", "--save", "cu")
    (d / "efi-vars.fd").write_bytes(variables[:-1] + bytes([variables[-1] ^ 1]))
    out = torpor.run("snapshot", "apply", "cu", "--tag", "warm", "--force")
    assert "restored in" in out.stderr, out.stderr
    assert (d / "efi-vars.fd").read_bytes() == variables
    still_running(torpor, "cu", pid)


def test_an_aarch64_cloud_image_runs_emulated_and_restores(torpor: Torpor, image_cache: Path) -> None:
    image = cloudimage.build_aarch64(image_cache)
    pid = boot_and_check(torpor, "ca", image, "uefi", arch="aarch64")
    argv = json.loads((torpor.dir("ca") / "boot.json").read_text())["argv"]
    assert argv[0].endswith("qemu-system-aarch64") and "virt,gic-version=max" in argv
    torpor.run("stop", "--save", "ca")
    saved = savedstate.load(torpor.dir("ca"))
    assert saved is not None and saved.manifest["boot"]["config"]["arch"] == "aarch64"
    out = torpor.run("start", "ca", timeout=300)
    assert "restored in" in out.stderr, out.stderr
    still_running(torpor, "ca", pid)
