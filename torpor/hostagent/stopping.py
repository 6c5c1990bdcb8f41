"""The host agent's stop policy: what a stop does, by the instance's state and its runtime saveOnStop.

Before the VM has run (a boot under way, a state still loading) it is turned off at once; a saved state it was
loading stays as it was.  Once it runs, even a restored VM that does not answer SSH yet, it is saved if
saveOnStop says so (shut down cleanly if the save fails), and otherwise shut down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from torpor.hostagent import events, saving
from torpor.hostagent.state import State
from torpor.store import savedstate

if TYPE_CHECKING:
    from torpor.hostagent.agent import HostAgent

log = logging.getLogger(__name__)


async def stop_vm(agent: HostAgent) -> tuple[str, dict[str, Any]]:
    """Stop the VM; return the reason and the fields of the agent's exiting event."""
    async with agent.vm_busy:  # a snapshot being taken completes first
        return await _stop_now(agent)


async def _stop_now(agent: HostAgent) -> tuple[str, dict[str, Any]]:
    assert agent.driver is not None
    before, agent.state = agent.state, State.STOPPING
    agent.guest.end()
    if before in (State.STARTING, State.BOOTING, State.RESTORING):
        if savedstate.present(agent.dir):  # the state being loaded: the VM has not run, it is still good
            agent.events.emit(events.STOPPING, "stop requested before the restored VM ran; stopping QEMU")
            await agent.driver.kill()
            return "stopped before the restored VM ran; the saved state is kept", {"saved": True}
        agent.events.emit(events.STOPPING, "stop requested during boot; stopping QEMU")
        await agent.driver.kill()
        return "stopped during boot", {}
    if agent.discarded is not None:
        await agent.discarded  # the state it was restored from goes before a new one is written
    fields: dict[str, Any] = {"saved": False}
    if agent.save_on_stop:
        try:
            return await _save(agent)
        except saving.SaveFailed as e:
            log.error("%s", e)
            fields["saveFailed"] = str(e)
            if not e.vm_alive:
                return f"{e}", fields
            agent.events.emit(events.NOTICE, f"{e}; shutting the guest down instead")
    assert agent.boot_record is not None
    timeout = int(agent.boot_record["config"]["shutdownTimeout"])
    agent.events.emit(events.STOPPING, f"shutting down the guest (waiting up to {timeout} s)")
    outcome = await agent.driver.stop(timeout)
    return outcome.detail, fields


async def _save(agent: HostAgent) -> tuple[str, dict[str, Any]]:
    assert agent.driver is not None and agent.boot_record is not None
    agent.events.emit(events.STOPPING, "saving the VM state")
    progress = events.ProgressEmitter(agent.events, "saving")
    manifest = await saving.save(agent.dir, agent.driver, agent.boot_record, agent.guest.mounts, progress)
    size = manifest["state"]["allocated"]
    seconds = manifest["saveSeconds"]
    return (
        f"saved the VM state ({size / 2**20:.0f} MiB in {seconds:.2f} s)",
        {"saved": True, "stateSize": size, "saveSeconds": seconds},
    )
