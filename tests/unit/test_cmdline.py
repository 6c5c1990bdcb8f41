from dataclasses import replace
from pathlib import Path

import pytest

from torpor.driver.qemu import cmdline, driver

D = Path("/inst")


def spec(**kw: object) -> cmdline.VMSpec:
    base: dict[str, object] = dict(
        name="dev",
        arch="x86_64",
        accel="tcg",
        cpus=2,
        memory=1024**3,
        disk=D / "disk.qcow2",
        kernel=D / "kernel",
        initrd=D / "initrd",
        kernel_cmdline="console=ttyS0",
        qmp_socket=D / "qmp.sock",
        ready_socket=D / "ready.sock",
        serial_log=D / "serial.log",
        pidfile=D / "qemu.pid",
    )
    base.update(kw)
    return cmdline.VMSpec(**base)  # type: ignore[arg-type]


def pairs(args: list[str]) -> list[tuple[str, str]]:
    return [(args[i], args[i + 1]) for i in range(len(args) - 1) if args[i].startswith("-")]


def test_machine_tcg_uses_max_cpu_and_multithreaded_tcg() -> None:
    assert cmdline.machine(spec()) == ["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"]


def test_machine_kvm_uses_host_cpu() -> None:
    assert cmdline.machine(spec(accel="kvm")) == ["-machine", "q35", "-accel", "kvm", "-cpu", "host"]


def test_machine_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="arch"):
        cmdline.machine(spec(arch="riscv64"))


def test_resources_memory_in_mib() -> None:
    assert cmdline.resources(spec(cpus=4, memory=3 * 1024**3)) == ["-smp", "4", "-m", "3072M"]


def test_boot_with_kernel_initrd_and_cmdline() -> None:
    assert cmdline.boot(spec()) == ["-kernel", "/inst/kernel", "-initrd", "/inst/initrd", "-append", "console=ttyS0"]


def test_a_disk_image_boots_from_its_root_disk_through_seabios() -> None:
    s = spec(kernel=None, initrd=None)
    assert cmdline.boot(s) == []  # (QEMU's SeaBIOS)
    assert ("-device", "virtio-blk-pci,drive=disk0,serial=root,bootindex=0") in pairs(cmdline.disk(s))


def test_uefi_maps_its_code_read_only_and_the_instance_s_variables() -> None:
    s = spec(kernel=None, initrd=None, uefi=(Path("/fw/CODE.fd"), D / "efi-vars.fd"))
    assert cmdline.boot(s) == [
        "-drive",
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "-drive",
        "if=pflash,format=raw,unit=1,file=/inst/efi-vars.fd",
    ]
    assert ("-device", "virtio-blk-pci,drive=disk0,serial=root,bootindex=0") in pairs(cmdline.disk(s))


def test_disk_is_virtio_qcow2() -> None:
    args = cmdline.disk(spec())
    assert ("-drive", "file=/inst/disk.qcow2,if=none,id=disk0,format=qcow2,discard=unmap,cache=writeback") in pairs(
        args
    )
    assert ("-device", "virtio-blk-pci,drive=disk0,serial=root") in pairs(args)
    assert "cidata" not in " ".join(args)


def test_cidata_is_a_read_only_disk_with_its_own_serial() -> None:
    args = cmdline.disk(spec(cidata=D / "cidata.iso"))
    assert ("-drive", "file=/inst/cidata.iso,if=none,id=cidata,format=raw,readonly=on") in pairs(args)
    assert ("-device", "virtio-blk-pci,drive=cidata,serial=cidata") in pairs(args)


def test_guest_agent_channel_has_the_standard_name() -> None:
    args = " ".join(cmdline.channels(spec(qga_socket=D / "qga.sock")))
    assert "socket,id=qga,path=/inst/qga.sock,server=on,wait=off" in args
    assert "name=org.qemu.guest_agent.0" in args


def test_network_forwards_bind_the_given_host_ip() -> None:
    fwd = cmdline.HostForward("127.0.0.1", 60022, 22)
    args = cmdline.network(spec(forwards=(fwd,)))
    assert args[1] == "user,id=net0,hostfwd=tcp:127.0.0.1:60022-:22"


