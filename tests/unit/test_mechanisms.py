from pathlib import Path

from torpor.driver.qemu import mechanisms

QEMU_72 = {"x-ignore-shared", "multifd", "xbzrle", "events"}
QEMU_10 = QEMU_72 | {"mapped-ram"}


def test_best_mechanism_from_capabilities() -> None:
    state = Path("/x/saved/state.bin.tmp")
    assert mechanisms.choose(QEMU_10, False, state) == mechanisms.MAPPED_RAM
    assert mechanisms.choose(QEMU_72, False, state) == mechanisms.MULTIFD
    assert mechanisms.choose(QEMU_10, True, state) == mechanisms.SHARED_RAM
    # A comma would end the file: URI's path: such a path goes through the relay instead.
    assert mechanisms.choose(QEMU_10, False, Path("/a,b/state.bin")) == mechanisms.MULTIFD
    assert mechanisms.choose({"events"}, False, state) == mechanisms.STREAM  # a QEMU without multifd
    assert mechanisms.by_save_mode(QEMU_10) == {"copy": "mapped-ram", "instant": "shared-ram"}
    assert mechanisms.by_save_mode(QEMU_72) == {"copy": "multifd", "instant": "shared-ram"}


def test_a_wanted_mechanism_only_where_it_can_be_used() -> None:
    state = Path("/x/saved/state.bin.tmp")
    assert mechanisms.choose(QEMU_10, False, state, "stream") == mechanisms.STREAM
    assert mechanisms.choose(QEMU_10, False, state, "multifd") == mechanisms.MULTIFD
    assert mechanisms.choose(QEMU_72, False, state, "mapped-ram") == mechanisms.MULTIFD  # 7.2 has no mapped-ram
    assert mechanisms.choose(QEMU_10, True, state, "stream") == mechanisms.SHARED_RAM  # instant mode keeps its own
    assert mechanisms.choose(QEMU_10, False, state, "shared-ram") == mechanisms.MAPPED_RAM  # needs the RAM file
    assert mechanisms.choose(QEMU_10, False, state, "nonsense") == mechanisms.MAPPED_RAM
    assert mechanisms.by_save_mode(QEMU_72, "stream") == {"copy": "stream", "instant": "shared-ram"}


def test_setup_sets_every_known_capability_on_or_off() -> None:
    commands = dict(mechanisms.setup_commands(mechanisms.MAPPED_RAM, QEMU_10))
    caps = {c["capability"]: c["state"] for c in commands["migrate-set-capabilities"]["capabilities"]}
    assert caps == {"mapped-ram": True, "multifd": True, "x-ignore-shared": False, "events": True}
    assert commands["migrate-set-parameters"]["multifd-channels"] >= 2
    assert commands["migrate-set-parameters"]["zero-page-detection"] == "legacy"
    # After a mapped-ram restore, a stream save turns them off again; 7.2 is not asked about mapped-ram at all.
    commands = dict(mechanisms.setup_commands(mechanisms.STREAM, QEMU_72))
    caps = {c["capability"]: c["state"] for c in commands["migrate-set-capabilities"]["capabilities"]}
    assert caps == {"multifd": False, "x-ignore-shared": False, "events": True}
    assert "migrate-set-parameters" not in commands
    # The relayed multifd channels: multifd on, mapped-ram not asked (7.2 does not know it).
    commands = dict(mechanisms.setup_commands(mechanisms.MULTIFD, QEMU_72))
    caps = {c["capability"]: c["state"] for c in commands["migrate-set-capabilities"]["capabilities"]}
    assert caps == {"multifd": True, "x-ignore-shared": False, "events": True}
    assert commands["migrate-set-parameters"] == {"multifd-channels": mechanisms.multifd_channels()}
    sock = Path("/i/mig.sock")
    assert mechanisms.incoming_uri(mechanisms.MAPPED_RAM, Path("/s"), sock) == "file:/s"
    assert mechanisms.incoming_uri(mechanisms.STREAM, Path("/s"), sock) == f"fd:{mechanisms.FD_NAME}"
    assert mechanisms.incoming_uri(mechanisms.MULTIFD, Path("/s"), sock) == "unix:/i/mig.sock"
