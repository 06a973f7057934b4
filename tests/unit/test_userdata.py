"""System VM user data (systemvm/guest/userdata.py) on a temporary root with recorded cloud-init runs: what
CloudStack 4.22's postinit.sh does for ``userdata=`` (PR 11654), and nothing without the key."""

from __future__ import annotations

import base64
import gzip
import os
import stat
import subprocess
from pathlib import Path

import pytest

from systemvm import contract
from systemvm.guest import userdata
from systemvm.guest.system import Guest

SCRIPT = b"#!/bin/bash\necho 'from the user data' > /tmp/userdata.txt\n"
DISABLED_CFG = "datasource_list: ['CloudStack']\n"


class Runs:
    """A command runner recording argv; ``fail_at`` makes that cloud-init stage exit 1."""

    def __init__(self, fail_at: tuple[str, ...] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if self.fail_at is not None and tuple(argv) == self.fail_at:
            raise subprocess.CalledProcessError(1, argv, output="", stderr="Traceback...\nValueError: bad\n")
        return ""


def packed(data: bytes) -> str:
    """The userdata= value the management server sends: base64 of the gzip of the user data."""
    return base64.b64encode(gzip.compress(data)).decode()


def image_root(tmp_path: Path) -> Path:
    """The parts of the image the step touches, as elements/systemvm-cloud-init leaves them."""
    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (tmp_path / "etc/cloud/cloud.cfg.d/cloudstack.cfg").write_text(DISABLED_CFG)
    (tmp_path / "etc/cloud/cloud-init.disabled").touch()
    (tmp_path / "etc/hostname").write_text("localhost\n")
    (tmp_path / "var/log").mkdir(parents=True)
    return tmp_path


def config(**extra: str) -> contract.BootConfig:
    line = contract.BootArgs(
        role="secstorage", name="s-1-VM", nics=[("169.254.10.20", "255.255.0.0")],
        authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOFake test@harness", extra=extra,
    ).to_cmdline()  # fmt: skip
    return contract.read_config(contract.parse_cmdline(line))


def test_user_data_is_seeded_and_cloud_init_runs_its_four_stages_in_order(tmp_path):
    root = image_root(tmp_path)
    runs = Runs()
    value = packed(SCRIPT)
    assert value.endswith("=") or len(value) % 4 == 0  # base64 padding travels in the raw command line
    assert userdata.run_user_data(Guest(root, run=runs, echo=False), config(userdata=value)) is True
    assert runs.calls == [
        ["cloud-init", "init", "--local"],
        ["cloud-init", "init"],
        ["cloud-init", "modules", "--mode=config"],
        ["cloud-init", "modules", "--mode=final"],
    ]
    seed = root / "var/lib/cloud/seed/nocloud"
    assert (seed / "user-data").read_bytes() == SCRIPT
    assert stat.S_IMODE((seed / "user-data").stat().st_mode) == 0o600
    assert (seed / "meta-data").read_text() == "instance-id: s-1-VM\nlocal-hostname: s-1-VM\n"
    assert stat.S_IMODE((seed / "meta-data").stat().st_mode) == 0o644
    cfg = (root / "etc/cloud/cloud.cfg.d/cloudstack.cfg").read_text()
    assert cfg.startswith("#cloud-config\n")
    assert "datasource_list: ['NoCloud']" in cfg
    assert "network:\n  config: disabled" in cfg
    for setting in ("manage_etc_hosts: false", "manage_resolv_conf: false", "users: []", "ssh_pwauth: false"):
        assert setting in cfg
    assert "  - scripts-user" in cfg and "  - runcmd" in cfg  # what a shell script and runcmd need
    # cloud-init stays switched off for the boot's own units; only this step runs it
    assert (root / "etc/cloud/cloud-init.disabled").exists()
    assert not any(call[0] == "systemctl" for call in runs.calls)
    log = (root / "var/log/cloud.log").read_text()
    assert "stages ran" in log and "from the user data" not in log  # the user data is never logged


def test_the_config_is_yaml_cloud_init_reads(tmp_path):
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(userdata.nocloud_config())
    assert data["datasource_list"] == ["NoCloud"]
    assert data["network"] == {"config": "disabled"}
    assert data["users"] == [] and data["disable_root"] is False
    assert data["cloud_final_modules"][-1] == "power-state-change"


def test_without_the_key_nothing_is_touched(tmp_path):
    root = image_root(tmp_path)
    runs = Runs()
    assert userdata.run_user_data(Guest(root, run=runs, echo=False), config()) is None
    assert runs.calls == []
    assert (root / "etc/cloud/cloud.cfg.d/cloudstack.cfg").read_text() == DISABLED_CFG
    assert not (root / "var/lib/cloud").exists()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not*base64", "not base64"),
        (base64.b64encode(b"plain text, not gzip").decode(), "not gzip"),
        (packed(b"   \n"), "empty"),
    ],
)
def test_a_value_that_does_not_decode_runs_nothing(tmp_path, value, why):
    root = image_root(tmp_path)
    runs = Runs()
    assert userdata.run_user_data(Guest(root, run=runs, echo=False), config(userdata=value)) is False
    assert runs.calls == []
    assert (root / "etc/cloud/cloud.cfg.d/cloudstack.cfg").read_text() == DISABLED_CFG
    assert why in (root / "var/log/cloud.log").read_text()


def test_a_gzip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(userdata, "MAX_USER_DATA", 1024)
    with pytest.raises(userdata.UserDataError, match="larger than 1024"):
        userdata.decode_user_data(packed(b"#!/bin/sh\n" + b"\0" * 4096))


def test_a_failed_stage_stops_the_later_ones(tmp_path):
    root = image_root(tmp_path)
    runs = Runs(fail_at=("cloud-init", "init"))
    assert userdata.run_user_data(Guest(root, run=runs, echo=False), config(userdata=packed(SCRIPT))) is False
    assert runs.calls == [["cloud-init", "init", "--local"], ["cloud-init", "init"]]
    assert "'cloud-init init' failed: exit 1: ValueError: bad" in (root / "var/log/cloud.log").read_text()


def test_a_missing_cloud_init_is_a_logged_failure(tmp_path):
    root = image_root(tmp_path)

    def missing(argv: list[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    guest = Guest(root, run=missing, echo=False)
    assert userdata.run_user_data(guest, config(userdata=packed(SCRIPT))) is False
    assert "No such file or directory" in (root / "var/log/cloud.log").read_text()


def test_without_a_name_the_host_name_is_the_instance(tmp_path):
    root = image_root(tmp_path)
    (root / "etc/hostname").write_text("r-7-VM\n")
    params = {"type": "router", "userdata": packed(SCRIPT)}
    assert userdata.run_user_data(Guest(root, run=Runs(), echo=False), contract.read_config(params)) is True
    meta = (root / "var/lib/cloud/seed/nocloud/meta-data").read_text()
    assert meta == "instance-id: r-7-VM\nlocal-hostname: r-7-VM\n"


def test_the_user_data_file_is_never_readable_by_others_even_while_written(tmp_path, monkeypatch):
    root = image_root(tmp_path)
    modes: list[int] = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        if str(path).endswith("user-data.tmp"):
            modes.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching_open)
    userdata.run_user_data(Guest(root, run=Runs(), echo=False), config(userdata=packed(SCRIPT)))
    assert modes == [0o600]