def test_ready_channel_only_when_requested() -> None:
    assert "name=io.torpor.ready" in " ".join(cmdline.channels(spec()))
    assert "io.torpor.ready" not in " ".join(cmdline.channels(spec(ready_socket=None)))


def test_console_goes_to_a_file() -> None:
    assert cmdline.console(spec()) == [
        "-chardev",
        "file,id=serial0,path=/inst/serial.log",
        "-serial",
        "chardev:serial0",
    ]


def test_build_starts_paused_with_qmp_and_pidfile() -> None:
    argv = cmdline.build("/usr/bin/qemu-system-x86_64", spec())
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert "-S" in argv
    assert ("-qmp", "unix:/inst/qmp.sock,server=on,wait=off") in pairs(argv)
    assert ("-pidfile", "/inst/qemu.pid") in pairs(argv)
    assert "-nodefaults" in argv


def test_instant_mode_puts_guest_ram_in_a_shared_file() -> None:
    s = spec(memory_file=D / "memory.ram", memory=2 * 1024**3)
    assert cmdline.machine(s)[:2] == ["-machine", "q35,memory-backend=ram0"]
    args = cmdline.resources(s)
    assert ("-object", "memory-backend-file,id=ram0,size=2048M,mem-path=/inst/memory.ram,share=on") in pairs(args)
    assert ("-m", "2048M") in pairs(args)  # the size QEMU checks the backend against


def test_plain_ram_has_no_backend() -> None:
    assert "memory-backend" not in " ".join(cmdline.machine(spec()) + cmdline.resources(spec()))


SHARES = (
    cmdline.VirtiofsShare(Path("/home/u/src"), D / "mount0.virtiofs.sock", D / "mount0.virtiofsd.log"),
    cmdline.VirtiofsShare(Path("/tmp/x"), D / "mount1.virtiofs.sock", D / "mount1.virtiofsd.log"),
)


def test_virtiofs_puts_ram_in_shared_memory_and_each_device_on_a_root_port_of_its_own() -> None:
    s = spec(virtiofs=SHARES, memory=512 * 1024**2)
    argv = cmdline.build("qemu", s)
    assert ("-machine", "q35,memory-backend=ram0") in pairs(argv)
    assert ("-object", "memory-backend-memfd,id=ram0,size=512M,share=on") in pairs(argv)
    assert ("-device", "pcie-root-port,id=vfsport0,chassis=16") in pairs(argv)
    assert ("-device", "pcie-root-port,id=vfsport1,chassis=17") in pairs(argv)
    device = "vhost-user-fs-pci,id=vfsdev1,chardev=vfs1,tag=torpor-vfs.1,bus=vfsport1"
    assert ("-device", device) in pairs(argv)
    assert ("-chardev", "socket,id=vfs1,path=/inst/mount1.virtiofs.sock") in pairs(argv)


def test_the_virtiofs_devices_are_the_part_a_save_takes_out_and_qmp_plugs_back() -> None:
    s = spec(virtiofs=SHARES)
    argv = cmdline.build("qemu", s)
    taken = driver._without(argv, cmdline.shares(s))
    assert "vhost-user-fs-pci" not in " ".join(taken) and "socket,id=vfs0" not in " ".join(taken)
    assert "pcie-root-port,id=vfsport0,chassis=16" in taken  # the ports stay: the saved state has them
    assert len(taken) == len(argv) - 8
    chardev, device = cmdline.share_plug(SHARES[0], 0)
    assert chardev["id"] == "vfs0" and device["bus"] == "vfsport0" and device["tag"] == "torpor-vfs.0"
    assert driver._without(argv, ["-no-such-arg"]) == argv


def placed(p: cmdline.Placement) -> cmdline.VMSpec:
    d = p.dir
    return spec(
        name=p.name,
        disk=d / "disk.qcow2",
        kernel=d / "kernel",
        initrd=d / "initrd",
        qmp_socket=d / "qmp.sock",
        ready_socket=d / "ready.sock",
        serial_log=d / "serial.log",
        pidfile=d / "qemu.pid",
        cidata=d / "cidata.iso",
        qga_socket=d / "qga.sock",
        memory_file=d / "memory.ram",
        forwards=(p.ssh,),
    )


