"""Cloud-style Debian images for the tests and the bench, built offline from Debian's packages.

A distribution's cloud image is one disk with its own partition table and boot loader, the kernel inside the root
filesystem, and cloud-init to make the user, install the key, grow the root partition and bring up the network.
These are built the same way, without a network beyond the package mirror and without loop devices or mounts:

- ``bios``: an MBR partition table with one ext4 root partition from 1 MiB; GRUB for i386-pc with its boot sector
  in the MBR and its core image in the gap before the partition (where grub-install puts them), its modules and
  grub.cfg in /boot/grub.
- ``uefi``: GPT with an EFI system partition (FAT) holding GRUB for x86_64-efi at the removable path
  EFI/BOOT/BOOTX64.EFI, then the ext4 root; no BIOS boot code, so only UEFI firmware boots it.

Both carry the same root filesystem (Debian 12 with cloud-init, growpart and a GRUB configuration that finds the
root by its label), are compressed once with xz and are cached by recipe under ``$TORPOR_CACHE/test-images``.
An aarch64 image (:func:`build_aarch64`) is the ``uefi`` layout around Debian's arm64 packages, whose maintainer
scripts run under qemu-user-static, with GRUB's arm64-efi at EFI/BOOT/BOOTAA64.EFI.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from torpor.guest import debian
from torpor.store.cache import cache_root

KINDS = ("bios", "uefi")  # x86_64's; aarch64's one image boots with UEFI
ROOT_LABEL = "cloudimg-rootfs"
ROOT_SIZE_MIB = 2048
ESP_SIZE_MIB = 32
PACKAGES = (*debian.PACKAGES, "fdisk", "gdisk")  # (growpart edits the partition table with sfdisk or sgdisk)
CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0 net.ifnames=0 panic=-1"
# What differs for aarch64: Debian's arm64 packages (their maintainer scripts run under qemu-user-static), its
# serial console, and GRUB's arm64 modules from the image's own package.
ARM64_PACKAGES = (*(p.replace("amd64", "arm64") for p in PACKAGES), "grub-efi-arm64-bin")
ARM64_CMDLINE = CMDLINE.replace("console=ttyS0", "console=ttyAMA0")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

CONFIGURE_TEMPLATE = r"""
set -eu
root="$1"
echo "LABEL=@ROOT_LABEL@ / ext4 rw,discard,errors=remount-ro 0 1" > "$root/etc/fstab"
printf 'datasource_list: [NoCloud, None]\nmanage_etc_hosts: true\nlocale: false\n' \
    > "$root/etc/cloud/cloud.cfg.d/90-test-image.cfg"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer man-db.timer fstrim.timer \
            systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -f "$root/etc/ssh/ssh_host_"* "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: > "$root/etc/machine-id"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
# GRUB's modules where its core image looks for them ($prefix), and its menu: the kernel inside the filesystem.
mkdir -p "$root/boot/grub"
cp -r @MODULES@ "$root/boot/grub/"
kernel=$(cd "$root/boot" && ls vmlinuz-* | head -n 1)
initrd=$(cd "$root/boot" && ls initrd.img-* | head -n 1)
cat > "$root/boot/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry "Debian GNU/Linux" {
    linux /boot/$kernel @CMDLINE@
    initrd /boot/$initrd
}
EOF
"""


def configure(arch: str = "x86_64") -> str:
    """The customize hook that makes the tree a cloud image's root filesystem."""
    if arch == "aarch64":
        modules, cmdline = '"$root/usr/lib/grub/arm64-efi"', ARM64_CMDLINE
    else:
        modules, cmdline = "/usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi", CMDLINE
    text = CONFIGURE_TEMPLATE.replace("@ROOT_LABEL@", ROOT_LABEL).replace("@MODULES@", modules)
    return text.replace("@CMDLINE@", cmdline)


CONFIGURE = configure()

