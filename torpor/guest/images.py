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
    """Put the image's boot files into ``inst_dir``; return the base disk to create the instance disk over."""
    image = config.image_for_arch()
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
    _copy(_get(image.location, image.digest, cache, show_progress), base)
    return base


def _get(location: str, digest: str | None, cache: Path, show_progress: bool) -> Path:
    bar = fetch.ProgressBar(f"fetching {location.rsplit('/', 1)[-1]}", enabled=None if show_progress else False)
    return fetch.fetch(location, digest, cache, bar)


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
