"""The real host agent over a fake driver and a fake guest, as a process of its own (signals reach it as they
reach the real one).  ``python -m tests.component.fake_agent NAME`` with TORPOR_HOME set; the driver's calls are
appended to ``driver.log`` in the instance directory, one per line."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.driver.base import Accel, BeforeRun, BootPlan, Features, Progress, StopOutcome
from torpor.hostagent.mounts import MountSet

if TYPE_CHECKING:
    from torpor.config.schema import Config
    from torpor.driver.base import Shares
    from torpor.hostagent.sockets import SocketForward
    from torpor.store.savedstate import Saved


class FakeDriver:
    features = Features(save_restore=True, snapshots=True)
    accel = Accel("kvm", "a fake driver")
    ram_file: Path | None = None

    def __init__(self, inst_dir: Path, restoring: bool) -> None:
        self.dir = inst_dir
        self.restoring = restoring
        self.exited = asyncio.Event()

    def _log(self, what: str) -> None:
        with (self.dir / "driver.log").open("a") as f:
            f.write(what + "\n")

    def machine_record(self) -> dict[str, Any]:
        return {"qemu": {"binary": "fake", "version": "1.0"}, "machine": "fake", "argv": ["fake-vm"]}

    async def start(self, before_run: BeforeRun) -> None:
        await before_run()
        self._log("start")

    async def stop(self, timeout: float) -> StopOutcome:
        self._log(f"stop {timeout:.0f}")
        self.exited.set()
        return StopOutcome(True, "the guest shut down")

    async def kill(self) -> None:
        self._log("kill")
        self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        return 0

    async def inspect(self) -> dict[str, object]:
        return {"state": "exited" if self.exited.is_set() else "running", "accel": self.accel.name}

    async def where(self) -> str:
        return "a fake VM, nowhere"

    def stderr_tail(self) -> str:
        return ""

    async def close(self) -> None:
        pass

    async def save(
        self, state: Path, progress: Progress | None = None, *, written: Callable[[], None] | None = None
    ) -> tuple[str, dict[str, object]]:
        self._log("save")
        state.write_bytes(b"fake machine state")
        if written is not None:
            written()
        return "fake", {}

    async def restore(
        self,
        before_run: BeforeRun,
        *,
        progress: Progress | None = None,
        while_loading: Callable[[], None] | None = None,
    ) -> None:
        assert self.restoring
        if while_loading is not None:
            while_loading()
        await before_run()
        self._log("restore")

    async def resume(self) -> None:
        self._log("resume")

    async def quit(self) -> int:
        self._log("quit")
        self.exited.set()
        return 0

    async def snapshot(
        self,
        tag: str,
        state: Path,
        ram_copy: Path,
        progress: Progress | None = None,
        while_paused: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[str, dict[str, object]]:
        self._log(f"snapshot {tag}")
        if while_paused is not None:
            await while_paused()
        state.write_bytes(b"fake snapshot")
        return "fake", {}

    async def detach_shares(self) -> None:
        pass

    async def attach_shares(self) -> None:
        pass

    async def delete_snapshot(self, tag: str) -> None:
        self._log(f"delete snapshot {tag}")


class FakeFactory:
    def boot(self, inst_dir: Path, name: str, plan: BootPlan) -> FakeDriver:
        (inst_dir / "disk.qcow2").touch()
        return FakeDriver(inst_dir, restoring=False)

    def restore(self, inst_dir: Path, name: str, saved: Saved, early: object | None) -> FakeDriver:
        return FakeDriver(inst_dir, restoring=True)

    def restore_problems(self, saved: Saved, inst_dir: Path) -> list[str]:
        return []


class FakeGuest:
    def __init__(self, inst_dir: Path) -> None:
        self.dir = inst_dir
        self.forwards: list[str] = []
        self.mounts = MountSet()  # none: the fake VM has no channels

    async def attach_mounts(
        self,
        mounts: list[dict[str, Any]],
        mount_type: str,
        saved: list[dict[str, Any]] | None,
        channels: tuple[socket.socket, ...],
        shares: Shares | None = None,
    ) -> None:
        pass

    async def mount_points(self) -> set[str] | None:
        return set()

    def prepare_boot(self, config: Config) -> tuple[int, str]:
        (self.dir / "cidata.iso").write_bytes(b"seed")
        return 40000, "dev"

    def write_ssh_config(self, port: int, user: str) -> None:
        pass

    async def connect_channels(self, ready_channel: bool) -> None:
        pass

    async def ready_report(self) -> dict[str, str]:
        return {"boots": "1", "provision": "none"}

    async def ssh_up(self, master: subprocess.Popen[bytes] | None) -> None:
        pass

    async def set_clock(self) -> None:
        pass

    async def provisioning(self, status: str) -> str:
        return ""

    async def cloud_init(self) -> str:
        return ""

    async def probes(self, probes: list[dict[str, Any]], param: dict[str, str]) -> str:
        return ""

    async def copy_to_host(self, entries: list[dict[str, Any]], emit: Any) -> None:
        return None

    async def service_ready(self, command: str) -> str:
        return ""

    def forward_ports(self, rules: list[dict[str, Any]], emit: Callable[..., None]) -> None:
        pass

    async def forward_sockets(self, forwards: list[SocketForward], emit: Callable[..., None]) -> None:
        pass

    def end(self) -> None:
        pass

    async def close(self) -> None:
        pass


def main(name: str) -> int:
    from torpor.hostagent import early, events
    from torpor.hostagent.agent import HostAgent
    from torpor.store.instance import home, instance_dir

    inst_dir = instance_dir(name)
    begun = early.Early(early._lock_pid(inst_dir, name), events.EventWriter(sys.stdout), None, [])
    agent = HostAgent(name, inst_dir, home(), begun, factory=FakeFactory(), guest=FakeGuest(inst_dir))
    return asyncio.run(agent.run())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
