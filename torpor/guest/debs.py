"""Debian packages as build inputs: resolve exact versions with apt, download them, unpack selected files."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torpor import subp
from torpor.errors import CommandError, ImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}={self.version}"


def parse_control(text: str) -> dict[str, str]:
    """Parse the first stanza of Debian control data (as printed by ``apt-cache show``)."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _apt_show(name: str) -> dict[str, str]:
    try:
        out = subp.run(["apt-cache", "show", "--no-all-versions", name]).stdout
    except CommandError as e:
        raise ImageError(
            f"apt does not know the package {name}",
            hint="run `apt-get update` (as root) so that apt's package lists are present, then try again",
        ) from e
    fields = parse_control(out)
    if "Version" not in fields:
        raise ImageError(f"apt has no installable version of {name}", hint="run `apt-get update` and try again")
    return fields


def resolve(name: str) -> Package:
    """The candidate version apt would install for ``name``."""
    return Package(name, _apt_show(name)["Version"])


def resolve_kernel(meta: str) -> Package:
    """Follow a kernel metapackage (``linux-image-amd64``) to the versioned image package it depends on."""
    depends = _apt_show(meta).get("Depends", "")
    for dep in depends.split(","):
        dep_name = dep.split("(")[0].split("|")[0].strip()
        if dep_name.startswith("linux-image-"):
            return resolve(dep_name)
    raise ImageError(f"{meta} does not depend on a linux-image package")


def download(pkg: Package, dest: Path) -> Path:
    """Download ``pkg`` into ``dest`` with ``apt-get download`` and return the .deb's path."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.deb"))
    subp.run(["apt-get", "download", "-q", str(pkg)], cwd=dest, timeout=900)
    new = [p for p in set(dest.glob(f"{pkg.name}_*.deb")) - before]
    if len(new) != 1:
        raise ImageError(f"apt-get download {pkg} produced {len(new)} .deb files in {dest}, expected one")
    return new[0]


def extract(deb: Path, dest: Path, select: Callable[[str], bool]) -> list[str]:
    """Unpack the members of ``deb``'s data archive for which ``select(path)`` is true; return their paths.

    ``dpkg-deb --fsys-tarfile`` decompresses whatever the package uses (xz, zstd, gzip) into a plain tar stream.
    """
    proc = subp.stream_stdout(["dpkg-deb", "--fsys-tarfile", deb])
    assert proc.stdout is not None
    taken: list[str] = []
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if not path or not select(path):
                continue
            member.name = path
            tar.extract(member, dest, filter="data")
            taken.append(path)
    subp.finish(proc)
    return taken
