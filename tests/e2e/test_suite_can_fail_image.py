"""Each appliance check that needs no running system fails on an image broken for it.

The built raw disk (``SYSTEMVM_ARTIFACTS`` = artifacts/<version>) is mounted read-only; every case gets
its own overlay on it, breaks one thing inside (a package removed, a foreign apt source, haproxy's
configuration garbled, charon deleted, sshd opened to passwords...) and runs the suite through testinfra's
chroot backend. The unbroken image must pass the same checks, so each failure comes from its break.
Needs root (loop device, mounts); skips only when ``SYSTEMVM_ARTIFACTS`` is unset.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.check.report import parse_junit
from systemvm.check.suite import PACKAGES_DIR, run_checks
from systemvm.defaults import DEFAULT_VERSION
from systemvm.profile import profile_for
from tests.e2e import artifacts
from tests.e2e.image_overlay import amd64_image, overlay

pytestmark = [pytest.mark.e2e, pytest.mark.root]

FLAVOUR = "amd64"  # the image of tests.e2e.image_overlay.amd64_image
PROC_AND_DEV = ("proc", "dev")  # what the image checks' tools read in the chroot

# Checks that run against an image (the others need a running VM and skip there)
IMAGE_CHECKS = {
    "test_every_listed_package_is_installed_at_the_recorded_version",
    "test_no_package_from_outside_debian",
    "test_installed_kernel_is_the_flavours",
    "test_haproxy_is_installed",
    "test_haproxy_accepts_the_shipped_configuration",
    "test_haproxy_is_not_started_at_boot_by_the_image",
    "test_charon_is_present",
    "test_ipsec_version_answers",
    "test_required_plugin_libraries_are_installed",
    "test_ipsec_service_is_enabled_only_where_the_role_needs_it",
    "test_sshd_is_configured_for_3922_and_keys_only",
    "test_sshd_accepts_what_cloudstacks_java_client_sends",
    "test_scp_binary_is_present",
    "test_programs_cloudstack_scripts_run_are_present",
    "test_the_boot_programs_import_the_installed_guest_package",
    "test_cloudstack_config_directory_exists",
    "test_release_line_parses_as_cloudstack_reads_it",
    "test_default_locale_is_cloudstacks",
    "test_journal_is_bounded_as_cloudstacks",
    "test_conntrack_helpers_load_at_boot",
    "test_cloud_log_is_rotated",
    "test_release_line_names_the_images_version_of_its_cloudstack_line",
    "test_scripts_signature_is_one_digest_of_the_kept_scripts_in_the_lines_algorithm",
    "test_cloud_init_is_installed_and_disabled_as_cloudstack_leaves_it",
}
SIG = "/var/cache/cloud/cloud-scripts-signature"
TGZ = "/usr/share/cloud/cloud-scripts.tgz"
# The other CloudStack line's version and digest command: what a management server of the image's line
# would never accept (the image under test is the default 4.22 one, or a 4.20 one).
IMAGE_IS_422 = profile_for(artifacts.version() or DEFAULT_VERSION).line == "4.22"
OTHER_VERSION, OTHER_DIGEST = ("4.20.0", "md5sum") if IMAGE_IS_422 else ("4.22.0", "sha512sum")

FAKE_PACKAGE = (
    "mkdir -p /tmp/fake/DEBIAN && printf 'Package: vendor-tool\\nVersion: 1.0\\nArchitecture: all\\n"
    "Maintainer: someone <a@example.com>\\nDescription: not from Debian\\n' > /tmp/fake/DEBIAN/control && "
    "dpkg-deb --build /tmp/fake /tmp/vendor-tool.deb >/dev/null && dpkg -i /tmp/vendor-tool.deb >/dev/null "
    "&& rm -rf /tmp/fake /tmp/vendor-tool.deb"
)

# case -> (command run in the chroot to break it, params overrides, checks expected to fail)
CASES: dict[str, tuple[str, dict, set[str]]] = {
    "package removed": (
        "dpkg -r --force-depends tcpdump >/dev/null 2>&1",
        {},
        {"test_every_listed_package_is_installed_at_the_recorded_version"},
    ),
    "foreign apt source": (
        "echo 'deb http://packages.example.com/debian bookworm main' > /etc/apt/sources.list.d/vendor.list",
        {},
        {"test_no_package_from_outside_debian"},
    ),
    "package not from the build": (FAKE_PACKAGE, {}, {"test_no_package_from_outside_debian"}),
    "kernel of the other flavour": ("true", {"flavour": "i386"}, {"test_installed_kernel_is_the_flavours"}),
    "haproxy removed": (
        "dpkg -r --force-depends haproxy >/dev/null 2>&1",
        {},
        {
            "test_haproxy_is_installed",
            "test_haproxy_accepts_the_shipped_configuration",
            "test_every_listed_package_is_installed_at_the_recorded_version",
        },
    ),
    "haproxy configuration garbled": (
        "echo 'frontend broken\\n    bind :notaport\\n    no-such-keyword 1' >> /etc/haproxy/haproxy.cfg",
        {},
        {"test_haproxy_accepts_the_shipped_configuration"},
    ),
    "haproxy enabled in the image": (
        "systemctl enable haproxy >/dev/null 2>&1",
        {},
        {"test_haproxy_is_not_started_at_boot_by_the_image"},
    ),
    "charon deleted": ("rm -f /usr/lib/ipsec/charon", {}, {"test_charon_is_present"}),
    "ipsec command broken": ("chmod a-x /usr/sbin/ipsec", {}, {"test_ipsec_version_answers"}),
    "MODP plugin deleted": (
        "rm -f /usr/lib/ipsec/plugins/libstrongswan-gmp.so",
        {},
        {"test_required_plugin_libraries_are_installed"},
    ),
    "ipsec enabled in the image": (
        "systemctl enable strongswan-starter >/dev/null 2>&1",
        {},
        {"test_ipsec_service_is_enabled_only_where_the_role_needs_it"},
    ),
    "guest module deleted": (
        "rm /opt/cloud/lib/systemvm/guest/channels.py",
        {},
        {"test_the_boot_programs_import_the_installed_guest_package"},
    ),
    "sshd on 22 with passwords": (
        "printf 'Port 22\\nPasswordAuthentication yes\\n' > /etc/ssh/sshd_config.d/00-broken.conf",
        {},
        {"test_sshd_is_configured_for_3922_and_keys_only"},
    ),
    "default locale C": (
        "printf 'LANG=C.UTF-8\\n' > /etc/default/locale",
        {},
        {"test_default_locale_is_cloudstacks"},
    ),
    "journal unbounded": (
        "rm -f /etc/systemd/journald.conf.d/*.conf",
        {},
        {"test_journal_is_bounded_as_cloudstacks"},
    ),
    "a conntrack helper pruned": (
        "find /lib/modules -name 'nf_nat_tftp.ko*' -delete",
        {},
        {"test_conntrack_helpers_load_at_boot"},
    ),
    "cloud.log never rotated": ("rm -f /etc/logrotate.d/cloud", {}, {"test_cloud_log_is_rotated"}),
    "release of another line": (
        f"echo 'Cloudstack Release {OTHER_VERSION} 2026-01-01' > /etc/cloudstack-release",
        {"version": OTHER_VERSION},  # the suite told so too: the image's line comes from its manifest
        {"test_release_line_names_the_images_version_of_its_cloudstack_line"},
    ),
    "signature in the other line's digest": (
        f"{OTHER_DIGEST} {TGZ} | cut -d' ' -f1 > {SIG}",
        {},
        {"test_scripts_signature_is_one_digest_of_the_kept_scripts_in_the_lines_algorithm"},
    ),
    "signature of other scripts": (
        f"echo >> {TGZ}",
        {},
        {"test_scripts_signature_is_one_digest_of_the_kept_scripts_in_the_lines_algorithm"},
    ),
    "signature with the file name": (
        f'echo "$(cat {SIG})  {TGZ}" > /tmp/s && mv /tmp/s {SIG}',
        {},
        {"test_scripts_signature_is_one_digest_of_the_kept_scripts_in_the_lines_algorithm"},
    ),
    "cloud-init enabled": (
        "rm -f /etc/cloud/cloud-init.disabled && systemctl enable cloud-init.service >/dev/null 2>&1",
        {},
        {"test_cloud_init_is_installed_and_disabled_as_cloudstack_leaves_it"},
    ),
    "cloud-init datasource not CloudStack's": (
        "sed -i 's/CloudStack/NoCloud/' /etc/cloud/cloud.cfg.d/cloudstack.cfg",
        {},
        {"test_cloud_init_is_installed_and_disabled_as_cloudstack_leaves_it"},
    ),
    "cloud-init removed": (
        "dpkg -r --force-depends cloud-init >/dev/null 2>&1",
        {},
        {
            "test_cloud_init_is_installed_and_disabled_as_cloudstack_leaves_it",
            "test_every_listed_package_is_installed_at_the_recorded_version",
            "test_programs_cloudstack_scripts_run_are_present",
        },
    ),
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with amd64_image(tmp_path_factory) as lower:
        yield lower


def _check_image(root: Path, work: Path, label: str, overrides: dict) -> dict[str, tuple[str, str]]:
    """Run the suite on the chroot; {check: (result, message)} of the checks that ran."""
    version_dir = artifacts.version_dir()
    assert version_dir is not None
    params = {
        "target": f"chroot://{root}",
        "kind": "image",
        "role": "secstorage",
        "hypervisor": "kvm",
        "flavour": FLAVOUR,
        "version": version_dir.name,
        "manifest": str(naming.manifest(version_dir.parent, version_dir.name, FLAVOUR)),
        "packages_dir": str(PACKAGES_DIR),
        **overrides,
    }
    junit = run_checks(params, work, label)
    summary = parse_junit(junit)
    return {c.name: (c.result, c.message) for c in summary.checks if c.result != "skipped"}


@pytest.fixture(scope="module")
def unbroken(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    work = tmp_path_factory.mktemp("unbroken")
    with overlay(image_root, work, PROC_AND_DEV) as root:
        return _check_image(root, work, "unbroken", {})


def test_the_unbroken_image_passes_every_image_check(unbroken: dict[str, tuple[str, str]]) -> None:
    assert set(unbroken) == IMAGE_CHECKS
    failed = {name: message for name, (result, message) in unbroken.items() if result != "passed"}
    assert not failed, f"the unbroken image fails: {failed}"


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_image_fails_the_check(
    case: str, image_root: Path, unbroken: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """The targeted checks fail because of the break: they passed on the unbroken image, or fail now with
    another message; no other check changes its verdict."""
    command, overrides, expected = CASES[case]
    with overlay(image_root, tmp_path, PROC_AND_DEV) as root:
        subprocess.run(["chroot", str(root), "/bin/sh", "-c", command], check=True)
        results = _check_image(root, tmp_path, case.replace(" ", "-"), overrides)
    failed = {name for name, (result, _) in results.items() if result != "passed"}
    missed = sorted(expected - failed)
    assert not missed, f"{case}: these checks did not fail: {missed}"
    for name in expected:
        assert unbroken[name][0] == "passed" or unbroken[name][1] != results[name][1], (
            f"{case}: {name} fails the same way on the unbroken image: {results[name][1]}"
        )
    changed = sorted(n for n in failed - expected if unbroken[n][0] == "passed")
    assert not changed, f"{case}: unrelated checks failed too: {changed}"
