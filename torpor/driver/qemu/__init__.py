"""The QEMU driver."""
