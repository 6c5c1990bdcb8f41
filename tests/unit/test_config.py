from pathlib import Path

import pytest

from torpor.config import sources
from torpor.config.layering import load_effective, load_template_text, merge
from torpor.config.schema import format_size, parse_size
from torpor.errors import ConfigError
from torpor.store.instance import read_instance_yaml

BASE = "images: [{location: build:default}]\n"


def write_layers(home: Path, default: str | None = None, override: str | None = None) -> None:
    cfg = home / "_config"
    cfg.mkdir(parents=True, exist_ok=True)
    if default is not None:
        (cfg / "default.yaml").write_text(default)
    if override is not None:
        (cfg / "override.yaml").write_text(override)


def test_builtin_defaults_apply(tmp_path: Path) -> None:
    cfg = load_effective(tmp_path, BASE, "i.yaml").config
    assert cfg.memory == 1024**3
    assert cfg.disk == 10 * 1024**3
    assert cfg.vmType == "qemu"


def test_layer_precedence_default_instance_override(tmp_path: Path) -> None:
    write_layers(tmp_path, default="cpus: 1\nmemory: 2GiB\ndisk: 20GiB\n", override="memory: 3GiB\n")
    cfg = load_effective(tmp_path, BASE + "cpus: 3\nmemory: 512MiB\n", "i.yaml").config
    assert cfg.cpus == 3  # instance beats default.yaml
    assert cfg.memory == 3 * 1024**3  # override.yaml beats the instance
    assert cfg.disk == 20 * 1024**3  # default.yaml beats the builtin


def test_nested_mappings_merge_key_by_key(tmp_path: Path) -> None:
    write_layers(tmp_path, override="ssh: {loadDotSSHPubKeys: true}\n")
    cfg = load_effective(tmp_path, BASE + "ssh: {localPort: 2222}\n", "i.yaml").config
    assert cfg.ssh.localPort == 2222
    assert cfg.ssh.loadDotSSHPubKeys is True


def test_append_lists_combine_override_first(tmp_path: Path) -> None:
    write_layers(
        tmp_path,
        default="provision: [{script: from-default}]\n",
        override="provision: [{script: from-override}]\n",
    )
    cfg = load_effective(tmp_path, BASE + "provision: [{script: from-instance}]\n", "i.yaml").config
    assert [p.script for p in cfg.provision] == ["from-override", "from-instance", "from-default"]


def test_other_lists_are_replaced_by_the_higher_layer(tmp_path: Path) -> None:
    write_layers(tmp_path, override="images: [{location: /tmp/other.qcow2}]\n")
    cfg = load_effective(tmp_path, BASE, "i.yaml").config
    assert [i.location for i in cfg.images] == ["/tmp/other.qcow2"]


def test_null_in_higher_layer_keeps_lower_value() -> None:
    assert merge({"cpus": 2}, {"cpus": None}) == {"cpus": 2}


