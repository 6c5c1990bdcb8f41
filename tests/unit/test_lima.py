"""Lima's own templates read by torpor: every field has a fate (implemented, ignored with a warning, refused with
what to use instead), nulls are defaults, base templates merge as in Lima."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torpor.cli import validate
from torpor.config import lima
from torpor.config.layering import embed, load_effective, parse_yaml
from torpor.config.schema import Config
from torpor.errors import ConfigError

LIMA = Path(__file__).parent.parent / "data" / "lima"
TEMPLATES = sorted(p.relative_to(LIMA) for p in LIMA.rglob("*.yaml") if not p.parent.name.startswith("_"))

# The refusals README documents (a guest torpor does not run, a provisioning mode it does not have).
REFUSALS = [
    r"base template:_images/[a-z0-9.-]+: torpor has no guest for .*",
    r"os: '(Windows|FreeBSD|Darwin)' is not supported: torpor runs Linux guests .*",
    r"osOpts: is not supported: .*",
    r"vmType: 'wsl2' is not supported: .*",
    r"mountType: 'wsl2' is not supported: .*",
    r"base fedora-rawhide:_images/fedora-rawhide: cannot read .*",  # (that template's base is not a locator)
]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))


def test_the_copy_of_lima_templates_is_complete() -> None:
    assert len(TEMPLATES) == 81 and Path("default.yaml") in TEMPLATES and Path("docker.yaml") in TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES, ids=str)
def test_lima_template_validates_except_documented_refusals(name: Path) -> None:
    problems, _ = validate.check(str(LIMA / name))
    unexplained = [p for p in problems if not any(re.fullmatch(r, p, re.S) for r in REFUSALS)]
    assert unexplained == []


@pytest.mark.parametrize("name", TEMPLATES, ids=str)
def test_lima_template_on_torpors_debian_validates_every_other_field(name: Path, tmp_path: Path) -> None:
    """The same templates with their image base replaced by torpor's Debian 12: all their fields reach the schema."""
    text = re.sub(r"template:_images/[a-z0-9.-]+", "template:_images/debian-12", (LIMA / name).read_text())
    (tmp_path / name.name).write_text(text)
    problems, _ = validate.check(str(tmp_path / name.name))
    allowed = [r for r in REFUSALS if not r.startswith("base template")]
    assert [p for p in problems if not any(re.fullmatch(r, p, re.S) for r in allowed)] == []


def test_debian_12_template_is_torpors_debian_with_default_mounts(tmp_path: Path) -> None:
    text = embed((LIMA / "debian-12.yaml").read_text(), "debian-12.yaml", LIMA)
    cfg = load_effective(tmp_path, text, "debian-12.yaml", instance=("d", tmp_path / "d")).config
    assert cfg.image_for_arch().location == "build:debian"
    assert cfg.mounts[0].location == str(Path.home())
    assert cfg.minimumLimaVersion == "2.0.0"


def test_lima_reference_default_yaml_nulls_are_defaults(tmp_path: Path) -> None:
    """Lima's default.yaml is every field set to null (the default), with its base swapped for torpor's Debian."""
    text = (LIMA / "default.yaml").read_text().replace("template:_images/ubuntu", "template:_images/debian-12")
    cfg = load_effective(tmp_path, embed(text, "default.yaml", LIMA), "default.yaml", instance=("x", tmp_path)).config
    assert cfg.cpus >= 1 and cfg.memory == 1024**3 and cfg.mountType == "reverse-sshfs"
    assert cfg.user.name is None and cfg.propagateProxyEnv is True


def test_docker_yaml_warnings_and_template_variables(tmp_path: Path) -> None:
    text = re.sub(r"template:_images/\S+", "template:_images/debian-12", (LIMA / "docker.yaml").read_text())
    eff = load_effective(tmp_path, embed(text, "docker.yaml", LIMA), "docker.yaml", instance=("dk", tmp_path / "dk"))
    sock = next(p for p in eff.config.portForwards if p.guestSocket)
    assert sock.hostSocket == f"{tmp_path}/dk/sock/docker.sock"
    assert re.fullmatch(r"/run/user/\d+/docker.sock", sock.guestSocket or "")
    assert f"host=unix://{tmp_path}/dk/sock/docker.sock" in eff.config.message
    assert "Rosetta" not in eff.config.message  # {{- if .Instance.Config.VMOpts.vz.rosetta.enabled}} is false
    assert eff.config.hostResolver.hosts == {"host.docker.internal": "host.lima.internal"}