def test_retarget_moves_a_saved_command_line_to_another_instance() -> None:
    old = cmdline.Placement(Path("/h/a"), "a", cmdline.HostForward("127.0.0.1", 40000, 22))
    new = cmdline.Placement(Path("/h/b"), "b", cmdline.HostForward("127.0.0.1", 40001, 22))
    moved = cmdline.retarget(cmdline.build("qemu-system-x86_64", placed(old)), old, new)
    assert moved == cmdline.build("qemu-system-x86_64", placed(new))
    assert not any("/h/a/" in arg or "torpor-a" in arg or "40000" in arg for arg in moved)


def split_options(value: str) -> list[str]:
    """QEMU's reading of an option string: commas separate options, a doubled comma is a comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    return [*parts, current]


def test_paths_with_commas_stay_whole_inside_option_strings() -> None:
    d = Path("/home/u/vms,old/a")
    p = cmdline.Placement(d, "a", cmdline.HostForward("127.0.0.1", 40000, 22))
    argv = cmdline.build("qemu-system-x86_64", placed(p))
    values = dict(pairs(argv[1:]))
    assert argv[argv.index("-kernel") + 1] == f"{d}/kernel"  # a plain argument: as it is
    for option, key in (("-drive", "file"), ("-chardev", "path"), ("-object", "mem-path")):
        found = [o for a, b in pairs(argv[1:]) if a == option for o in split_options(b) if o.startswith(f"{key}=")]
        assert found and all(o.startswith(f"{key}={d}/") for o in found), (option, found)
    assert split_options(values["-qmp"])[0] == f"unix:{d}/qmp.sock"
    moved = cmdline.retarget(argv, p, cmdline.Placement(Path("/h/b,c"), "b", p.ssh))
    assert moved == cmdline.build("qemu-system-x86_64", placed(cmdline.Placement(Path("/h/b,c"), "b", p.ssh)))


def test_cpu_type_additional_disks_and_udp_forwards() -> None:
    assert cmdline.machine(spec(cpu_model="Haswell-v4"))[-1] == "Haswell-v4"
    assert cmdline.machine(spec(cpu_model="host"))[-1] == "max"  # TCG has no host CPU
    assert cmdline.machine(spec(accel="kvm", cpu_model="host"))[-1] == "host"
    args = cmdline.disk(spec(data_disks=(D / "a,b" / "datadisk",)))
    assert "file=/inst/a,,b/datadisk,if=none,id=data0,format=qcow2,discard=unmap,cache=writeback" in args
    assert "virtio-blk-pci,drive=data0,serial=data0" in args
    from torpor.driver.qemu.factory import udp_forwards

    rule = {"proto": "udp", "ignore": False, "hostIP": "127.0.0.1", "hostPort": None, "guestPort": None}
    fwds = udp_forwards({"portForwards": [{**rule, "guestPortRange": [53, 54], "hostPortRange": [1053, 1054]}]})
    assert [cmdline.network(spec(forwards=tuple(fwds)))[1]] == [
        "user,id=net0,hostfwd=udp:127.0.0.1:1053-:53,hostfwd=udp:127.0.0.1:1054-:54"
    ]


def test_minimum_qemu_version() -> None:
    from torpor.driver.qemu import factory, host
    from torpor.errors import ConfigError

    qemu = host.Qemu("/usr/bin/qemu-system-x86_64", "7.2.19")
    factory._check_minimum_version(qemu, {"vmOpts": {"qemu": {"minimumVersion": "7.2"}}})
    with pytest.raises(ConfigError, match=r"needs QEMU 8\.0"):
        factory._check_minimum_version(qemu, {"vmOpts": {"qemu": {"minimumVersion": "8.0"}}})


def test_an_aarch64_guest_is_a_virt_machine_with_the_newest_gic_under_tcg() -> None:
    s = spec(arch="aarch64", kernel=None, initrd=None, uefi=(Path("/fw/AAVMF_CODE.fd"), D / "efi-vars.fd"))
    assert cmdline.machine(s) == ["-machine", "virt,gic-version=max", "-accel", "tcg,thread=multi", "-cpu", "max"]
    assert cmdline.machine(replace(s, accel="kvm"))[:2] == ["-machine", "virt,gic-version=host"]
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/AAVMF_CODE.fd" in cmdline.boot(s)
    assert cmdline.machine(replace(s, memory_file=D / "memory.ram"))[1] == "virt,gic-version=max,memory-backend=ram0"
