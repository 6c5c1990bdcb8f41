"""QEMU's command line, built by small pure functions per device group (each returns ``list[str]``).

Kept free of I/O so unit tests cover it without QEMU; :func:`build` puts the groups together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


def opt(value: object) -> str:
    """``value`` as it must appear inside a QEMU option string (``key=value,key=value``): commas doubled, so that
    a path with a comma in it (a $TORPOR_HOME, say) is not read as the start of another option."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class HostForward:
    host_ip: str
    host_port: int
    guest_port: int
    proto: str = "tcp"


@dataclass(frozen=True)
class NinePExport:
    """A host directory exported to the guest over virtio-9p (mountType 9p)."""

    path: Path
    readonly: bool
    security_model: str = "none"


@dataclass(frozen=True)
class VirtiofsShare:
    """A host directory served by virtiofsd on ``socket`` (mountType virtiofs).  Its device sits on a PCIe root
    port of its own so that it can be unplugged before a save and plugged in again after."""

    path: Path
    socket: Path
    log: Path


@dataclass(frozen=True)
class VMSpec:
    """Everything QEMU's command line depends on."""

    name: str
    arch: str
    accel: str  # "kvm" or "tcg"
    cpus: int
    memory: int  # bytes
    disk: Path
    kernel: Path | None
    initrd: Path | None
    kernel_cmdline: str
    qmp_socket: Path
    ready_socket: Path | None
    serial_log: Path
    pidfile: Path
    forwards: tuple[HostForward, ...] = ()
    cidata: Path | None = None
    qga_socket: Path | None = None
    memory_file: Path | None = None  # guest RAM in a shared file (saveMode: instant)
    mount_sockets: tuple[Path, ...] = ()  # one virtio-serial channel per mount, in the order of ``mounts``
    ninep: tuple[NinePExport, ...] = ()  # mountType 9p: one export per mount, tagged torpor9p.N
    virtiofs: tuple[VirtiofsShare, ...] = ()  # mountType virtiofs: one device per mount, tagged torpor-vfs.N
    data_disks: tuple[Path, ...] = ()  # additionalDisks, in order: serial dataN
    cpu_model: str | None = None  # vmOpts.qemu.cpuType for the arch (default: host under KVM, max under TCG)
    uefi: tuple[Path, Path] | None = None  # UEFI's code (read-only) and the instance's variables (else SeaBIOS)


MACHINES = {"x86_64": "q35", "aarch64": "virt"}  # QEMU's machine type per guest arch


def machine_type(spec: VMSpec) -> str:
    if spec.arch not in MACHINES:
        raise ValueError(f"unsupported arch {spec.arch}")
    if spec.arch == "aarch64":  # the interrupt controller: the host's under KVM, the newest TCG emulates
        return f"{MACHINES[spec.arch]},gic-version={'host' if spec.accel == 'kvm' else 'max'}"
    return MACHINES[spec.arch]


def machine(spec: VMSpec) -> list[str]:
    # -cpu host fails under nested KVM ("failed to set MSR"), and TCG has no host CPU to pass through.
    cpu = "host" if spec.accel == "kvm" else "max"
    if spec.cpu_model and not (spec.cpu_model == "host" and spec.accel != "kvm"):
        cpu = spec.cpu_model  # (TCG has no host CPU: "host" stays "max" there)
    accel = "kvm" if spec.accel == "kvm" else "tcg,thread=multi"
    machine = machine_type(spec) + (",memory-backend=ram0" if _ram_backend(spec) else "")
    return ["-machine", machine, "-accel", accel, "-cpu", cpu]


