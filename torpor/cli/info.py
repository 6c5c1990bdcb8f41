from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    import torpor
    from torpor.driver.qemu import factory, host, mechanisms
    from torpor.guest import builder
    from torpor.store.cache import cache_root
    from torpor.store.instance import home

    qemu = factory.find_qemu("x86_64")  # the one architecture torpor runs
    built = builder.find_built()
    accel = host.probe_accel(qemu, built.kernel if built else None, cache_root())
    reporting = host.hands_back_free_memory()
    save_modes = mechanisms.by_save_mode(host.migration_capabilities(qemu), mechanisms.wanted())
    info = {
        "version": torpor.__version__,
        "qemu": {"binary": qemu.binary, "version": qemu.version},
        "accel": {"name": accel.name, "reason": accel.reason},
        "home": str(home()),
        "cache": str(cache_root()),
        "defaultGuest": str(built.kernel.parent) if built else None,
        "saveModes": save_modes,
        "host": {"freePageReporting": reporting},
    }
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"torpor {info['version']}")
    print(f"QEMU:          {qemu.version} ({qemu.binary})")
    print(f"accelerator:   {accel.name.upper()} - {accel.reason}")
    print(f"home:          {info['home']}")
    print(f"cache:         {info['cache']}")
    print(f"default guest: {info['defaultGuest'] or 'not built yet (`torpor image build`)'}")
    for mode, mechanism in save_modes.items():
        print(f"saveMode {mode + ':':<9}{mechanism} - {mechanisms.DESCRIPTIONS[mechanism]}")
    if reporting:
        print(
            "free memory:   handed back to this host's hypervisor (virtio-balloon free page reporting): a copy-mode"
            " restore of a state saved more than a few seconds before is slower here; instant mode is not"
        )
    return 0
