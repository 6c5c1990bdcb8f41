"""Build the default guest (a Debian kernel and a busybox userland in an initramfs) from Debian packages.

Nothing is downloaded from the web: the inputs are the distribution's own ``linux-image`` and ``busybox-static``
packages fetched with ``apt-get download``.  The output is keyed by the exact package versions and the guest's
own scripts, and is byte-for-byte reproducible from them, so it is built once per cache and shared by every
instance (and every test) that uses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torpor.errors import ImageError
from torpor.guest import cpio, debs, elf, kmod
from torpor.store import atomic
from torpor.store.cache import cache_root

log = logging.getLogger(__name__)

# Bump when the layout of the built image changes in a way the inputs below do not capture.
FORMAT = 2
KERNEL_META = "linux-image-amd64"
RESOLVED = "resolved.json"  # the last resolution of the packages, with the apt state it was made in
USERLAND = ("busybox-static",)
# Programs taken from Debian packages, with the shared libraries they need (found from their ELF headers in the
# packages' library dependencies): an SSH server with SFTP, the QEMU guest agent, sudo with PAM, sshfs.
PROGRAMS: dict[str, tuple[str, ...]] = {
    "dropbear-bin": ("usr/sbin/dropbear", "usr/bin/dropbearkey"),
    "e2fsprogs": ("sbin/mke2fs", "sbin/resize2fs"),  # ext4 with a journal (busybox's makes ext2); disk growth
    "openssh-sftp-server": ("usr/lib/openssh/sftp-server",),
    "qemu-guest-agent": ("usr/sbin/qemu-ga",),
    "sshfs": ("usr/bin/sshfs",),  # the guest's side of mounts
    "sudo": ("usr/bin/sudo", "usr/libexec/sudo/sudoers.so"),
    "libpam-modules": ("lib/x86_64-linux-gnu/security/pam_permit.so", "lib/x86_64-linux-gnu/security/pam_deny.so"),
}
SETUID = frozenset({"usr/bin/sudo"})
LINKS = {  # path in the guest -> symlink target
    "bin/sh": "busybox",
    "usr/lib/sftp-server": "openssh/sftp-server",  # where dropbear looks for it
    "sbin/hwclock": "/bin/busybox",  # qemu-ga's guest-set-time runs it
}
# Drivers the default guest loads at boot; their dependencies are added from the modules' own metadata.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "crc32c_generic",
    "ext4",
    "isofs",
    "button",
    "evdev",
    "fuse",
    "9p",  # mountType 9p
    "9pnet_virtio",
    "virtiofs",  # mountType virtiofs
)
ROOTFS_FILES = {  # package data file -> path in the initramfs, mode
    "init": ("init", 0o755),
    "inittab": ("lib/torpor/inittab", 0o644),
    "rc.boot": ("lib/torpor/rc.boot", 0o755),
    "rc.shutdown": ("lib/torpor/rc.shutdown", 0o755),
    "power-button": ("lib/torpor/power-button", 0o755),
    "udhcpc.script": ("lib/torpor/udhcpc.script", 0o755),
    "service": ("lib/torpor/service", 0o755),
    "cidata": ("lib/torpor/cidata", 0o755),
    "provision": ("lib/torpor/provision", 0o755),
    "setup": ("lib/torpor/setup", 0o755),
    "mounts": ("lib/torpor/mounts", 0o755),
}
ETC_FILES = {
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/sudoers": "Defaults !fqdn\nroot ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
    # sudo's own policy (NOPASSWD for the torpor user) decides; PAM only has to let it through.
    "etc/pam.d/sudo": "".join(f"{kind} sufficient pam_permit.so\n" for kind in ("auth", "account", "session")),
    "etc/pam.d/other": "".join(f"{kind} required pam_deny.so\n" for kind in ("auth", "account", "session")),
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "torpor\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/profile": (
        "export PATH=/bin:/sbin\nexport PS1='\\u@\\h:\\w\\$ '\n"
        'for f in /etc/profile.d/*.sh; do [ -r "$f" ] && . "$f"; done\n'
    ),
}


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd``."""

    kernel: Path
    initrd: Path
    manifest: dict[str, object]


