"""torpor: developer VMs on QEMU that can save their running state on stop and restore it on start."""

__version__ = "0.1.0"
