"""VM drivers: a small protocol for the VM lifecycle, with optional capabilities declared in ``Features``."""
