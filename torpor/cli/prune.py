"""``torpor prune``: remove what torpor can rebuild or no longer needs: the image cache (guest images, the
downloads, the host's probes) and the saved states that refused restores set aside (Lima's ``limactl prune``
removes its download cache).  Instances keep their own copies of their boot files and disks."""

from __future__ import annotations

import argparse
import shutil

from torpor.cli.common import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-cache", action="store_true", help="only the set-aside states")


def run(args: argparse.Namespace) -> int:
    from torpor.config.schema import format_size
    from torpor.instance.listing import du, set_aside
    from torpor.store.cache import cache_root
    from torpor.store.instance import home, instance_dir, list_names

    freed = 0
    root = home()
    for name in list_names(root):
        for path in set_aside(instance_dir(name, root)):
            freed += du(path)
            shutil.rmtree(path, ignore_errors=True)
            report(f"removed {path}")
    cache = cache_root()
    if not args.keep_cache and cache.exists():
        freed += du(cache)
        shutil.rmtree(cache, ignore_errors=True)
        report(f"removed the cache {cache}")
    report(f"freed {format_size(freed)}")
    return 0
