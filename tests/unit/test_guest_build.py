import io
import stat
from pathlib import Path

import pytest

from torpor.errors import ImageError
from torpor.guest import builder, cpio, debs, kmod


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A minimal reader of the newc format, independent of the writer under test."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = (name_start + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_cpio_round_trip_and_types() -> None:
    buf = io.BytesIO()
    cpio.write(
        buf,
        [
            cpio.file("etc/x", b"hello", 0o600),
            cpio.directory("etc"),
            cpio.symlink("bin/sh", "busybox"),
            cpio.chardev("dev/console", 5, 1),
        ],
    )
    entries = read_newc(buf.getvalue())
    assert list(entries) == ["bin/sh", "dev/console", "etc", "etc/x"]  # sorted: parents before children
    assert entries["etc/x"] == (stat.S_IFREG | 0o600, b"hello")
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"][0])


def test_cpio_is_deterministic() -> None:
    def build() -> bytes:
        buf = io.BytesIO()
        cpio.write(buf, [cpio.file("b", b"2"), cpio.file("a", b"1")])
        return buf.getvalue()

    assert build() == build()


def test_cpio_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        cpio.write(io.BytesIO(), [cpio.file("a", b""), cpio.file("a", b"")])


def test_load_order_puts_dependencies_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    deps = {
        "ext4": "jbd2,mbcache,crc16",
        "jbd2": "",
        "mbcache": "",
        "crc16": "",
        "virtio_blk": "virtio,virtio_ring",
        "virtio": "",
        "virtio_ring": "",
    }
    paths = {}
    for name in deps:
        p = tmp_path / f"{name}.ko"
        p.write_bytes(name.encode())
        paths[name] = p
    monkeypatch.setattr(kmod, "modinfo", lambda ko: {"depends": deps[ko.decode()]})
    order = kmod.load_order(["virtio_blk", "ext4"], paths, builtin={"crc16"})
    assert order.index("virtio") < order.index("virtio_blk")
    assert order.index("jbd2") < order.index("ext4")
    assert "crc16" not in order  # built into the kernel
    assert len(order) == len(set(order))


def test_load_order_missing_module_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = tmp_path / "a.ko"
    p.write_bytes(b"a")
    monkeypatch.setattr(kmod, "modinfo", lambda ko: {"depends": "b"})
    with pytest.raises(ImageError, match=r"b not found .*needed by a"):
        kmod.load_order(["a"], {"a": p})


def test_parse_control_first_stanza() -> None:
    text = "Package: busybox-static\nVersion: 1:1.35.0-4\nDepends: libc6,\n foo\n\nPackage: other\nVersion: 2\n"
    fields = debs.parse_control(text)
    assert fields["Version"] == "1:1.35.0-4"
    assert fields["Depends"] == "libc6,\nfoo"


def test_build_key_depends_on_versions_and_scripts() -> None:
    p1 = [debs.Package("busybox-static", "1")]
    p2 = [debs.Package("busybox-static", "2")]
    assert builder.build_key(p1, {"init": b"a"}) != builder.build_key(p2, {"init": b"a"})
    assert builder.build_key(p1, {"init": b"a"}) != builder.build_key(p1, {"init": b"b"})
    assert builder.build_key(p1, {"init": b"a"}) == builder.build_key(p1, {"init": b"a"})


def test_deb_version_from_file_name() -> None:
    assert builder._deb_version(Path("busybox-static_1%3a1.35.0-4_amd64.deb")) == "1:1.35.0-4"


def test_package_resolution_is_kept_until_apts_state_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = ["lists-1"]
    asked: list[str] = []

    def closure(names: list[str], follow: object) -> list[debs.Package]:
        asked.append("closure")
        return [debs.Package("busybox-static", f"1:1.35-{len(asked)}")]

    monkeypatch.setattr(debs, "apt_state", lambda: state[0])
    monkeypatch.setattr(debs, "resolve_kernel", lambda meta: debs.Package("linux-image-6.1.0-1-amd64", "6.1.1-1"))
    monkeypatch.setattr(debs, "resolve_closure", closure)
    first = builder.resolve_packages(tmp_path)
    assert first[0].name == "linux-image-6.1.0-1-amd64" and len(asked) == 1
    assert builder.resolve_packages(tmp_path) == first and len(asked) == 1  # apt not asked again
    state[0] = "lists-2"  # `apt-get update` changed the lists
    again = builder.resolve_packages(tmp_path)
    assert len(asked) == 2 and again != first
    (tmp_path / "guests" / "default" / builder.RESOLVED).write_text("{damaged")
    assert builder.resolve_packages(tmp_path) and len(asked) == 3


def test_apt_state_follows_the_package_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil

    if shutil.which("apt-config") is None:
        pytest.skip("apt is not installed")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").write_text("Package: a\n")
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::State::lists "{lists}/";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    before = debs.apt_state()
    assert debs.apt_state() == before
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").write_text("Package: a\nVersion: 2\n")
    assert debs.apt_state() != before  # an `apt-get update` that changed a list


def test_the_docker_guest_is_the_debian_recipe_with_docker_and_waits_for_dockerd() -> None:
    import yaml

    from torpor.config.layering import load_template_text
    from torpor.config.schema import Config
    from torpor.guest import cidata, debian, images

    assert debian.DOCKER.packages[: len(debian.PACKAGES)] == debian.PACKAGES
    assert "docker.io" in debian.DOCKER.packages and "docker.io" not in debian.DEBIAN.packages
    assert debian.recipe_key(debian.DOCKER) != debian.recipe_key(debian.DEBIAN)
    docker = Config.model_validate(yaml.safe_load(load_template_text("template:docker")[0])).image_for_arch()
    debian_image = Config.model_validate(yaml.safe_load(load_template_text("template:debian")[0])).image_for_arch()
    assert "docker info" in images.READY_COMMAND.get(docker.location or "", "")
    assert images.READY_COMMAND.get(debian_image.location or "") is None
    user = cidata.GuestUser("u", 1000, images.USER_GROUPS["build:docker"])
    seed = cidata.files("d", "iid", user, ["ssh-ed25519 AAAA k"], provision=[], mounts=[])
    assert b"groups:\n  - docker" in seed["user-data"] or b"groups: [docker]" in seed["user-data"]
