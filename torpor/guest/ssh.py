"""SSH access to guests: torpor's key pair, each instance's ssh config, and the argv of ``ssh``/``scp``.

The system's OpenSSH client does the work; an instance's ``ssh.config`` lets any tool (VS Code, rsync) connect
with ``ssh -F ~/.torpor/NAME/ssh.config torpor-NAME``.  One control master per instance is shared by shells,
copies and the host agent's port forwards.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

from torpor import subp
from torpor.store import atomic, filenames


def host_alias(name: str) -> str:
    return f"torpor-{name}"


def ensure_keypair(home: Path) -> tuple[Path, str]:
    """torpor's SSH key pair under ``_config`` (made once, mode 0600); return the private key and public key."""
    cfg = home / filenames.CONFIG_DIR
    cfg.mkdir(parents=True, exist_ok=True)
    key = cfg / filenames.SSH_KEY
    pub = key.with_name(key.name + ".pub")
    if not (key.exists() and pub.exists()):
        tmp = cfg / f".{key.name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".pub").unlink(missing_ok=True)
        subp.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "torpor", "-f", tmp])
        tmp.with_name(tmp.name + ".pub").rename(pub)
        tmp.rename(key)
    key.chmod(0o600)
    pub.chmod(0o600)
    return key, pub.read_text().strip()


def user_public_keys(ssh_dir: Path | None = None) -> list[str]:
    """The user's own SSH public keys (``~/.ssh/*.pub``), which ``ssh.loadDotSSHPubKeys: true`` lets in as well,
    as in Lima; a file that does not hold a key is left out."""
    found = []
    for path in sorted((ssh_dir or Path.home() / ".ssh").glob("*.pub")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in path.read_text().splitlines():
                if line.strip().startswith(("ssh-", "ecdsa-", "sk-")):
                    found.append(line.strip())
    return found


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free on ``host`` now, other than those in ``avoid``."""
    with contextlib.ExitStack() as held:  # each port held until the end, so that the kernel offers another
        while True:
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            port: int = s.getsockname()[1]
            if port not in avoid:
                return port


def config_text(inst_dir: Path, name: str, port: int, user: str, key: Path) -> str:
    return "\n".join(
        [
            f"Host {host_alias(name)}",
            "  HostName 127.0.0.1",
            f"  Port {port}",
            f"  User {user}",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            # The guest's host key is made at its first boot and changes with every new instance on a reused port.
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  LogLevel ERROR",
            "  ControlMaster auto",
            f"  ControlPath {inst_dir / filenames.SSH_CONTROL}",
            "  ControlPersist no",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 5",
            "",
        ]
    )


def write_config(inst_dir: Path, name: str, port: int, user: str, key: Path) -> Path:
    path = inst_dir / filenames.SSH_CONFIG
    atomic.write_text(path, config_text(inst_dir, name, port, user, key), 0o600)
    return path


def ssh_argv(inst_dir: Path, name: str, options: list[str], command: list[str] | None = None) -> list[str]:
    """``ssh`` with the instance's config, ``options`` before the host and ``command`` after it."""
    return ["ssh", "-F", str(inst_dir / filenames.SSH_CONFIG), *options, host_alias(name), *(command or [])]


MASTER_OPTIONS = (
    *("-M", "-N", "-o", "ControlPersist=no", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"),
    # The unix sockets it forwards (hostagent/sockets.py): the user's alone (ssh's default, said so here), in
    # place of one left behind.
    *("-o", "StreamLocalBindMask=0177", "-o", "StreamLocalBindUnlink=yes"),
)


def nodelay_options() -> list[str]:
    """Options that connect ``ssh`` through ssh_nodelay (no Nagle stalls in the handshake: see there)."""
    helper = Path(__file__).with_name("ssh_nodelay.py")
    command = shlex.join([sys.executable, "-I", "-S", str(helper)])
    return ["-o", f"ProxyCommand={command} %h %p", "-o", "ProxyUseFdpass=yes"]


def spawn_master(inst_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """Start the instance's control master; it creates the control socket once it has authenticated.

    It dies with the calling process.  ssh runs the ProxyCommand with $SHELL: /bin/sh starts quicker than bash.
    """
    return subp.spawn(ssh_argv(inst_dir, name, [*MASTER_OPTIONS, *nodelay_options()]), env={"SHELL": "/bin/sh"})