def test_ignored_fields_warn_only_when_they_would_do_something(tmp_path: Path) -> None:
    base = "images: [{location: build:default}]\n"
    quiet = "video: {display: none}\naudio: {device: null}\nrosetta: {enabled: false}\nnetworks: []\nvmType: qemu\n"
    assert load_effective(tmp_path, base + quiet, "i.yaml").warnings == []
    loud = "video: {display: vnc}\nnetworks: [{lima: shared}]\nvmType: vz\nmountInotify: true\n"
    warnings = load_effective(tmp_path, base + loud, "i.yaml").warnings
    assert len(warnings) == 4
    assert any("vmType vz is macOS-only: torpor uses qemu" in w for w in warnings)
    assert any(w.startswith("`networks` is ignored: ") for w in warnings)


def test_refused_fields_name_what_to_use_instead(tmp_path: Path) -> None:
    text = (
        "images: [{location: build:default}]\narch: riscv64\nportForwards: [{guestPort: 53, proto: sctp}]\n"
        "provision: [{mode: ansible, playbook: p.yml}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, text, "i.yaml")
    assert [p.split(":")[0] for p in e.value.problems] == ["arch", "portForwards[0].proto", "provision[0].mode"]
    assert "ansible-playbook" in e.value.problems[2]


def test_typo_gets_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, "images: [{location: build:default}]\nportForward: []\nuser: {nmae: x}\n", "i.yaml")
    assert "portForward: unknown field; did you mean 'portForwards'?" in e.value.problems
    assert "user.nmae: unknown field; did you mean 'name'?" in e.value.problems


def test_base_merge_follows_lima(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "cpus: 1\nmemory: 2GiB\nprovision: [{script: from-base}]\nmounts: [{location: /src, writable: true}]\n"
        "dns: [1.1.1.1]\nminimumLimaVersion: 1.1.0\nbase: c.yaml\n"
    )
    (tmp_path / "c.yaml").write_text("images: [{location: build:default}]\nenv: {A: from-c, B: from-c}\n")
    text = (
        "base: b.yaml\ncpus: 3\nprovision: [{script: mine}]\nmounts: [{location: /src, mountPoint: /w}]\n"
        "dns: [9.9.9.9]\nenv: {A: mine}\nminimumLimaVersion: 1.0.0\n"
    )
    cfg = load_effective(tmp_path, embed(text, "t.yaml", tmp_path), "t.yaml").config
    assert (cfg.cpus, cfg.memory) == (3, 2 * 1024**3)
    assert [p.script for p in cfg.provision] == ["from-base", "mine"]
    assert [(m.mountPoint, m.writable) for m in cfg.mounts] == [("/w", True)]
    assert cfg.dns == ["9.9.9.9"] and cfg.env == {"A": "mine", "B": "from-c"}
    assert cfg.minimumLimaVersion == "1.1.0"


def test_base_loop_and_missing_base_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        embed("base: a.yaml\n", "t.yaml", tmp_path)
    with pytest.raises(ConfigError, match="torpor reads files only"):
        embed("base: https://example.org/x.yaml\n", "t.yaml", tmp_path)
    with pytest.raises(ConfigError, match="torpor has no guest for ubuntu"):
        embed("base: template:_images/ubuntu\n", "t.yaml", tmp_path)


def test_provision_file_is_embedded_relative_to_the_template(tmp_path: Path) -> None:
    (tmp_path / "s.sh").write_text("echo from-file\n")
    text = embed(
        "provision: [{mode: user, file: s.sh}, {mode: data, path: /etc/x, file: {url: s.sh}}]\n", "t", tmp_path
    )
    data = parse_yaml(text, "t")
    assert data["provision"] == [
        {"mode": "user", "script": "echo from-file\n"},
        {"mode": "data", "path": "/etc/x", "content": "echo from-file\n"},
    ]


def test_params_expand_and_undefined_params_are_refused(tmp_path: Path) -> None:
    base = "images: [{location: build:default}]\nparam: {Ver: 3, Flag: true}\n"
    cfg = load_effective(
        tmp_path, base + "provision: [{script: 'v={{.Param.Ver}} {{if .Param.Flag}}on{{end}}'}]\n", "i"
    ).config
    assert cfg.provision[0].script == "v=3 on"
    with pytest.raises(ConfigError) as e:
        load_effective(tmp_path, base + "probes: [{script: '{{.Param.Nope}}'}]\n", "i")
    assert "probes[0].script: uses {{.Param.Nope}} but param has no Nope" in e.value.problems


def test_mount_types_unsupported_and_plain(tmp_path: Path) -> None:
    base = "images: [{location: build:default}]\nmounts: [{location: /src}]\n"
    assert load_effective(tmp_path, base + "mountTypesUnsupported: [reverse-sshfs]\n", "i").config.mountType == "9p"
    with pytest.raises(ConfigError, match="mountTypesUnsupported"):
        load_effective(tmp_path, base + "mountType: 9p\nmountTypesUnsupported: [9p]\n", "i")
    plain = load_effective(
        tmp_path, base + "plain: true\nportForwards: [{guestPort: 80}, {guestPort: 81, static: true}]\n", "i"
    ).config
    assert plain.mounts == [] and [p.guestPort for p in plain.portForwards] == [81]


