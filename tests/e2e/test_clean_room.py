"""A fresh Debian 12 host with exactly host-packages.txt: setup.sh, then doctor and a real bootstrap for
each flavour's architecture. CI's own machine had packages installed by hand once; this root never had.

Costs (measured on the CI machine): about 4 min to make the Debian root and 2 min for setup.sh in it, when
the package list, the mirror, setup.sh or pyproject.toml changed; otherwise the cached root is unpacked and
only doctor and the three bootstrap trials run (amd64 and i386 about 14 s each, arm64 78 s: its essential
packages configured through qemu-user, which setup.sh registered with the kernel).
"""

from __future__ import annotations

import os

import pytest

from systemvm.cleanroom import check_host_packages

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root"),
]


def test_a_fresh_debian_12_host_with_host_packages_has_everything() -> None:
    result = check_host_packages(["amd64", "i386", "arm64"])
    assert result.doctor_rc == 0, result.doctor_output
    assert "doctor: this host has everything the phases above need" in result.doctor_output
    assert result.trials == {"amd64": "ok", "i386": "ok", "arm64": "ok"}, result.trials
    assert result.ok
