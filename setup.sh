#!/usr/bin/env bash
# Set up torpor on a Debian/Ubuntu machine: QEMU, the OpenSSH client and the tools the default guest is built with (system
# packages), then torpor itself in a virtualenv at .venv.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(qemu-system-x86 qemu-utils openssh-client dpkg apt python3-venv)
echo "torpor setup: installing system packages: ${packages[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "torpor setup: torpor needs Python 3.11 or newer ($PY is $("$PY" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
echo "torpor setup: done; torpor is .venv/bin/torpor"