def _rootfs_sources() -> dict[str, bytes]:
    pkg = resources.files("torpor.guest") / "rootfs"
    return {name: (pkg / name).read_bytes() for name in sorted(ROOTFS_FILES)}


def build_key(packages: list[debs.Package], scripts: dict[str, bytes]) -> str:
    """The cache key of a build: every input that affects the output bytes."""
    inputs = {
        "format": FORMAT,
        "packages": [str(p) for p in packages],
        "modules": list(MODULES),
        "programs": PROGRAMS,
        "links": LINKS,
        "scripts": {k: hashlib.sha256(v).hexdigest() for k, v in scripts.items()},
        "etc": ETC_FILES,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def find_built(cache: Path | None = None) -> GuestImage | None:
    """The most recently built default guest in the cache, without asking apt (for offline starts)."""
    root = (cache or cache_root()) / "guests" / "default"
    built = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return _load(built[0].parent) if built else None


def _load(d: Path) -> GuestImage:
    manifest = json.loads((d / "manifest.json").read_text())
    return GuestImage(d / "vmlinuz", d / "initrd.img", manifest)


def resolve_packages(cache: Path) -> list[debs.Package]:
    """The exact packages the default guest is built from: the kernel first, then the userland and libraries.

    The answer is kept in the cache with the fingerprint of apt's state (debs.apt_state) and asked of apt again
    only when that changes.
    """
    memo = cache / "guests" / "default" / RESOLVED
    state = debs.apt_state()
    query = {"aptState": state, "kernel": KERNEL_META, "names": [*USERLAND, *PROGRAMS]}
    try:
        known = json.loads(memo.read_text())
        if known.get("query") == query:
            return [debs.Package(*str(p).split("=", 1)) for p in known["packages"]]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        pass  # none yet, or unreadable: ask apt
    packages = [debs.resolve_kernel(KERNEL_META), *debs.resolve_closure([*USERLAND, *PROGRAMS], _is_library)]
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(memo, json.dumps({"query": query, "packages": [str(p) for p in packages]}) + "\n")
    return packages


def build_default(cache: Path | None = None, report: Callable[[str], None] = log.info) -> GuestImage:
    """Build the default guest into the cache unless the current package versions are built already."""
    cache = cache or cache_root()
    packages = resolve_packages(cache)
    kernel_pkg, libs = packages[0], packages[1:]
    scripts = _rootfs_sources()
    key = build_key(packages, scripts)
    out = cache / "guests" / "default" / key[:16]
    if (out / "manifest.json").exists():
        return _load(out)

    report(f"building the default guest from {', '.join(map(str, packages))}")
    debdir = cache / "debs"
    files = _cached_downloads(packages, debdir, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        report(f"unpacking {kernel_pkg.name}")
        kernel, moddir = _unpack_kernel(files[kernel_pkg.name], work / "kernel")
        tree = work / "userland"
        for p in libs:
            debs.extract(files[p.name], tree, _keep_in_userland)
        programs = elf.closure(tree, ["bin/busybox", *(f for fs in PROGRAMS.values() for f in fs)])
        modules = kmod.index_modules(moddir)
        order = kmod.load_order(MODULES, modules, kmod.builtin_modules(moddir))
        manifest: dict[str, object] = {
            "key": key,
            "packages": [str(p) for p in packages],
            "modules": order,
            "kernelVersion": moddir.name,
        }
        entries = _entries(programs, modules, order, scripts, manifest)
        raw = io.BytesIO()
        cpio.write(raw, entries)
        stage = work / "out"
        stage.mkdir()
        shutil.copyfile(kernel, stage / "vmlinuz")
        # Uncompressed: the guest kernel would unpack a compressed one itself, 0.5-0.6 s of every cold boot under
        # TCG (docs/design.md), to save 10 MiB of cache.
        (stage / "initrd.img").write_bytes(raw.getvalue())
        manifest["initrdSha256"] = hashlib.sha256((stage / "initrd.img").read_bytes()).hexdigest()
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():  # a half-finished earlier build (manifest.json missing)
            shutil.rmtree(out)
        stage.rename(out)
    report(f"built the default guest in {out}")
    return _load(out)


def _is_library(name: str) -> bool:
    # Follow only library packages: the programs' other dependencies (debconf, perl, init helpers) hold nothing
    # the guest runs.
    return name.startswith(("lib", "zlib"))


def _keep_in_userland(path: str) -> bool:
    return not path.startswith(("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian"))


def _cached_downloads(packages: list[debs.Package], debdir: Path, report: Callable[[str], None]) -> dict[str, Path]:
    """The .deb of each package, downloading (in one apt-get call) those not in the cache yet."""
    debdir.mkdir(parents=True, exist_ok=True)
    have: dict[str, Path] = {}
    for pkg in packages:
        hit = [p for p in debdir.glob(f"{pkg.name}_*.deb") if _deb_version(p) == pkg.version]
        if hit:
            have[pkg.name] = hit[0]
    missing = [p for p in packages if p.name not in have]
    if missing:
        report(f"downloading {len(missing)} Debian packages with apt-get")
        with tempfile.TemporaryDirectory(dir=debdir, prefix=".dl-") as tmp:
            for name, got in debs.download(missing, Path(tmp)).items():
                final = debdir / got.name
                got.rename(final)
                have[name] = final
    return have


def _deb_version(deb: Path) -> str:
    # apt names files NAME_VERSION_ARCH.deb with ':' (epoch) escaped as %3a.
    parts = deb.name.removesuffix(".deb").split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else ""


def _unpack_kernel(deb: Path, dest: Path) -> tuple[Path, Path]:
    debs.extract(
        deb, dest, lambda p: p.startswith("boot/vmlinuz-") or (p.startswith("lib/modules/") and not p.endswith("/"))
    )
    kernels = list((dest / "boot").glob("vmlinuz-*"))
    moddirs = [d for d in (dest / "lib/modules").iterdir() if d.is_dir()]
    if len(kernels) != 1 or len(moddirs) != 1:
        raise ImageError(f"unexpected layout in {deb.name}: {len(kernels)} kernels, {len(moddirs)} module trees")
    return kernels[0], moddirs[0]


def _entries(
    programs: dict[str, Path],
    modules: dict[str, Path],
    order: list[str],
    scripts: dict[str, bytes],
    manifest: dict[str, object],
) -> list[cpio.Entry]:
    files: list[cpio.Entry] = [
        cpio.chardev("dev/console", 5, 1),
        cpio.file("etc/torpor/modules", "".join(f"{m}\n" for m in order).encode()),
        cpio.file("etc/torpor-release", json.dumps(manifest, sort_keys=True).encode() + b"\n"),
    ]
    for path, real in programs.items():
        perm = 0o4755 if path in SETUID else (0o755 if real.stat().st_mode & 0o111 else 0o644)
        files.append(cpio.file(path, real.read_bytes(), perm))
    files += [cpio.symlink(path, target) for path, target in LINKS.items()]
    for path, content in ETC_FILES.items():
        perm = 0o440 if "sudoers" in path else (0o640 if "shadow" in path else 0o644)
        files.append(cpio.file(path, content.encode(), perm))
    files += [cpio.file(f"lib/modules/{m}.ko", modules[m].read_bytes()) for m in order]
    for name, (path, perm) in ROOTFS_FILES.items():
        files.append(cpio.file(path, scripts[name], perm))
    # The kernel unpacks an initramfs without creating missing parents: list every directory.
    dirs = {"proc", "sys", "run", "tmp", "root", "home", "etc/sudoers.d", "etc/dropbear", "var/lib/torpor"}
    for e in files:
        parts = e.path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for d in list(dirs):
        parts = d.split("/")
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return [cpio.directory(d, 0o1777 if d == "tmp" else 0o755) for d in sorted(dirs)] + files
