"""guest/ssh_nodelay.py, run as ssh runs it: it must hand over a connected socket with Nagle turned off."""

import socket
import subprocess

from torpor.guest import ssh


def test_helper_passes_a_connected_nodelay_socket() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ours, theirs = socket.socketpair()
    command = ssh.nodelay_options()[1].removeprefix("ProxyCommand=").replace("%h %p", f"127.0.0.1 {port}")
    proc = subprocess.run(command, shell=True, stdout=theirs.fileno(), check=False, timeout=30)
    theirs.close()
    assert proc.returncode == 0
    _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    passed = socket.socket(fileno=fds[0])
    peer, _ = server.accept()
    assert passed.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    passed.sendall(b"x")
    assert peer.recv(1) == b"x"
    for s in (passed, peer, ours, server):
        s.close()
