"""System VM user data (CloudStack 4.22, PR 11654) with the image's own cloud-init: the guest step
``systemvm.guest.userdata``, as the image installs it in /opt/cloud/lib, run in a chroot of the amd64 image CI
built (``SYSTEMVM_ARTIFACTS``, read-only under an overlay) with a command line carrying ``userdata=``.

The user data is a shell script, as CloudStack's Marvin test ``TestSystemVMUserData`` registers one: it must
have run (the file it writes is there), while cloud-init's units stay disabled and
/etc/cloud/cloud-init.disabled stays in place; a value that is not base64 of gzip runs nothing. cloud-init
sets the host name from the seed's meta-data: the chroot runs in a UTS and a network namespace of its own,
so it renames the namespace, never this host (checked after every run). Needs root;
skips only when ``SYSTEMVM_ARTIFACTS`` is unset or holds a 4.20 image (that line has no user data step).
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.profile import manifest_profile
from tests.e2e import artifacts
from tests.e2e.image_overlay import AMD64_RAW, SYSTEM, amd64_image, overlay

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SCRIPT = '#!/bin/bash\necho "user data ran on $(hostname)" > /tmp/userdata.txt\n'
# What the boot calls, from the image's own copy of the guest package (standard library only).
RUN = (
    "import sys; sys.path.insert(0, '/opt/cloud/lib'); "
    "from systemvm import contract; from systemvm.guest.system import Guest; "
    "from systemvm.guest import userdata; "
    "config = contract.read_config(contract.parse_cmdline(open(contract.CMDLINE_PATH).read())); "
    "print(userdata.run_user_data(Guest(echo=False, program='cloud-postinit'), config))"
)
UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if AMD64_RAW is None:
        pytest.skip("SYSTEMVM_ARTIFACTS is not set (or holds no amd64 raw disk)")
    manifest = artifacts.manifest("amd64") or {}
    if not manifest_profile(manifest).userdata:
        pytest.skip(f"a CloudStack {manifest_profile(manifest).line} image: its boot runs no user data")
    with amd64_image(tmp_path_factory) as lower:
        yield lower


def run_with_cmdline(root: Path, extra: dict[str, str]) -> str:
    line = contract.BootArgs(
        role="secstorage", name="s-7-VM", nics=[("169.254.3.4", "255.255.0.0")],
        authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOFake test@harness", extra=extra,
    ).to_cmdline()  # fmt: skip
    (root / contract.CMDLINE_PATH.lstrip("/")).write_text(line + "\n")
    host_name = socket.gethostname()
    done = subprocess.run(
        ["unshare", "--uts", "--net", "--fork", "chroot", str(root), "python3", "-I", "-c", RUN],
        capture_output=True, text=True,
    )  # fmt: skip
    assert socket.gethostname() == host_name, "cloud-init in the chroot renamed this host"
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def unit_states(root: Path) -> dict[str, str]:
    return {
        unit: subprocess.run(
            ["chroot", str(root), "systemctl", "is-enabled", unit], capture_output=True, text=True
        ).stdout.strip()
        for unit in UNITS
    }


def test_the_user_data_runs_through_the_images_cloud_init_once(image_root: Path, tmp_path: Path) -> None:
    value = base64.b64encode(gzip.compress(SCRIPT.encode())).decode()
    with overlay(image_root, tmp_path, SYSTEM) as root:
        assert run_with_cmdline(root, {"userdata": value}) == "True", (root / "var/log/cloud.log").read_text()
        ran = root / "tmp/userdata.txt"
        assert ran.is_file(), "cloud-init's scripts-user did not run the user data script"
        assert ran.read_text().startswith("user data ran on ")
        assert (root / "var/lib/cloud/seed/nocloud/user-data").read_text() == SCRIPT
        # the instance cloud-init made is the command line's name
        instance = json.loads((root / "run/cloud-init/instance-data.json").read_text())
        assert instance["v1"]["instance_id"] == "s-7-VM"
        assert (root / "etc/cloud/cloud-init.disabled").exists()
        assert set(unit_states(root).values()) == {"disabled"}
        assert "cloud-init's stages ran" in (root / "var/log/cloud.log").read_text()


def test_a_value_that_is_not_base64_of_gzip_runs_nothing(image_root: Path, tmp_path: Path) -> None:
    value = base64.b64encode(SCRIPT.encode()).decode()  # not gzipped
    with overlay(image_root, tmp_path, SYSTEM) as root:
        assert run_with_cmdline(root, {"userdata": value}) == "False"
        assert not (root / "tmp/userdata.txt").exists()
        assert not (root / "var/lib/cloud/seed/nocloud").exists()
        config = (root / "etc/cloud/cloud.cfg.d/cloudstack.cfg").read_text()
        assert "datasource_list: ['CloudStack']" in config


def test_without_user_data_cloud_init_is_left_alone(image_root: Path, tmp_path: Path) -> None:
    with overlay(image_root, tmp_path, SYSTEM) as root:
        assert run_with_cmdline(root, {}) == "None"
        assert not (root / "var/lib/cloud/instance").exists()
