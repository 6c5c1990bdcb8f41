"""The guest user a configuration describes (Lima's ``user``): the host user's name, uid and full name where a
field is unset.  Read by the configuration (for the guest-side template variables) and by the seed."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GuestUser:
    name: str
    uid: int
    groups: tuple[str, ...] = ()  # beyond the distribution's defaults (template:docker's: docker)
    comment: str = ""
    home_dir: str = ""  # default: /home/NAME.linux
    shell: str = "/bin/bash"
    sudo: bool = True  # passwordless sudo

    @classmethod
    def from_host(cls) -> GuestUser:
        """A guest user named like the host user (``torpor`` for root or a name a guest cannot use)."""
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = ""
        if name == "root" or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", name):
            name = "torpor"
        uid = os.getuid()
        return cls(name, uid if uid >= 1000 else 1000, comment=_host_full_name())

    @classmethod
    def of(cls, user: dict[str, object]) -> GuestUser:
        """The guest user of a configuration's ``user`` (its JSON record, or the YAML's mapping): the host user's
        name, uid and full name where a field is unset, as in Lima."""
        default = cls.from_host()

        def text(key: str, fallback: str) -> str:
            v = user.get(key)
            return v if isinstance(v, str) and v else fallback

        uid = user.get("uid")
        return cls(
            text("name", default.name),
            uid if isinstance(uid, int) and not isinstance(uid, bool) else default.uid,
            comment=text("comment", default.comment),
            home_dir=text("home", ""),
            shell=text("shell", "/bin/bash"),
            sudo=user.get("passwordlessSudo") is not False,
        )

    @property
    def home(self) -> str:
        # Not /home/NAME: that is where the host's home, mounted at the same path, goes (Lima's choice too).
        return self.home_dir or f"/home/{self.name}.linux"


def _host_full_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0]
    except (KeyError, ImportError):
        return ""