def test_validation_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    text = "cpus: 0\nmemory: lots\nnetwroks: []\nimages: [{arch: x86_64}]\nssh: {localPort: 70000}\n"
    with pytest.raises(ConfigError) as exc:
        load_effective(tmp_path, text, "bad.yaml")
    problems = exc.value.problems
    assert any(p.startswith("cpus:") for p in problems)
    assert any(p.startswith("memory:") and "not a size" in p for p in problems)
    assert any(p.startswith("netwroks:") and "did you mean 'networks'" in p for p in problems)
    assert any(p.startswith("images[0]:") for p in problems)
    assert any(p.startswith("ssh.localPort:") for p in problems)
    assert len(problems) == 5


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_effective(tmp_path, "cpus: 2\nmemory: [1\n", "broken.yaml")
    assert "broken.yaml:" in str(exc.value)
    assert "not valid YAML" in str(exc.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_effective(tmp_path, "- a\n- b\n", "list.yaml")


def test_error_in_override_is_reported_too(tmp_path: Path) -> None:
    write_layers(tmp_path, override="cpus: many\n")
    with pytest.raises(ConfigError) as exc:
        load_effective(tmp_path, BASE, "i.yaml")
    assert any(p.startswith("cpus:") for p in exc.value.problems)


def test_digest_changes_with_config(tmp_path: Path) -> None:
    a = load_effective(tmp_path, BASE + "cpus: 1\n", "i.yaml").digest()
    b = load_effective(tmp_path, BASE + "cpus: 2\n", "i.yaml").digest()
    assert a != b
    assert a == load_effective(tmp_path, BASE + "cpus: 1\n", "i.yaml").digest()


def test_sources_fingerprint_follows_every_layer_file(tmp_path: Path) -> None:
    """What a cold boot records and a restore compares, so as to validate the files again only if they changed."""
    inst = tmp_path / "i"
    inst.mkdir()
    (inst / "torpor.yaml").write_text(BASE)
    booted = load_effective(tmp_path, BASE, str(inst / "torpor.yaml")).sources
    assert sources.current_fingerprint(tmp_path, inst) == booted  # as the boot read them

    seen: set[str | None] = {booted}
    write_layers(tmp_path, default="")  # an empty default.yaml appears: the merged data is the same, the files not
    seen.add(sources.current_fingerprint(tmp_path, inst))
    write_layers(tmp_path, override="")
    seen.add(sources.current_fingerprint(tmp_path, inst))
    write_layers(tmp_path, override="cpus: 1\n")
    seen.add(sources.current_fingerprint(tmp_path, inst))
    (inst / "torpor.yaml").write_text(BASE + "# a comment\n")
    seen.add(sources.current_fingerprint(tmp_path, inst))
    assert len(seen) == 5 and None not in seen
    assert load_effective(tmp_path, BASE + "# a comment\n", str(inst / "torpor.yaml")).sources in seen

    current = sources.current_fingerprint(tmp_path, inst)
    assert sources.unchanged_since(current, tmp_path, inst) and not sources.unchanged_since(booted, tmp_path, inst)
    (inst / "torpor.yaml").unlink()
    assert sources.current_fingerprint(tmp_path, inst) is None
    # Unknown on both sides (a state saved before fingerprints, a file that cannot be read) is never "unchanged".
    assert not sources.unchanged_since(None, tmp_path, inst)


def test_a_file_that_cannot_be_read_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """Not a traceback: on a restore an exception other than ConfigError would kill the restored VM."""
    inst = tmp_path / "i"
    inst.mkdir()
    (inst / "torpor.yaml").write_bytes(BASE.encode() + b"# caf\xe9 (Latin-1)\n")
    with pytest.raises(ConfigError, match=r"torpor\.yaml is not UTF-8 text") as exc:
        read_instance_yaml(inst)
    assert exc.value.hint == "save it as UTF-8"
    assert sources.current_fingerprint(tmp_path, inst) is None  # unknown: never "unchanged since the boot"
    (inst / "torpor.yaml").write_text(BASE)
    (tmp_path / "_config" / "override.yaml").mkdir(parents=True)  # in the way of the file: read() fails
    with pytest.raises(ConfigError, match=r"cannot read .*override\.yaml"):
        load_effective(tmp_path, BASE, "i.yaml")


@pytest.mark.parametrize(
    ("text", "value"),
    [("4GiB", 4 * 1024**3), ("512MiB", 512 * 1024**2), ("1G", 10**9), (2048, 2048), ("1.5GiB", 3 * 1024**3 // 2)],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


def test_format_size() -> None:
    assert format_size(4 * 1024**3) == "4GiB"
    assert format_size(512 * 1024**2) == "512MiB"


def test_default_template_is_valid(tmp_path: Path) -> None:
    text, name = load_template_text("template:default")
    assert name == "default"
    cfg = load_effective(tmp_path, text, "template:default").config
    assert cfg.images[0].location == "build:default"


def test_unknown_template_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        load_template_text("template:nope")
    assert exc.value.hint is not None and "default" in exc.value.hint


def test_missing_images_is_a_validation_error_naming_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_effective(tmp_path, "cpus: 1\n", "i.yaml")
    assert any(p.startswith("images:") and "build:default" in p for p in exc.value.problems)


def test_images_for_another_arch_only_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_effective(tmp_path, "images: [{location: /x.qcow2, arch: aarch64}]\n", "i.yaml")
    assert any("arch x86_64" in p for p in exc.value.problems)


def test_mounts_expand_home_and_default_their_mount_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    text = BASE + "mounts:\n  - location: '~'\n  - location: $HOME/src/app\n    mountPoint: /work\n    writable: true\n"
    cfg = load_effective(tmp_path, text, "i.yaml").config
    assert [(m.location, m.mountPoint, m.writable) for m in cfg.mounts] == [
        ("/home/me", "/home/me", False),
        ("/home/me/src/app", "/work", True),
    ]
    assert cfg.mountType == "reverse-sshfs" and cfg.mounts[0].sshfs.cache is True


def test_mounts_of_a_higher_layer_merge_into_the_same_mount_point(tmp_path: Path) -> None:
    write_layers(tmp_path, default="mounts: [{location: /data}, {location: /tmp/torpor, writable: true}]\n")
    cfg = load_effective(tmp_path, BASE + "mounts: [{location: /data, writable: true}, {location: /src}]\n", "i").config
    assert [(m.location, m.writable) for m in cfg.mounts] == [("/data", True), ("/tmp/torpor", True), ("/src", False)]


@pytest.mark.parametrize(
    ("mount", "problem"),
    [
        ("{location: relative/dir}", "must be an absolute path"),
        ("{location: /a, mountPoint: /}", "other than /"),
        ('{location: "/a\\tb"}', "tab or a line break"),
        ("{location: /a, writeable: true}", "unknown field"),
    ],
)
def test_bad_mounts_are_refused_with_the_field_named(tmp_path: Path, mount: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, BASE + f"mounts: [{mount}]\n", "i.yaml")
    assert any(p.startswith("mounts[0]") and problem in p for p in e.value.problems), e.value.problems


def test_two_mounts_at_one_mount_point_are_refused(tmp_path: Path) -> None:
    text = BASE + "mounts: [{location: /a, mountPoint: /m}, {location: /b, mountPoint: /m}]\n"
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, text, "i.yaml")
    assert any("two mounts at /m" in p for p in e.value.problems), e.value.problems


def test_every_lima_mount_type_is_accepted(tmp_path: Path) -> None:
    for kind in ("reverse-sshfs", "9p", "virtiofs"):
        assert load_effective(tmp_path, BASE + f"mountType: {kind}\n", "i.yaml").config.mountType == kind
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, BASE + "mountType: wsl2\n", "i.yaml")
    assert any(p.startswith("mountType:") for p in e.value.problems)


def test_lima_9p_options_are_read_under_their_lima_name(tmp_path: Path) -> None:
    text = BASE + "mountType: 9p\nmounts: [{location: /a, 9p: {msize: 256KiB, cache: loose}}]\n"
    cfg = load_effective(tmp_path, text, "i.yaml").config
    assert (cfg.mountType, cfg.mounts[0].nineP.msize, cfg.mounts[0].nineP.cache) == ("9p", 256 * 1024, "loose")
