"""``ssh``'s ProxyCommand for the control master: connect to HOST PORT with TCP_NODELAY, hand the socket to ssh.

OpenSSH turns Nagle's algorithm off only once a session is interactive; until then each pair of small writes in
the handshake (NEWKEYS then SERVICE_REQUEST, ...) waits for the peer's delayed ACK, 40 ms a time.  Measured on a
guest under TCG: a handshake took 0.16-0.20 s through ssh's own socket, 0.10-0.11 s through this one (its start-up
included).  Run as a file with ``python -I -S`` (standard library only), used with ``ProxyUseFdpass yes``.
"""

import socket
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        print(f"ssh_nodelay: connecting to {host}:{port}: {e}", file=sys.stderr)
        return 1
    sock.setblocking(True)  # a timeout made it non-blocking; ssh expects it as a connect() leaves it
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    socket.send_fds(socket.socket(fileno=1), [b"\0"], [sock.fileno()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
