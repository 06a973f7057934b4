#!/bin/bash
# Install what building, exporting, booting and testing need on a Debian 12 host (run as root).
# Safe to run again: apt and pip skip what is already there.
set -eu -o pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "error: setup.sh installs Debian packages: run it as root (sudo ./setup.sh)" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2046
apt-get install -y -q --no-install-recommends $(sed -e 's/#.*//' host-packages.txt)

# Debian's own python3 marks its site-packages as system-managed (PEP 668): this host is set up for the
# project, so its requirements go beside Debian's packages (pip installs them under /usr/local).
python3 -m pip install -q --disable-pip-version-check --break-system-packages -e '.[test]'

# The arm64 flavour's programs run through qemu-user: where nothing registered its interpreter with the
# kernel at boot (no systemd-binfmt, as in containers), mount binfmt_misc and register it (F flag).
python3 -m systemvm.tasks doctor --phases build --flavour arm64 --register-binfmt >/dev/null \
    || echo "setup: arm64 builds cannot run here yet: see 'invoke doctor --flavour arm64'" >&2

# apt-cacher-ng's package starts a system instance where systemd runs; builds run their own.
if pgrep -x apt-cacher-ng >/dev/null && [ -f /run/apt-cacher-ng/pid ]; then
    kill "$(cat /run/apt-cacher-ng/pid)" 2>/dev/null || true
fi
# nfs-ganesha's package enables a host-wide NFS server where systemd runs; the network lab runs its own.
if [ -d /run/systemd/system ]; then
    systemctl disable --now nfs-ganesha.service nfs-ganesha-lock.service >/dev/null 2>&1 || true
fi
echo "setup: done"
