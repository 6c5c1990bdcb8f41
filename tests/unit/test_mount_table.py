"""The guest's side of mounts as the seed describes it: the table its mount script reads, and sshfs's options."""

from __future__ import annotations

import pytest

from torpor.config.schema import Mount
from torpor.guest import cidata


def test_the_table_has_one_line_per_mount_with_its_index_mode_options_and_mount_point() -> None:
    mounts = [
        Mount(location="/home/me"),
        Mount.model_validate({"location": "/src/my app", "writable": True, "sshfs": {"followSymlinks": True}}),
        Mount.model_validate({"location": "/data", "mountPoint": "/mnt/data", "sshfs": {"cache": False}}),
    ]
    io = "max_read=65536,max_write=65536"
    assert cidata.mount_table(mounts).splitlines() == [
        f"0\treverse-sshfs\tro\t{io},dcache_timeout=1\t/home/me",
        f"1\treverse-sshfs\trw\t{io},dcache_timeout=1,follow_symlinks\t/src/my app",  # spaces: fine, last
        f"2\treverse-sshfs\tro\t{io},cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0\t/mnt/data",
    ]
    assert cidata.mount_table(mounts[:2], "9p").splitlines() == [
        "0\t9p\tro\tversion=9p2000.L,msize=131072,cache=fscache\t/home/me",
        "1\t9p\trw\tversion=9p2000.L,msize=131072,cache=mmap\t/src/my app",
    ]
    # Never an empty field: the guest's `read` would take two tabs for one and shift the mount point.
    assert cidata.mount_table(mounts[:2], "virtiofs").splitlines() == [
        "0\tvirtiofs\tro\tdefaults\t/home/me",
        "1\tvirtiofs\trw\tdefaults\t/src/my app",
    ]


def test_the_seed_maps_the_host_user_to_the_guest_user_for_sshfs() -> None:
    import os

    user = cidata.GuestUser("dev", 1000)
    files = cidata.files("n", "iid", user, ["ssh-ed25519 AAAA k"], provision=[], mounts=[Mount(location="/x")])
    assert files["torpor/uidmap"] == f"dev:{os.getuid()}\n".encode()
    assert files["torpor/gidmap"] == f"dev:{os.getgid()}\n".encode()
    assert files["torpor/mounts"] == b"0\treverse-sshfs\tro\tmax_read=65536,max_write=65536,dcache_timeout=1\t/x\n"
    assert user.home == "/home/dev.linux"
    assert b"/run/torpor/mount.sh" in files["user-data"]  # cloud-init's boot command for the same table


def test_the_shell_maps_the_host_directory_through_the_deepest_mount_holding_it() -> None:
    from typing import Any

    from torpor.instance.access import guest_dir_for

    mounts: list[dict[str, Any]] = [
        {"location": "/home/me", "mountPoint": "/home/me"},
        {"location": "/home/me/src", "mountPoint": "/work"},
    ]
    assert guest_dir_for(mounts, "/home/me/docs") == "/home/me/docs"
    assert guest_dir_for(mounts, "/home/me/src/app") == "/work/app"
    assert guest_dir_for(mounts, "/home/me/src") == "/work"
    assert guest_dir_for(mounts, "/home/meadow") is None  # a prefix of the name is not a parent directory
    assert guest_dir_for(mounts, "/etc") is None


def test_setup_files_for_lima_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    from torpor.config.schema import Provision
    from torpor.guest.cidata import Setup, provision_files, proxy_env, resolve_hosts, setup_files

    assert proxy_env({"http_proxy": "http://localhost:3128", "NO_PROXY": "localhost", "HOME": "/h"}) == {
        "http_proxy": "http://10.0.2.2:3128",
        "NO_PROXY": "localhost",
    }
    hosts = resolve_hosts({"a.internal": "10.0.0.5", "b.internal": "a.internal", "h": "host.lima.internal"})
    assert hosts["b.internal"] == "10.0.0.5" and hosts["h"] == "10.0.2.2" and hosts["host.lima.internal"] == "10.0.2.2"
    files = setup_files(Setup(env={"A": 'x "y" $z'}, dns=("1.1.1.1",), timezone="UTC", param={"P": "it's"}))
    assert files["torpor/environment"] == b'A="x \\"y\\" $z"\n'
    assert files["torpor/environment.sh"] == b"export A='x \"y\" $z'\n"
    assert files["torpor/resolv.conf"] == b"nameserver 1.1.1.1\n"
    assert files["torpor/timezone"] == b"UTC\n" and files["torpor/localtime"].startswith(b"TZif")
    assert files["torpor/param.env"] == b"export PARAM_P='it'\"'\"'s'\n"
    order = provision_files(
        [
            Provision(mode="user", script="u"),
            Provision(mode="data", path="/etc/x", content="c", overwrite=False, permissions="600"),
            Provision(mode="boot", script="b"),
            Provision(mode="dependency", script="d"),
        ]
    )
    assert sorted(order) == [
        "torpor/provision/0-02-boot",
        "torpor/provision/1-03-dependency",
        "torpor/provision/2-01-data",
        "torpor/provision/2-01-data.meta",
        "torpor/provision/5-00-user",
    ]
    assert order["torpor/provision/2-01-data.meta"] == b"/etc/x\nroot:root\n600\nfalse\n"


def test_unresolvable_host_is_a_config_error() -> None:
    from torpor.errors import ConfigError
    from torpor.guest.cidata import resolve_hosts

    with pytest.raises(ConfigError, match="neither an IP address nor a name"):
        resolve_hosts({"x": "nowhere.example"})
