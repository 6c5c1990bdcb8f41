"""Unix socket forwards that cannot be set up: refused by `start` before anything starts, the user's files kept.
(The forward itself, across a save and a restore, is in test_docker.py: it needs the guest's OpenSSH.)"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Torpor, write_template

pytestmark = pytest.mark.integration


def test_a_host_socket_too_long_or_in_place_of_a_file_is_refused_before_anything_starts(torpor: Torpor) -> None:
    taken = torpor.home / "notes.txt"
    taken.write_text("the user's\n")
    body = (
        "portForwards:\n"
        f"  - {{guestSocket: /run/a.sock, hostSocket: {'x' * 110}.sock}}\n"
        f"  - {{guestSocket: /run/b.sock, hostSocket: {taken}}}\n"
    )
    torpor.run("create", "--name", "s", str(write_template(torpor, "s", body)))
    refused = torpor.run("start", "s", check=False)
    assert refused.returncode != 0, refused.stderr
    assert "more than a unix socket's path can hold (107)" in refused.stderr, refused.stderr
    assert f"hostSocket {taken} exists and is not a socket" in refused.stderr, refused.stderr
    assert taken.read_text() == "the user's\n"
    assert not (torpor.dir("s") / "qemu.pid").exists()
    assert not (torpor.dir("s") / "disk.qcow2").exists()
