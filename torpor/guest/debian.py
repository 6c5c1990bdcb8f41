"""template:debian: a normal Debian 12 system (systemd, OpenSSH, cloud-init, qemu-guest-agent) built offline;
template:docker: the same with Debian's Docker (docker.io, containerd) and dockerd started at boot.

``mmdebstrap`` installs the packages from the distribution's mirror (the package registry is all the network
torpor needs) and, in a customize hook that runs where the tree's ownership is right (as root, or inside
mmdebstrap's user namespace otherwise), torpor configures it and turns it into an ext4 filesystem with
``mke2fs -d``.  The kernel and initramfs are copied out and booted directly (no boot loader, no partition table:
the filesystem is the whole disk, ``root=/dev/vda``).  cloud-init reads torpor's NoCloud seed at boot: it makes
the user, installs the SSH key, grows the filesystem to the instance's disk size and brings the network up, as
in a cloud image.  The result is cached by recipe; a build takes a few minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torpor import subp
from torpor.errors import CommandError, ImageError
from torpor.store.cache import cache_root

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-amd64",
    "initramfs-tools",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",  # growpart, which cloud-init's resize modules look for
    "qemu-guest-agent",
    "sshfs",  # the guest's side of mounts
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "procps",
    "less",
)
# template:docker's: Debian's Docker engine and CLI (with containerd, runc and iptables), and a static busybox,
# the root filesystem of the small images the tests and the bench make with `docker import` (no registry here).
DOCKER_PACKAGES = ("docker.io", "apparmor", "busybox-static")  # (dockerd loads its AppArmor profile)
FS_SIZE = "3G"  # the image's filesystem; cloud-init grows it to the instance's disk at the first boot
CMDLINE = "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1"

# Run in the finished tree ($1), before it becomes a filesystem.
CONFIGURE = r"""
set -eu
root="$1"
echo "/dev/vda / ext4 rw,discard,errors=remount-ro 0 1" > "$root/etc/fstab"
# Only torpor's NoCloud seed: no probing for cloud metadata services that are not there.
# The hostname in /etc/hosts (sudo looks it up); C.UTF-8, which needs no generated locales.
printf 'datasource_list: [NoCloud, None]\nmanage_etc_hosts: true\nlocale: false\n' \
    > "$root/etc/cloud/cloud.cfg.d/90-torpor.cfg"
echo "LANG=C.UTF-8" > "$root/etc/default/locale"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
# A developer VM does not run apt on a timer, nor wait for a network that cloud-init configures itself.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer man-db.timer fstrim.timer \
            systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -f "$root/etc/ssh/ssh_host_"*  # each instance makes its own at its first boot
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: > "$root/etc/machine-id"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
"""


@dataclass(frozen=True)
class DiskImage:
    disk: Path  # qcow2
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class Recipe:
    name: str  # the cache's directory: guests/NAME/KEY
    packages: tuple[str, ...]


DEBIAN = Recipe("debian", PACKAGES)
DOCKER = Recipe("docker", PACKAGES + DOCKER_PACKAGES)


def recipe_key(recipe: Recipe = DEBIAN) -> str:
    inputs = {"suite": SUITE, "mirror": MIRROR, "packages": recipe.packages, "fs": FS_SIZE, "configure": CONFIGURE}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _load(d: Path) -> DiskImage:
    return DiskImage(d / "disk.qcow2", d / "vmlinuz", d / "initrd.img")


def build(cache: Path | None = None, report: Callable[[str], None] = log.info, recipe: Recipe = DEBIAN) -> DiskImage:
    """Build the image of ``recipe`` into the cache unless it is built already."""
    cache = cache or cache_root()
    out = cache / "guests" / recipe.name / recipe_key(recipe)
    if (out / "manifest.json").exists():
        return _load(out)
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "building template:debian needs mmdebstrap", hint="install it: `sudo apt-get install mmdebstrap`"
        )
    report(f"building the {recipe.name} image (Debian {SUITE}) with mmdebstrap (a few minutes, once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        stage = Path(tmp) / "out"
        stage.mkdir()
        raw = stage / "disk.raw"
        hooks = [
            CONFIGURE,
            # The tree has /proc, /sys and /dev mounted inside while hooks run: a plain bind mount of it does not.
            'clean=$(mktemp -d) && mount --bind "$1" "$clean" && '
            f'mke2fs -q -t ext4 -L torpor-root -d "$clean" {shlex.quote(str(raw))} {FS_SIZE}; '
            'status=$?; umount "$clean"; rmdir "$clean"; exit $status',
            f'cp "$1"/boot/vmlinuz-* {shlex.quote(str(stage / "vmlinuz"))}',
            f'cp "$1"/boot/initrd.img-* {shlex.quote(str(stage / "initrd.img"))}',
            f"chmod a+r {shlex.quote(str(stage))}/*",
        ]
        argv = [
            "mmdebstrap",
            "--mode=auto",
            "--format=null",
            "--variant=apt",
            f"--include={','.join(recipe.packages)}",
            *(f"--customize-hook={h}" for h in hooks),
            SUITE,
            "/dev/null",
            MIRROR,
        ]
        try:
            subp.run(argv, timeout=3600)
        except CommandError as e:
            raise ImageError(f"mmdebstrap failed: {e}") from None
        subp.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, stage / "disk.qcow2"])
        raw.unlink()
        manifest = {"suite": SUITE, "packages": recipe.packages, "key": recipe_key(recipe), "cmdline": CMDLINE}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    report(f"built the {recipe.name} image in {out}")
    return _load(out)
