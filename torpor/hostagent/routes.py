"""The host agent's HTTP API on ``ha.sock``: each route over the agent it serves (as Lima's ``api/server`` wraps
its agent in a backend).

    GET    /v1/info             what the agent knows: its state, the guest's report, the VM, the forwards, the mounts
    GET    /v1/driver/config    the runtime settings: {"saveOnStop": bool}
    PATCH  /v1/driver/config    change them (what `torpor stop --save` / `--no-save` does before its signal)
    POST   /v1/snapshots        {"tag": T}: snapshot the running VM (disk, RAM, devices)
    DELETE /v1/snapshots        {"tag": T}: delete a snapshot while the VM runs (QEMU holds the disk)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from torpor.errors import DriverError, InstanceStateError, QMPCommandError, TorporError
from torpor.hostagent import events, snapshotting
from torpor.hostagent.api import Handler, HTTPError, Request
from torpor.store import snapshots

if TYPE_CHECKING:
    from torpor.hostagent.agent import HostAgent

log = logging.getLogger(__name__)


def routes(agent: HostAgent) -> dict[tuple[str, str], Handler]:
    async def get_info(_req: Request) -> tuple[int, Any]:
        return 200, await agent.info()

    async def get_driver_config(_req: Request) -> tuple[int, Any]:
        return 200, {"saveOnStop": agent.save_on_stop}

    async def patch_driver_config(req: Request) -> tuple[int, Any]:
        return 200, _set_driver_config(agent, req.json())

    async def post_snapshot(req: Request) -> tuple[int, Any]:
        return 200, await _take_snapshot(agent, _tag_from(req))

    async def delete_snapshot(req: Request) -> tuple[int, Any]:
        return 200, await _delete_snapshot(agent, _tag_from(req))

    return {
        ("GET", "/v1/info"): get_info,
        ("GET", "/v1/driver/config"): get_driver_config,
        ("PATCH", "/v1/driver/config"): patch_driver_config,
        ("POST", "/v1/snapshots"): post_snapshot,
        ("DELETE", "/v1/snapshots"): delete_snapshot,
    }


def _set_driver_config(agent: HostAgent, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPError(400, 'expected a JSON object such as {"saveOnStop": true}')
    unknown = sorted(set(body) - {"saveOnStop"})
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(unknown)}; the only runtime setting is saveOnStop")
    if "saveOnStop" in body:
        value = body["saveOnStop"]
        if not isinstance(value, bool):
            raise HTTPError(400, f"saveOnStop must be true or false, not {json.dumps(value)}")
        if value and not agent.can_save():
            raise HTTPError(400, "this instance's driver cannot save the machine state")
        agent.save_on_stop = value
        log.info("runtime saveOnStop set to %s", value)
    return {"saveOnStop": agent.save_on_stop}


async def _take_snapshot(agent: HostAgent, tag: str) -> dict[str, Any]:
    if not agent.accepts_vm_operations() or agent.driver is None or agent.boot_record is None:
        raise HTTPError(409, "the VM is not running (or is busy stopping or snapshotting); try again")
    if snapshots.snapshot_dir(agent.dir, tag).exists():
        raise HTTPError(409, f"snapshot {tag!r} exists; delete it first or choose another tag")
    async with agent.vm_busy:
        agent.events.emit(events.NOTICE, f"taking snapshot {tag!r}")
        progress = events.ProgressEmitter(agent.events, "snapshot")
        try:
            meta = await snapshotting.create(
                agent.dir, agent.driver, agent.boot_record, tag, agent.guest.mounts, progress=progress
            )
        except (DriverError, OSError) as e:
            raise HTTPError(500, f"the snapshot failed: {e}") from None
        except TorporError as e:  # refused before the VM was touched (a busy 9p mount)
            raise HTTPError(409, f"{e}; {e.hint}" if e.hint else str(e)) from None
    agent.events.emit(events.NOTICE, f"snapshot {tag!r} taken (VM paused {meta['pausedSeconds']:.2f} s)")
    keys = ("tag", "createdAt", "mechanism", "pausedSeconds", "seconds", "state", "ram")
    return {k: v for k, v in meta.items() if k in keys}


async def _delete_snapshot(agent: HostAgent, tag: str) -> dict[str, Any]:
    if agent.driver is None or agent.stop_requested.is_set():
        raise HTTPError(409, "the VM is not running")
    async with agent.vm_busy:
        with contextlib.suppress(QMPCommandError):  # a disk without it (an interrupted snapshot)
            await agent.driver.delete_snapshot(tag)
        await asyncio.to_thread(snapshots.remove, agent.dir, tag)
    return {"tag": tag, "deleted": True}


def _tag_from(req: Request) -> str:
    body = req.json()
    if not isinstance(body, dict) or set(body) != {"tag"} or not isinstance(body["tag"], str):
        raise HTTPError(400, 'expected a JSON object such as {"tag": "clean"}')
    try:
        return snapshots.validate_tag(body["tag"])
    except InstanceStateError as e:
        raise HTTPError(400, str(e)) from None