def test_cpu_type_moves_to_vm_opts(tmp_path: Path) -> None:
    text = "images: [{location: build:default}]\ncpuType: {x86_64: qemu64}\n"
    assert load_effective(tmp_path, text, "i").config.vmOpts.qemu.cpuType == {"x86_64": "qemu64"}


def test_strip_nulls() -> None:
    assert lima.strip_nulls({"a": None, "b": {"c": None, "d": [None, 1]}}) == {"b": {"d": [1]}}


def test_additional_disks_and_udp_forwards(tmp_path: Path) -> None:
    text = (
        "images: [{location: build:default}]\nadditionalDisks: [data, {name: scratch, format: false}]\n"
        "portForwards: [{guestPort: 5353, hostPort: 15353, proto: udp}]\n"
    )
    cfg = load_effective(tmp_path, text, "i").config
    assert [(d.name, d.format, d.fsType) for d in cfg.additionalDisks] == [
        ("data", True, "ext4"),
        ("scratch", False, "ext4"),
    ]
    assert cfg.portForwards[0].proto == "udp"
    with pytest.raises(ConfigError, match="a UDP forward names its guestPort"):
        load_effective(tmp_path, "images: [{location: build:default}]\nportForwards: [{proto: udp}]\n", "i")


def test_yq_provisioning_edits_json_in_the_guest_as_lima(tmp_path: Path) -> None:
    """Lima's docker.yaml yq entry, its assignments read on the host and applied by the guest's yq.py."""
    import json
    import subprocess
    import sys

    from torpor.guest import cidata

    text = re.sub(r"template:_images/\S+", "template:_images/debian-12", (LIMA / "docker.yaml").read_text())
    cfg = load_effective(tmp_path, embed(text, "docker.yaml", LIMA), "docker.yaml", instance=("dk", tmp_path)).config
    (entry,) = [p for p in cfg.provision if p.mode == "yq"]
    assert entry.path is not None and entry.path.endswith("/.config/docker/daemon.json")
    files = cidata.provision_files([entry])
    spec = tmp_path / "spec"
    spec.write_bytes(files["torpor/provision/3-00-yq"])
    target = tmp_path / "daemon.json"
    target.write_text('{"features": {"other": 1}}')
    yq = Path(cidata.__file__).parent / "rootfs" / "yq.py"
    subprocess.run([sys.executable, yq, spec, target], check=True)
    assert json.loads(target.read_text()) == {"features": {"other": 1, "cdi": True, "containerd-snapshotter": True}}


def test_yq_provisioning_edits_ini(tmp_path: Path) -> None:
    import subprocess
    import sys

    from torpor.config.schema import Provision
    from torpor.guest import cidata

    entry = Provision(mode="yq", path="/etc/x/override.conf", format="ini", expression='.Socket.SocketUser="dev"')
    spec = tmp_path / "spec"
    spec.write_bytes(cidata.provision_files([entry])["torpor/provision/3-00-yq"])
    target = tmp_path / "override.conf"
    target.write_text("[Socket]\nListenStream=/run/docker.sock\n")
    subprocess.run([sys.executable, Path(cidata.__file__).parent / "rootfs" / "yq.py", spec, target], check=True)
    assert target.read_text() == "[Socket]\nListenStream = /run/docker.sock\nSocketUser = dev\n\n"
    with pytest.raises(ConfigError, match=r"sets \.Section\.key"):
        load_effective(
            tmp_path,
            "images: [{location: build:default}]\nprovision: [{mode: yq, path: /a.ini, expression: '.a = 1'}]\n",
            "i",
        )


def test_lima_template_name_debian_12_is_torpors_debian() -> None:
    from torpor.config.layering import load_template_text

    assert load_template_text("template:debian-12")[0] == load_template_text("template:debian")[0]


def test_arch_default_is_the_host_s_and_images_without_arch_are_the_instance_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def load(text: str, home: Path = Path("/nonexistent")) -> Config:
        return load_effective(home, text, "lima.yaml").config

    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    cfg = load("arch: default\nimages: [{location: /img/arm64.qcow2}, {location: /img/amd64.qcow2, arch: x86_64}]\n")
    assert cfg.arch == "aarch64" and [i.arch for i in cfg.images] == ["aarch64", "x86_64"]
    assert cfg.image_for_arch().location == "/img/arm64.qcow2"
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert load("images: [{location: /img/amd64.qcow2}]\n").arch == "x86_64"
