"""Boot health.

No failed units, the boot finished, the command line the harness sent arrived, the hostname and release
are ours; uptime and boot time go into the report.
"""

from __future__ import annotations

import pytest

from systemvm.check.appliance.target import boot_epoch, run_ok

pytestmark = pytest.mark.live

BOOT_DONE = "/var/cache/cloud/boot_up_done"


def test_no_failed_systemd_units(host) -> None:
    """No systemd unit failed"""
    failed = run_ok(host, "systemctl list-units --failed --plain --no-legend --no-pager").strip()
    assert not failed, f"failed units: {failed}"


def test_boot_finished(host) -> None:
    """The boot finished (/var/cache/cloud/boot_up_done exists)"""
    assert host.file(BOOT_DONE).exists, f"{BOOT_DONE} is missing"


def test_cmdline_is_the_one_the_harness_sent(host, params) -> None:
    """/var/cache/cloud/cmdline holds the command line the harness sent"""
    cmdline = host.file("/var/cache/cloud/cmdline")
    assert cmdline.exists, "/var/cache/cloud/cmdline is missing"
    got = cmdline.content_string.split()
    expected = (params.get("cmdline") or "").split()
    assert expected, "the harness passed no command line to compare"
    missing = [w for w in expected if w not in got]
    assert not missing, f"/var/cache/cloud/cmdline lacks {missing}"


def test_hostname_is_the_name_sent(host, params) -> None:
    """The hostname is the name= the harness sent"""
    hostname = run_ok(host, "hostname").strip()
    assert hostname == params["name"], f"hostname is {hostname}; the command line said name={params['name']}"


def test_release_file_names_our_version(host, params) -> None:
    """/etc/cloudstack-release names our version"""
    release = host.file("/etc/cloudstack-release")
    assert release.exists, "/etc/cloudstack-release is missing"
    text = release.content_string.strip()
    assert params.get("version"), "the suite was given no expected version"
    assert params["version"] in text, (
        f"/etc/cloudstack-release says '{text}'; expected version {params['version']}"
    )


def test_boot_time_and_uptime(host, record_property) -> None:
    """Boot time and uptime are recorded"""
    uptime = float(run_ok(host, "cat /proc/uptime").split()[0])
    record_property("uptime_seconds", f"{uptime:.1f}")
    done = host.file(BOOT_DONE)
    assert done.exists, f"{BOOT_DONE} is missing: the boot has not finished"
    boot_seconds = done.mtime.timestamp() - boot_epoch(host)
    record_property("boot_seconds", f"{boot_seconds:.1f}")
    assert 0 <= boot_seconds <= uptime + 2, (
        f"boot_up_done is dated {boot_seconds:.0f} s after boot, uptime {uptime}"
    )
