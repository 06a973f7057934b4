"""Kernel and system settings.

The sysctl, journald, locale, kernel-module and log rotation settings CloudStack 4.20's own template applies
(../shared/cloudstack-4.20-contract.md, section 6), in the image and in effect on the running VM.
"""

from __future__ import annotations

import pytest

from systemvm import contract
from systemvm.check.appliance.target import run_ok

# CloudStack's sysctl.conf as the running kernel reports it (ip_forward is per role: test_cloudstack_state)
SYSCTL = {
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.all.arp_ignore": "2",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.promote_secondaries": "1",
    "net.ipv4.ip_nonlocal_bind": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "vm.panic_on_oom": "1",
    "net.ipv4.tcp_timestamps": "0",
    "net.ipv4.tcp_tw_reuse": "1",
    "net.core.somaxconn": "65535",
    "net.netfilter.nf_conntrack_max": "1000000",
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    "vm.swappiness": "1",
    "vm.vfs_cache_pressure": "200",
    "vm.min_free_kbytes": "20480",
}
JOURNAL = {"SystemMaxUse": "40M", "SystemMaxFileSize": "10M", "RuntimeMaxUse": "20M"}
CONNTRACK_MODULES = ("nf_conntrack", "nf_conntrack_ftp", "nf_conntrack_pptp", "nf_nat_tftp", "nf_nat_ftp")
LOCALE = "en_US.UTF-8"


def test_default_locale_is_cloudstacks(host) -> None:
    """The default locale is en_US.UTF-8, and it is generated"""
    default = host.file("/etc/default/locale")
    assert default.exists, "/etc/default/locale is missing"
    assert f"LANG={LOCALE}" in default.content_string.split(), default.content_string
    available = run_ok(host, "locale -a").split()
    assert "en_US.utf8" in available, f"en_US.UTF-8 is not generated (locale -a: {available})"


def test_journal_is_bounded_as_cloudstacks(host) -> None:
    """journald keeps at most 40M on disk, 10M per file and 20M in memory"""
    config = run_ok(
        host, "cat /etc/systemd/journald.conf /etc/systemd/journald.conf.d/*.conf 2>/dev/null || true"
    )
    settings = dict(
        line.strip().split("=", 1) for line in config.splitlines() if "=" in line and not line.startswith("#")
    )
    wrong = {k: settings.get(k) for k, v in JOURNAL.items() if settings.get(k) != v}
    assert not wrong, f"journald settings other than CloudStack's: {wrong}"


def test_conntrack_helpers_load_at_boot(host) -> None:
    """The conntrack helper modules (FTP, PPTP, TFTP) are listed to load at boot and exist in the kernel"""
    listed = run_ok(host, "cat /etc/modules-load.d/*.conf /etc/modules 2>/dev/null || true").split()
    missing = [m for m in CONNTRACK_MODULES if m not in listed]
    assert not missing, f"not loaded at boot: {missing}"
    for kernel in run_ok(host, "ls /lib/modules").split():
        script = "; ".join(
            f"modinfo -k {kernel} -F name {m} >/dev/null 2>&1 || echo {m}" for m in CONNTRACK_MODULES
        )
        absent = run_ok(host, script).split()
        assert not absent, f"kernel {kernel} has no module {absent} (pruned?)"


def test_cloud_log_is_rotated(host) -> None:
    """/var/log/cloud.log is rotated (10 files of 10M, copytruncate)"""
    rules = host.file("/etc/logrotate.d/cloud")
    assert rules.exists, "/etc/logrotate.d/cloud is missing"
    words = rules.content_string.split()
    assert "/var/log/cloud.log" in words and "copytruncate" in words
    assert words[words.index("rotate") + 1] == "10" and words[words.index("size") + 1] == "10M"


@pytest.mark.live
def test_kernel_runs_with_cloudstacks_sysctl_settings(host, params) -> None:
    """The running kernel has CloudStack's sysctl settings"""
    # what the boot sets from the command line (rp_filter per role and disable_rp_filter, IPv6 when a NIC
    # has an address) overrides the image's settings
    config = contract.read_config(params.cmdline_args, params.get("hypervisor", "kvm"))
    expected = {**SYSCTL, **contract.role_sysctls(config)}
    expected.pop("net.ipv4.ip_forward")  # per role: test_cloudstack_state
    # one round trip for all keys: a missing key prints an empty value
    script = "; ".join(f'echo "{key}=$(sysctl -n {key} 2>/dev/null)"' for key in expected)
    values = dict(line.split("=", 1) for line in run_ok(host, script).splitlines() if "=" in line)
    wrong = {key: values.get(key) for key, want in expected.items() if values.get(key) != want}
    assert not wrong, f"sysctl values other than CloudStack's: {wrong}"


@pytest.mark.live
def test_conntrack_helpers_are_loaded(host) -> None:
    """The conntrack helper modules are loaded on the running VM"""
    loaded = {line.split()[0] for line in run_ok(host, "cat /proc/modules").splitlines() if line}
    missing = [m for m in CONNTRACK_MODULES if m not in loaded]
    assert not missing, f"not loaded: {missing}"
