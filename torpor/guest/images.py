"""Turn an instance's ``images`` entry into files in the instance directory, once, at the first start.

The instance keeps its own copies of kernel and initrd (and its base disk), so it never depends on the cache
after creation and always boots exactly what it was created with.  Of the built guests' kernel and initrd,
which nothing ever writes to, the copy is a hard link where the cache is on the same filesystem.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torpor.config.schema import Config, Image

from torpor.errors import ImageError
from torpor.guest import builder, debian, fetch, pvh
from torpor.store import filenames

BUILD_SCHEME = "build:"
DEFAULT_GUEST = "build:default"  # torpor's own small guest, which reports ready and provisioning itself
DEBIAN_GUEST = "build:debian"
DOCKER_GUEST = "build:docker"  # template:debian's image with Docker
RECIPES = {DEBIAN_GUEST: debian.DEBIAN, DOCKER_GUEST: debian.DOCKER}
# What a built guest's user belongs to beyond the defaults, and the command (run as that user) whose success
# means the guest is ready: cloud-init done is not enough where a service is what the guest is for.
USER_GROUPS = {DOCKER_GUEST: ("docker",)}
READY_COMMAND = {DOCKER_GUEST: "until docker info >/dev/null 2>&1; do sleep 0.2; done"}
DEFAULT_CMDLINE = "console=ttyS0 quiet panic=-1"


def kernel_cmdline(image: Image) -> str:
    if image.location == DEFAULT_GUEST:
        return DEFAULT_CMDLINE
    if image.location in RECIPES:
        return debian.CMDLINE
    return image.kernel.cmdline if image.kernel else ""


def prepare(
    inst_dir: Path, config: Config, cache: Path, report: Callable[[str], None], show_progress: bool
) -> Path | None:
    """Put the boot files of the first of the arch's images that can be had into ``inst_dir``, as Lima tries
    each location in order; return the base disk to create the instance disk over."""
    candidates = [img for img in config.images if img.arch == config.arch]
    failed: list[str] = []
    hints: list[str] = []
    for i, image in enumerate(candidates):
        try:
            return _prepare_one(inst_dir, image, cache, report, show_progress)
        except ImageError as e:
            failed.append(f"{image.location or (image.kernel and image.kernel.location)}: {e.message}")
            hints.append(e.hint or "")
            if i + 1 < len(candidates):
                report(f"image {i + 1} of {len(candidates)} failed: {failed[-1]}; trying the next")
    if len(failed) == 1:
        raise ImageError(failed[0], hint=hints[0] or "check the image's location and digest in the YAML")
    raise ImageError(
        f"none of the {len(failed)} images for {config.arch} could be had:\n  " + "\n  ".join(failed),
        hint="check the images' locations and digests in the YAML",
    )


def _prepare_one(
    inst_dir: Path, image: Image, cache: Path, report: Callable[[str], None], show_progress: bool
) -> Path | None:
    if image.location and image.location.startswith(BUILD_SCHEME) and image.arch != "x86_64":
        raise ImageError(
            f"torpor builds its own guests ({image.location}) for x86_64 only, not {image.arch}",
            hint=f'list a cloud image for {image.arch} under images: (README, "Cloud images"), or set arch: x86_64 '
            "to run torpor's guest emulated",
        )
    if image.location == DEFAULT_GUEST:
        built = builder.build_default(cache, report)
        _link_or_copy(pvh.boot_kernel(built.kernel), inst_dir / filenames.KERNEL)
        _link_or_copy(built.initrd, inst_dir / filenames.INITRD)
        return None
    if image.location in RECIPES:
        deb = debian.build(cache, report, RECIPES[image.location])
        _link_or_copy(pvh.boot_kernel(deb.kernel), inst_dir / filenames.KERNEL)
        _link_or_copy(deb.initrd, inst_dir / filenames.INITRD)
        base = inst_dir / filenames.BASE_DISK
        _copy(deb.disk, base)
        return base
    if image.location and image.location.startswith(BUILD_SCHEME):
        raise ImageError(
            f"unknown built guest {image.location!r}",
            hint=f"torpor builds {DEFAULT_GUEST}, {DEBIAN_GUEST} and {DOCKER_GUEST}",
        )
    if image.kernel is not None:
        _copy(_get(image.kernel.location, image.kernel.digest, cache, show_progress), inst_dir / filenames.KERNEL)
    if image.initrd is not None:
        _copy(_get(image.initrd.location, image.initrd.digest, cache, show_progress), inst_dir / filenames.INITRD)
    if image.location is None:
        return None
    base = inst_dir / filenames.BASE_DISK
    _copy(_get(image.location, image.digest, cache, show_progress, disk=True), base)
    return base


def _get(location: str, digest: str | None, cache: Path, show_progress: bool, disk: bool = False) -> Path:
    bar = fetch.ProgressBar(f"fetching {location.rsplit('/', 1)[-1]}", enabled=None if show_progress else False)
    return (fetch.fetch_image if disk else fetch.fetch)(location, digest, cache, bar)


def _link_or_copy(src: Path, dest: Path) -> None:
    """``src`` at ``dest``: a hard link (instant, no space) where both are on one filesystem, else a copy."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        _copy(src, dest)
        return
    tmp.rename(dest)


def _copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.rename(dest)
