"""The per-instance host agent: owns QEMU and its QMP session, serves an API on a unix socket, writes events."""
