"""What a cold boot's seed lets in: torpor's key, and with ssh.loadDotSSHPubKeys the user's own keys too."""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.config.layering import load_effective
from torpor.guest import cidata
from torpor.guest import ssh as guest_ssh
from torpor.hostagent.guestlink import GuestLink

OWN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbWb8fW5aXpk7Hk2n1kqz1ePj4mW2ZxYyJ1rvc0M9mK me@laptop"


@pytest.mark.parametrize("load", [True, False])
def test_the_seed_holds_the_users_own_keys_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: bool
) -> None:
    home, inst = tmp_path / "home", tmp_path / "home" / "vm"
    inst.mkdir(parents=True)
    dot_ssh = tmp_path / "user" / ".ssh"
    dot_ssh.mkdir(parents=True)
    (dot_ssh / "id_ed25519.pub").write_text(OWN_KEY + "\n")
    (dot_ssh / "notes.pub").write_text("not a key\n")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "user")
    written: dict[str, list[str]] = {}
    monkeypatch.setattr(cidata, "write", lambda d, name, user, keys, **_: written.setdefault("keys", keys))
    yaml = f"images: [{{location: build:default}}]\nssh: {{loadDotSSHPubKeys: {str(load).lower()}}}\n"
    config = load_effective(home, yaml, "vm.yaml").config
    port, _ = GuestLink(inst, "vm", home).prepare_boot(config)
    torpor_key = (home / "_config" / "user.pub").read_text().strip()
    assert written["keys"] == ([torpor_key, OWN_KEY] if load else [torpor_key])
    assert f"Port {port}" in (inst / "ssh.config").read_text()


def test_user_public_keys_reads_every_key_line(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_text(OWN_KEY + "\n")
    (tmp_path / "b.pub").write_text("ecdsa-sha2-nistp256 AAAA b\n\nsk-ssh-ed25519@openssh.com AAAA c\n")
    (tmp_path / "c.pub").write_bytes(b"\xff\xfe not text")
    assert guest_ssh.user_public_keys(tmp_path) == [
        OWN_KEY,
        "ecdsa-sha2-nistp256 AAAA b",
        "sk-ssh-ed25519@openssh.com AAAA c",
    ]
