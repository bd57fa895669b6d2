#!/usr/bin/env bash
# Install the system packages and the project venv (.venv) that cgsnap needs.
# Idempotent: a second run only checks.  Used by `make bootstrap`.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(libvirt-dev pkg-config libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
          qemu-system-x86 qemu-utils qemu-guest-agent busybox-static e2fsprogs)
PY=${PYTHON:-python3}

need=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    echo "bootstrap: apt-get install ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

stamp=.venv/.cgsnap-installed
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] \
        || [ test-requirements.txt -nt "$stamp" ] || [ setup.cfg -nt "$stamp" ] \
        || [ upper-constraints.txt -nt "$stamp" ]; then
    echo "bootstrap: installing python packages into .venv" >&2
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -c upper-constraints.txt -r requirements.txt -r test-requirements.txt
    # without build isolation: the build works on the venv's own setuptools
    .venv/bin/pip install -q --no-deps --no-build-isolation -e .
    touch "$stamp"
fi