# What GRUB's core image runs first: find the root filesystem by its label, whatever the disk is called.
EARLY_CONFIG = f"search --no-floppy --label {ROOT_LABEL} --set=root\nset prefix=($root)/boot/grub\n"
CORE_MODULES = {
    "bios": ("biosdisk", "part_msdos", "ext2", "search", "search_label", "normal", "configfile"),
    "uefi": ("part_gpt", "part_msdos", "fat", "ext2", "search", "search_label", "normal", "configfile"),
}


def recipe_key(arch: str = "x86_64") -> str:
    inputs: dict[str, object] = {
        "packages": PACKAGES,
        "configure": CONFIGURE,
        "early": EARLY_CONFIG,
        "modules": CORE_MODULES,
        "sizes": [ROOT_SIZE_MIB, ESP_SIZE_MIB],
        "suite": debian.SUITE,
    }
    if arch == "aarch64":
        inputs.update(arch="arm64", packages=ARM64_PACKAGES, configure=configure(arch))
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def image_dir(cache: Path | None = None, arch: str = "x86_64") -> Path:
    return (cache or cache_root()) / "test-images" / recipe_key(arch)


def missing_tools(arch: str = "x86_64") -> list[str]:
    """What the build needs that this machine lacks (Debian packages: mmdebstrap, grub-pc-bin,
    grub-efi-amd64-bin, fdisk, dosfstools, mtools, e2fsprogs; for aarch64 qemu-user-static and binfmt-support)."""
    tools = ["mmdebstrap", "grub-mkimage", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs"]
    out = [t for t in tools if shutil.which(t) is None]
    if arch == "aarch64":
        if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
            out.append("qemu-user-static registered with binfmt_misc (qemu-aarch64)")
    else:
        out += [d for d in ("/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi") if not Path(d).is_dir()]
    return out


def build(cache: Path | None = None) -> dict[str, Path]:
    """The x86_64 images by kind (``bios``, ``uefi``): xz-compressed raw disks, built once."""
    return _build(cache, "x86_64", KINDS)


def build_aarch64(cache: Path | None = None) -> Path:
    """The aarch64 image (UEFI), xz-compressed, built once: Debian's arm64 packages, their maintainer scripts run
    by qemu-user-static (several minutes under emulation)."""
    return _build(cache, "aarch64", ("uefi",))["uefi"]


def _build(cache: Path | None, arch: str, kinds: tuple[str, ...]) -> dict[str, Path]:
    out = image_dir(cache, arch)
    suffix = "" if arch == "x86_64" else f"-{arch}"
    images = {kind: out / f"debian-12-{kind}{suffix}.raw.xz" for kind in kinds}
    if all(p.exists() for p in images.values()):
        return images
    lacking = missing_tools(arch)
    if lacking:
        raise RuntimeError(f"building the test cloud images needs {', '.join(lacking)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        stage = Path(tmp)
        rootfs = stage / "root.ext4"
        hooks = [
            configure(arch),
            # mke2fs -d from a clean bind mount: the tree has /proc, /sys and /dev mounted while hooks run.
            'clean=$(mktemp -d) && mount --bind "$1" "$clean" && '
            f'mke2fs -q -t ext4 -L {ROOT_LABEL} -d "$clean" {shlex.quote(str(rootfs))} {ROOT_SIZE_MIB}M; '
            'status=$?; umount "$clean"; rmdir "$clean"; exit $status',
        ]
        if arch == "aarch64":  # grub-mkimage (the host's) makes the arm64 image from the image's own modules
            hooks.append(f'cp -r "$1/usr/lib/grub/arm64-efi" {shlex.quote(str(stage))}/')
        argv = [
            "mmdebstrap",
            "--mode=auto",
            "--format=null",
            "--variant=apt",
            *(["--architectures=arm64"] if arch == "aarch64" else []),
            f"--include={','.join(ARM64_PACKAGES if arch == 'aarch64' else PACKAGES)}",
            *(f"--customize-hook={h}" for h in hooks),
            debian.SUITE,
            "/dev/null",
            debian.MIRROR,
        ]
        subprocess.run(argv, check=True, capture_output=True, timeout=3600)
        stage_out = stage / "out"
        stage_out.mkdir()
        for kind in kinds:
            raw = stage / f"{kind}.raw"
            if kind == "bios":
                _bios_disk(raw, rootfs, stage)
            else:
                _uefi_disk(raw, rootfs, stage, arch)
            _xz(raw, stage_out / images[kind].name)
            raw.unlink()
        if out.exists():
            shutil.rmtree(out)
        stage_out.rename(out)
    return images


MIB = 1 << 20
SECTOR = 512


def _partition(raw: Path, script: str) -> None:
    subprocess.run(["sfdisk", "-q", str(raw)], input=script.encode(), check=True, capture_output=True)


def _put(raw: Path, src: Path, offset: int) -> None:
    """``src`` written into ``raw`` at byte ``offset``, keeping the holes of both."""
    subprocess.run(
        ["dd", f"if={src}", f"of={raw}", "bs=1M", f"seek={offset}", "oflag=seek_bytes", "conv=notrunc,sparse"],
        check=True,
        capture_output=True,
    )


EFI_TARGETS = {"x86_64": ("x86_64-efi", "BOOTX64.EFI"), "aarch64": ("arm64-efi", "BOOTAA64.EFI")}


def _core_image(kind: str, stage: Path, arch: str = "x86_64") -> Path:
    early = stage / f"early-{kind}.cfg"
    early.write_text(EARLY_CONFIG)
    target, name = ("i386-pc", "core.img") if kind == "bios" else EFI_TARGETS[arch]
    core = stage / f"{kind}-{name}"
    argv = ["grub-mkimage", "-O", target, "-o", str(core), "-c", str(early), "-p", "/boot/grub"]
    if arch == "aarch64":
        argv += ["-d", str(stage / "arm64-efi")]
    subprocess.run([*argv, *CORE_MODULES[kind]], check=True, capture_output=True)
    return core


def _bios_disk(raw: Path, rootfs: Path, stage: Path) -> None:
    size = rootfs.stat().st_size
    with raw.open("wb") as f:
        f.truncate(MIB + size)
    _partition(raw, f"label: dos\nstart=2048, size={size // SECTOR}, type=83, bootable\n")
    _put(raw, rootfs, MIB)
    core = _core_image("bios", stage)
    if core.stat().st_size > MIB - SECTOR:
        raise RuntimeError(f"GRUB's core image ({core.stat().st_size} bytes) does not fit before the partition")
    # The MBR's boot code (its first 440 bytes; the partition table after them stays), then the core image from
    # sector 1: GRUB's boot sector loads sector 1, whose block list grub-mkimage has filled in.
    boot = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()[:440]
    with raw.open("r+b") as f:
        f.write(boot)
        f.seek(SECTOR)
        f.write(core.read_bytes())


def _uefi_disk(raw: Path, rootfs: Path, stage: Path, arch: str) -> None:
    size = rootfs.stat().st_size
    esp_size = ESP_SIZE_MIB * MIB
    with raw.open("wb") as f:
        f.truncate(MIB + esp_size + size + MIB)  # (the backup GPT at the end)
    _partition(
        raw,
        "label: gpt\n"
        f"start=2048, size={esp_size // SECTOR}, type={ESP_TYPE}, name=esp\n"
        f"size={size // SECTOR}, type={LINUX_TYPE}, name=root\n",
    )
    esp = stage / "esp.img"
    esp.unlink(missing_ok=True)
    subprocess.run(["mkfs.vfat", "-n", "ESP", "-C", str(esp), str(esp_size // 1024)], check=True, capture_output=True)
    core = _core_image("uefi", stage, arch)
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], check=True, capture_output=True)
    removable = f"::/EFI/BOOT/{EFI_TARGETS[arch][1]}"  # the path firmware boots without a boot entry
    subprocess.run(["mcopy", "-i", str(esp), str(core), removable], check=True, capture_output=True)
    _put(raw, esp, MIB)
    _put(raw, rootfs, MIB + esp_size)


def _xz(raw: Path, dest: Path) -> None:
    with dest.open("wb") as out:
        subprocess.run(["xz", "-T0", "-1", "-c", str(raw)], stdout=out, check=True)


def sha512(path: Path) -> str:
    h = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha512:{h.hexdigest()}"
