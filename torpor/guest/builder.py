"""Build the default guest (a Debian kernel and a busybox userland in an initramfs) from Debian packages.

Nothing is downloaded from the web: the inputs are the distribution's own ``linux-image`` and ``busybox-static``
packages fetched with ``apt-get download``.  The output is keyed by the exact package versions and the guest's
own scripts, and is byte-for-byte reproducible from them, so it is built once per cache and shared by every
instance (and every test) that uses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torpor.errors import ImageError
from torpor.guest import cpio, debs, kmod

log = logging.getLogger(__name__)

# Bump when the layout of the built image changes in a way the inputs below do not capture.
FORMAT = 1
KERNEL_META = "linux-image-amd64"
USERLAND = ("busybox-static",)
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
)
ROOTFS_FILES = {  # package data file -> path in the initramfs, mode
    "init": ("init", 0o755),
    "inittab": ("lib/torpor/inittab", 0o644),
    "rc.boot": ("lib/torpor/rc.boot", 0o755),
    "rc.shutdown": ("lib/torpor/rc.shutdown", 0o755),
    "power-button": ("lib/torpor/power-button", 0o755),
    "udhcpc.script": ("lib/torpor/udhcpc.script", 0o755),
}
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "torpor\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/profile": "export PATH=/bin:/sbin\nexport PS1='\\u@\\h:\\w\\$ '\n",
}


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd``."""

    kernel: Path
    initrd: Path
    manifest: dict[str, object]


def cache_root() -> Path:
    """Where torpor caches downloaded and built images (``$TORPOR_CACHE``, else the XDG cache directory)."""
    if env := os.environ.get("TORPOR_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torpor"


def _rootfs_sources() -> dict[str, bytes]:
    pkg = resources.files("torpor.guest") / "rootfs"
    return {name: (pkg / name).read_bytes() for name in sorted(ROOTFS_FILES)}


def build_key(packages: list[debs.Package], scripts: dict[str, bytes]) -> str:
    """The cache key of a build: every input that affects the output bytes."""
    inputs = {
        "format": FORMAT,
        "packages": [str(p) for p in packages],
        "modules": list(MODULES),
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


def build_default(cache: Path | None = None, report: Callable[[str], None] = log.info) -> GuestImage:
    """Build the default guest into the cache unless the current package versions are built already."""
    cache = cache or cache_root()
    kernel_pkg = debs.resolve_kernel(KERNEL_META)
    packages = [kernel_pkg, *(debs.resolve(n) for n in USERLAND)]
    scripts = _rootfs_sources()
    key = build_key(packages, scripts)
    out = cache / "guests" / "default" / key[:16]
    if (out / "manifest.json").exists():
        return _load(out)

    report(f"building the default guest from {', '.join(map(str, packages))}")
    debdir = cache / "debs"
    files = {p.name: _cached_download(p, debdir, report) for p in packages}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        report(f"unpacking {kernel_pkg.name}")
        kernel, moddir = _unpack_kernel(files[kernel_pkg.name], work / "kernel")
        debs.extract(files["busybox-static"], work / "busybox", lambda p: p == "bin/busybox")
        order = kmod.load_order(MODULES, kmod.index_modules(moddir), kmod.builtin_modules(moddir))
        manifest: dict[str, object] = {
            "key": key,
            "packages": [str(p) for p in packages],
            "modules": order,
            "kernelVersion": moddir.name,
        }
        entries = _entries(work / "busybox/bin/busybox", kmod.index_modules(moddir), order, scripts, manifest)
        raw = io.BytesIO()
        cpio.write(raw, entries)
        stage = work / "out"
        stage.mkdir()
        shutil.copyfile(kernel, stage / "vmlinuz")
        # mtime=0 keeps the gzip header, and so the whole file, reproducible.
        (stage / "initrd.img").write_bytes(gzip.compress(raw.getvalue(), compresslevel=6, mtime=0))
        manifest["initrdSha256"] = hashlib.sha256((stage / "initrd.img").read_bytes()).hexdigest()
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():  # a half-finished earlier build (manifest.json missing)
            shutil.rmtree(out)
        stage.rename(out)
    report(f"built the default guest in {out}")
    return _load(out)


def _cached_download(pkg: debs.Package, debdir: Path, report: Callable[[str], None]) -> Path:
    debdir.mkdir(parents=True, exist_ok=True)
    existing = [p for p in debdir.glob(f"{pkg.name}_*.deb") if _deb_version(p) == pkg.version]
    if existing:
        return existing[0]
    report(f"downloading {pkg} with apt-get")
    with tempfile.TemporaryDirectory(dir=debdir, prefix=".dl-") as tmp:
        got = debs.download(pkg, Path(tmp))
        final = debdir / got.name
        got.rename(final)
    return final


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
    busybox: Path, modules: dict[str, Path], order: list[str], scripts: dict[str, bytes], manifest: dict[str, object]
) -> list[cpio.Entry]:
    dirs = [
        "bin",
        "dev",
        "etc",
        "etc/torpor",
        "home",
        "lib",
        "lib/modules",
        "lib/torpor",
        "proc",
        "root",
        "run",
        "sys",
        "tmp",
    ]
    entries = [cpio.directory(d) for d in dirs]
    entries += [
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.chardev("dev/console", 5, 1),
        cpio.file("etc/torpor/modules", "".join(f"{m}\n" for m in order).encode()),
        cpio.file("etc/torpor-release", json.dumps(manifest, sort_keys=True).encode() + b"\n"),
    ]
    entries += [
        cpio.file(path, content.encode(), 0o640 if "shadow" in path else 0o644) for path, content in ETC_FILES.items()
    ]
    entries += [cpio.file(f"lib/modules/{m}.ko", modules[m].read_bytes()) for m in order]
    for name, (path, perm) in ROOTFS_FILES.items():
        entries.append(cpio.file(path, scripts[name], perm))
    return entries