def resources(spec: VMSpec) -> list[str]:
    mib = max(1, spec.memory // MIB)
    args = ["-smp", str(spec.cpus), "-m", f"{mib}M"]
    if spec.memory_file is not None:
        # share=on: the guest's writes land in the file itself, which a save then only has to flush.
        args += ["-object", f"memory-backend-file,id=ram0,size={mib}M,mem-path={opt(spec.memory_file)},share=on"]
    elif spec.virtiofs:
        # virtiofsd reads and writes the guest's buffers itself: the RAM must be shared memory it can map.
        args += ["-object", f"memory-backend-memfd,id=ram0,size={mib}M,share=on"]
    return args


def _ram_backend(spec: VMSpec) -> bool:
    return spec.memory_file is not None or bool(spec.virtiofs)


def boot(spec: VMSpec) -> list[str]:
    if spec.kernel is None:
        return firmware(spec)
    args = ["-kernel", str(spec.kernel)]
    if spec.initrd is not None:
        args += ["-initrd", str(spec.initrd)]
    if spec.kernel_cmdline:
        args += ["-append", spec.kernel_cmdline]
    return args


def firmware(spec: VMSpec) -> list[str]:
    """UEFI's flash: the code read-only, the variables the guest writes (without it QEMU runs SeaBIOS)."""
    if spec.uefi is None:
        return []
    code, variables = spec.uefi
    return [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={opt(code)}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={opt(variables)}",
    ]


DISK_ID = "disk0"  # the root disk's drive id, which QMP block commands name


def disk(spec: VMSpec) -> list[str]:
    # The serials let the guest tell its root disk from the seed, whatever order the kernel finds them in.
    args = [
        "-drive",
        f"file={opt(spec.disk)},if=none,id={DISK_ID},format=qcow2,discard=unmap,cache=writeback",
        "-device",
        f"virtio-blk-pci,drive={DISK_ID},serial=root" + ("" if spec.kernel else ",bootindex=0"),
    ]
    if spec.cidata is not None:
        args += [
            "-drive",
            f"file={opt(spec.cidata)},if=none,id=cidata,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=cidata,serial=cidata",
        ]
    for i, path in enumerate(spec.data_disks):
        args += [
            "-drive",
            f"file={opt(path)},if=none,id=data{i},format=qcow2,discard=unmap,cache=writeback",
            "-device",
            f"virtio-blk-pci,drive=data{i},serial=data{i}",
        ]
    return args


def network(spec: VMSpec) -> list[str]:
    netdev = "user,id=net0"
    for f in spec.forwards:
        netdev += f",{_hostfwd(f)}"
    # romfile= drops the iPXE option ROM: the guest never network-boots and the ROM costs boot time under TCG.
    return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]


def channels(spec: VMSpec) -> list[str]:
    args = ["-device", "virtio-serial-pci,id=vser0"]
    if spec.ready_socket is not None:
        args += [
            "-chardev",
            f"socket,id=ready,path={opt(spec.ready_socket)},server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=ready,name=io.torpor.ready",
        ]
    if spec.qga_socket is not None:
        args += [
            "-chardev",
            f"socket,id=qga,path={opt(spec.qga_socket)},server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0",
        ]
    for i, path in enumerate(spec.mount_sockets):
        args += [
            "-chardev",
            f"socket,id=mount{i},path={opt(path)},server=on,wait=off",
            "-device",
            f"virtserialport,bus=vser0.0,chardev=mount{i},name=io.torpor.mount.{i}",
        ]
    return args


def devices(spec: VMSpec) -> list[str]:
    args = ["-device", "virtio-rng-pci"]
    for i, e in enumerate(spec.ninep):
        fsdev = f"local,id=fs{i},path={opt(e.path)},security_model={e.security_model}"
        args += ["-fsdev", fsdev + (",readonly=on" if e.readonly else ""), "-device"]
        args.append(f"virtio-9p-pci,fsdev=fs{i},mount_tag=torpor9p.{i}")
    for i in range(len(spec.virtiofs)):
        # Root ports stay through a save (the saved state has them); the devices on them come and go.
        args += ["-device", f"pcie-root-port,id={VIRTIOFS_PORT}{i},chassis={VIRTIOFS_CHASSIS + i}"]
    return args + shares(spec)


