"""torpor's NoCloud seed read back by cloud-init itself (the Debian package), as a cloud image would read it."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from torpor.config.schema import Provision
from torpor.guest import cidata

CLOUD_INIT_PYTHON = "/usr/bin/python3"  # cloud-init's own interpreter on Debian/Ubuntu


def extract(iso_bytes: bytes, dest: Path) -> str:
    """Unpack the ISO through its Rock Ridge names (what Linux shows); return its volume label."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    label = str(iso.pvd.volume_identifier.decode().strip())
    for dirpath, _dirs, files in iso.walk(rr_path="/"):
        for f in files:
            out = dest / dirpath.lstrip("/") / f
            out.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"{dirpath.rstrip('/')}/{f}")
            out.write_bytes(buf.getvalue())
    iso.close()
    return label


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed (.ci/run installs it)")
def test_cloud_init_reads_the_seed(tmp_path: Path) -> None:
    user = cidata.GuestUser("dev", 1000)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbWb8fW5aXpk7Hk2n1kqz1ePj4mW2ZxYyJ1rvc0M9mK torpor"
    provision = [Provision(mode="system", script="echo sys"), Provision(mode="user", script="echo user")]
    iso = cidata.build_iso(cidata.files("web", "torpor-1234", user, [key], provision=provision, mounts=[]))
    seed = tmp_path / "seed"
    assert extract(iso, seed) == "cidata"  # NoCloud finds its seed by this label

    schema = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(seed / "user-data")], capture_output=True, text=True, check=False
    )
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema.stdout + schema.stderr

    code = (
        "import json, sys\n"
        "from cloudinit import util\n"
        "md, ud, vd, *_ = util.read_seeded(base='file://' + sys.argv[1] + '/')\n"
        "cfg = util.load_yaml(ud)\n"
        "print(json.dumps({'md': md, 'users': cfg['users'], 'runcmd': cfg.get('runcmd'), 'bootcmd': cfg['bootcmd']}))\n"
    )
    out = subprocess.run([CLOUD_INIT_PYTHON, "-c", code, str(seed)], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["md"] == {"instance-id": "torpor-1234", "local-hostname": "torpor-web"}
    (u,) = seen["users"]
    assert u["name"] == "dev" and u["ssh_authorized_keys"] == [key] and u["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    # system and user entries are run by torpor's provision script from a per-boot script (every boot, as Lima)
    assert seen["runcmd"] is None
    assert seen["bootcmd"][0][-2:] == [cidata.CLOUD_SCRIPT, cidata.PER_BOOT_SETUP]
    assert (seed / "torpor/provision/4-00-system").read_text() == "echo sys"
    assert (seed / "torpor/provision/5-01-user").read_text() == "echo user"
    assert (seed / "torpor/lib/provision").read_bytes() == (
        Path(cidata.__file__).parent / "rootfs/provision"
    ).read_bytes()


def test_the_per_boot_script_fails_without_the_seed(tmp_path: Path) -> None:
    """The bootcmd writes the per-boot script even when the seed cannot be mounted, and that script then fails."""
    target = tmp_path / "per-boot" / "torpor-setup"
    argv = cidata._setup_bootcmd()
    # (run as an unprivileged-looking command: mount fails or is absent here, the script is written regardless)
    script = argv[2].replace("/run/cidata", str(tmp_path / "cidata"))
    subprocess.run(["sh", "-c", script, str(target), argv[4]], check=False, capture_output=True)
    out = subprocess.run([str(target)], capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "cidata seed is not mounted" in out.stderr
