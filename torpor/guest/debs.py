"""Debian packages as build inputs: resolve exact versions with apt, download them, unpack selected files."""

from __future__ import annotations

import hashlib
import logging
import os
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


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse Debian control data (as printed by ``apt-cache show``) into one mapping per stanza."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                stanzas.append(fields)
                fields = {}
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if fields:
        stanzas.append(fields)
    return stanzas


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of Debian control data."""
    stanzas = parse_stanzas(text)
    return stanzas[0] if stanzas else {}


def dependency_names(fields: dict[str, str]) -> list[str]:
    """Package names from Pre-Depends and Depends, taking the first alternative of each."""
    names = []
    for key in ("Pre-Depends", "Depends"):
        for dep in filter(None, (d.strip() for d in fields.get(key, "").split(","))):
            first = dep.split("|")[0].split("(")[0].strip()
            names.append(first.split(":")[0])
    return names


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


def resolve_closure(names: list[str], follow: Callable[[str], bool]) -> list[Package]:
    """``names`` and, transitively, those of their dependencies for which ``follow(name)`` is true."""
    seen: dict[str, Package] = {}
    frontier = list(dict.fromkeys(names))
    while frontier:
        out = subp.run(["apt-cache", "show", "--no-all-versions", *frontier], check=False).stdout
        stanzas = {f.get("Package", ""): f for f in parse_stanzas(out)}
        missing = [n for n in frontier if n not in stanzas and n in names]
        if missing:
            raise ImageError(
                f"apt does not know the package(s) {', '.join(missing)}",
                hint="run `apt-get update` (as root) so that apt's package lists are present, then try again",
            )
        nxt: list[str] = []
        for name in frontier:
            fields = stanzas.get(name)
            if fields is None:  # a virtual package among the dependencies; nothing to unpack
                continue
            seen[name] = Package(name, fields["Version"])
            nxt += [d for d in dependency_names(fields) if follow(d) and d not in seen and d not in nxt]
        frontier = [n for n in nxt if n not in seen]
    return sorted(seen.values(), key=lambda p: p.name)


def resolve_kernel(meta: str) -> Package:
    """Follow a kernel metapackage (``linux-image-amd64``) to the versioned image package it depends on."""
    depends = _apt_show(meta).get("Depends", "")
    for dep in depends.split(","):
        dep_name = dep.split("(")[0].split("|")[0].strip()
        if dep_name.startswith("linux-image-"):
            return resolve(dep_name)
    raise ImageError(f"{meta} does not depend on a linux-image package")


# apt's configuration items naming the files that decide which version it installs (the package lists, the
# sources, the pinning, what is installed, apt's own configuration): printed by `apt-config shell`.
_APT_STATE_ITEMS = (
    "Dir::State::lists/d",
    "Dir::Etc::sourcelist/f",
    "Dir::Etc::sourceparts/d",
    "Dir::Etc::preferences/f",
    "Dir::Etc::preferencesparts/d",
    "Dir::Etc::parts/d",
    "Dir::State::status/f",
)


def apt_state() -> str:
    """A fingerprint of everything apt reads to pick package versions: equal fingerprints, equal answers.

    Resolving the guest's packages asks apt-cache, which re-reads all package lists each time where apt keeps no
    binary cache of them (as in many container images): seconds at every first start of an instance.  Files are
    identified by path, size and mtime; `apt-get update` rewrites the lists it changes.
    """
    argv = ["apt-config", "shell"]
    for i, item in enumerate(_APT_STATE_ITEMS):
        argv += [f"V{i}", item]
    paths = [line.split("=", 1)[1].strip("'") for line in subp.run(argv).stdout.splitlines() if "=" in line]
    h = hashlib.sha256()
    for path in paths:
        entries = sorted(os.scandir(path), key=lambda e: e.name) if os.path.isdir(path) else [path]
        for entry in entries:
            try:
                st = os.stat(entry)
            except OSError:
                continue
            h.update(f"{os.fspath(entry)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def download(packages: list[Package], dest: Path) -> dict[str, Path]:
    """Download ``packages`` into ``dest`` with one ``apt-get download``; map package names to .deb paths."""
    dest.mkdir(parents=True, exist_ok=True)
    subp.run(["apt-get", "download", "-q", *map(str, packages)], cwd=dest, timeout=1800)
    out = {}
    for pkg in packages:
        got = list(dest.glob(f"{pkg.name}_*.deb"))
        if len(got) != 1:
            raise ImageError(f"apt-get download {pkg} produced {len(got)} .deb files in {dest}, expected one")
        out[pkg.name] = got[0]
    return out


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
            # "tar", not "data": libc6 ships absolute symlinks (lib64/ld-linux-x86-64.so.2), resolved later
            # inside the unpacked tree, never on the host.
            tar.extract(member, dest, filter="tar")
            taken.append(path)
    subp.finish(proc)
    return taken