VIRTIOFS_PORT = "vfsport"
VIRTIOFS_CHASSIS = 16  # the root ports' chassis numbers, distinct from any other device's


def shares(spec: VMSpec) -> list[str]:
    """The virtiofs devices and their chardevs: what a save takes out of the command line (see share_plug)."""
    args: list[str] = []
    for i, share in enumerate(spec.virtiofs):
        chardev, device = share_plug(share, i)
        args += ["-chardev", f"socket,id={chardev['id']},path={opt(share.socket)}", "-device"]
        args.append(",".join([device["driver"], *(f"{k}={v}" for k, v in device.items() if k != "driver")]))
    return args


def share_plug(share: VirtiofsShare, index: int) -> tuple[dict[str, object], dict[str, str]]:
    """QMP's chardev-add and device_add arguments for virtiofs share ``index`` (the device's as key=value pairs
    in the order the command line writes them)."""
    chardev: dict[str, object] = {
        "id": share_chardev(index),
        "backend": {
            "type": "socket",
            "data": {"addr": {"type": "unix", "data": {"path": str(share.socket)}}, "server": False},
        },
    }
    device = {
        "driver": "vhost-user-fs-pci",
        "id": share_device(index),
        "chardev": share_chardev(index),
        "tag": f"torpor-vfs.{index}",
        "bus": f"{VIRTIOFS_PORT}{index}",
    }
    return chardev, device


def share_device(index: int) -> str:
    return f"vfsdev{index}"


def share_chardev(index: int) -> str:
    return f"vfs{index}"


def console(spec: VMSpec) -> list[str]:
    # A file, not a socket: a serial socket drops what the guest writes while nothing is connected.
    return ["-chardev", f"file,id=serial0,path={opt(spec.serial_log)}", "-serial", "chardev:serial0"]


def control(spec: VMSpec) -> list[str]:
    return [
        "-qmp",
        f"unix:{opt(spec.qmp_socket)},server=on,wait=off",
        "-pidfile",
        str(spec.pidfile),
        "-name",
        _process_name(spec.name),
    ]


def _process_name(name: str) -> str:
    return f"torpor-{name},process=torpor-{name}"


def _hostfwd(f: HostForward) -> str:
    return f"hostfwd={f.proto}:{f.host_ip}:{f.host_port}-:{f.guest_port}"


def base() -> list[str]:
    # -S: created paused, so the host agent can connect to the guest's channels before the first instruction.
    return ["-nodefaults", "-no-user-config", "-display", "none", "-S"]


def build(binary: str, spec: VMSpec) -> list[str]:
    """The complete argv for QEMU."""
    return [
        binary,
        *base(),
        *machine(spec),
        *resources(spec),
        *boot(spec),
        *disk(spec),
        *network(spec),
        *channels(spec),
        *devices(spec),
        *console(spec),
        *control(spec),
    ]


@dataclass(frozen=True)
class Placement:
    """Where a VM's command line puts it: its instance directory, its name and the host port forwarded to SSH."""

    dir: Path
    name: str
    ssh: HostForward


def retarget(argv: list[str], old: Placement, new: Placement) -> list[str]:
    """A saved command line moved to another instance: its files, name and SSH port from ``old`` to ``new``.
    The machine and its devices stay as the saved state needs them."""
    # Paths appear as they are (-kernel PATH) and inside option strings (file=PATH,...), escaped.
    renames = {
        f"{old.dir}/": f"{new.dir}/",
        f"{opt(old.dir)}/": f"{opt(new.dir)}/",
        _hostfwd(old.ssh): _hostfwd(new.ssh),
    }

    def moved(arg: str) -> str:
        if arg == _process_name(old.name):
            return _process_name(new.name)
        for before, after in renames.items():
            arg = arg.replace(before, after)
        return arg

    return [moved(arg) for arg in argv]
