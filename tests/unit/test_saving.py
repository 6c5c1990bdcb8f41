"""A save that cannot begin leaves the VM as it was, for the host agent to shut down instead (hostagent/saving.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from torpor.driver.base import Driver
from torpor.hostagent import saving
from torpor.hostagent.mounts import MountSet

if TYPE_CHECKING:
    from torpor.store.records import BootRecord


def test_a_save_that_cannot_make_its_directory_fails_with_the_vm_alive(tmp_path: Path) -> None:
    # A file where saved/ goes makes creating the directory fail, as a full disk does (ENOSPC): an OSError before
    # the VM is touched.  Any other exception than SaveFailed would make the host agent kill the VM.
    (tmp_path / "saved").write_text("")
    driver = cast("Driver", object())  # never reached
    with pytest.raises(saving.SaveFailed, match=r"preparing .*saved for the state failed") as exc:
        asyncio.run(saving.save(tmp_path, driver, cast("BootRecord", {}), MountSet()))
    assert exc.value.vm_alive
