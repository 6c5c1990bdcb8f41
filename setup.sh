#!/usr/bin/env bash
# Set up torpor on a Debian/Ubuntu machine: QEMU, the OpenSSH client and the tools the guests are built with (system
# packages), then torpor itself in a virtualenv at .venv.  Safe to run again.
#
# On Debian 12 (bookworm) QEMU comes from bookworm-backports (10.x): it can save RAM into a sparse file with
# mapped-ram and multifd, which restores faster than the migration stream Debian 12's own QEMU 7.2 offers.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null; }

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
qemu_from=()
if [ "$codename" = bookworm ]; then
    backports=/etc/apt/sources.list.d/torpor-bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "torpor setup: adding bookworm-backports (for QEMU 10) as $backports"
        printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
            "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $SUDO tee "$backports" >/dev/null
    fi
    qemu_from=(-t bookworm-backports)
fi

# mmdebstrap and e2fsprogs build template:debian's image; sftp-server serves the host's side of mounts; zstd and
# xz-utils decompress cloud images; ovmf is the UEFI firmware of the cloud images that want it.
packages=(openssh-client openssh-sftp-server dpkg apt python3-venv mmdebstrap e2fsprogs zstd xz-utils ovmf)
# Both architectures' QEMU and UEFI firmware: x86_64 and aarch64 guests run on either host (the other one emulated).
qemus=(qemu-system-x86 qemu-system-arm qemu-utils)
packages+=(qemu-efi-aarch64)
echo "torpor setup: installing system packages: ${qemus[*]} ${packages[*]}"
$SUDO apt-get update -qq
apt_install "${packages[@]}"
apt_install "${qemu_from[@]}" "${qemus[@]}"
echo "torpor setup: $(qemu-system-x86_64 --version | head -n 1)"

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "torpor setup: torpor needs Python 3.11 or newer ($PY is $("$PY" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
# A path in a .pth file rather than setuptools' import finder, which costs every torpor command ~11 ms of
# start-up; setuptools calls that mode transitional, so the default mode stays the fallback.
.venv/bin/pip install -q -e '.[dev]' --config-settings editable_mode=compat 2>/dev/null ||
    .venv/bin/pip install -q -e '.[dev]'
# Bytecode now, as a wheel install would have it: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) every
# torpor command and host agent would otherwise compile its modules from source each time it starts.
.venv/bin/python -m compileall -q torpor >/dev/null
echo "torpor setup: done; torpor is .venv/bin/torpor"
