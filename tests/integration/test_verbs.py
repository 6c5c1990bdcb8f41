"""Lima's instance verbs end to end on the real default guest: protect, rename (a saved instance still restores),
edit (refused while running, validated, a bad edit kept aside), factory-reset (the next start is a first boot),
start FILE with edit flags."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import COUNTER, Torpor, write_template

pytestmark = pytest.mark.integration


def test_protect_rename_edit_and_factory_reset(torpor: Torpor, tmp_path: Path) -> None:
    torpor.from_saved("v1", prepare=COUNTER)
    torpor.run("protect", "v1")
    refused = torpor.run("delete", "v1", check=False)
    assert refused.returncode != 0 and "protected" in refused.stderr
    assert torpor.status("v1")["protected"] is True

    # a saved instance renamed: its state restores under the new name, the counter running on
    torpor.run("rename", "v1", "v2")
    assert not torpor.dir("v1").exists()
    out = torpor.run("start", "v2")
    assert "restored" in out.stderr, out.stderr
    n = int(torpor.sh("v2", "cat /dev/shm/counter"))
    torpor.sh("v2", f"until [ $(cat /dev/shm/counter) -gt {n + 2} ]; do sleep 0.1; done")

    # edit: refused while running; an invalid edit changes nothing and is kept; a valid one is saved
    running = torpor.run("edit", "v2", "--cpus", "1", check=False)
    assert running.returncode != 0 and "stop" in running.stderr
    torpor.run("stop", "v2")
    yaml_file = torpor.dir("v2") / "torpor.yaml"
    before = yaml_file.read_text()
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[-1], 'a').write(sys.argv[1] + '\\n')\n")  # EDITOR TEXT FILE
    env = {"EDITOR": f"{sys.executable} {editor} 'cpus: 0'"}
    bad = torpor.run("edit", "v2", check=False, env=env)
    assert bad.returncode != 0 and "cpus" in bad.stderr
    assert yaml_file.read_text() == before
    assert (torpor.dir("v2") / "torpor.yaml.rejected").read_text().endswith("cpus: 0\n")
    torpor.run("edit", "v2", env={"EDITOR": f"{sys.executable} {editor} 'env: {{EDITED: done}}'"})
    assert "EDITED" in yaml_file.read_text()

    # factory-reset: refused while protected; then only the YAML is left, and the next start is a first boot
    assert "protected" in torpor.run("factory-reset", "v2", check=False).stderr
    torpor.run("unprotect", "v2")
    torpor.run("factory-reset", "v2")
    assert sorted(p.name for p in torpor.dir("v2").iterdir() if p.name != "instance.lock") == ["torpor.yaml"]
    torpor.run("start", "v2")
    assert torpor.sh("v2", "cat /var/lib/torpor/boots") == "1\n"
    assert torpor.sh("v2", ". /etc/profile; echo $EDITED") == "done\n"
    torpor.run("stop", "v2")
    torpor.run("delete", "v2")


def test_start_file_with_edit_flags(torpor: Torpor) -> None:
    tpl = write_template(torpor, "flags")
    out = torpor.run("start", "--name", "fl", "--cpus", "1", "--set", '.env.FROM_SET = "set"', str(tpl))
    assert "created instance 'fl'" in out.stderr
    assert torpor.sh("fl", "nproc; . /etc/profile; echo $FROM_SET") == "1\nset\n"
    again = torpor.run("start", "fl", "--cpus", "2", check=False)
    assert again.returncode != 0 and "torpor edit fl" in again.stderr
    torpor.run("stop", "fl")
    assert os.path.exists(torpor.dir("fl"))
