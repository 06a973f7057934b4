"""Packages.

Every package of the data file is installed at the version the build manifest recorded, nothing comes
from outside Debian, and the kernel is the flavour's.
"""

from __future__ import annotations

import pytest

from systemvm.check.appliance.target import read_package_list, run_ok

# flavour -> what `uname -m` says and the suffix of the flavour's kernel image
KERNEL_OF = {
    "amd64": ("x86_64", ("-amd64",)),
    "i386": ("i686", ("-686-pae", "-686")),
    "arm64": ("aarch64", ("-arm64",)),
}
DEBIAN_ARCHIVE_HOSTS = ("deb.debian.org", "security.debian.org", "ftp.debian.org", "debian.org")


def _installed(host) -> dict[str, str]:
    out = run_ok(host, r"dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\t${Version}\n'")
    installed = {}
    for line in out.splitlines():
        name, status, version = (line.split("\t") + ["", ""])[:3]
        if status.strip() == "ii":
            installed[name] = version
    return installed


def _manifest_packages(params) -> dict[str, str]:
    manifest = params.manifest()
    recorded = manifest.get("packages")
    assert isinstance(recorded, dict) and recorded, "the build manifest records no 'packages' {name: version}"
    return recorded


def test_every_listed_package_is_installed_at_the_recorded_version(host, params) -> None:
    """Every listed package is installed at the version the build recorded"""
    wanted = read_package_list(params["packages_dir"], params["flavour"])
    recorded = _manifest_packages(params)
    installed = _installed(host)
    missing = [name for name in wanted if name not in installed]
    unrecorded = [name for name in wanted if name in installed and name not in recorded]
    drifted = [
        f"{name} {installed[name]} (build recorded {recorded[name]})"
        for name in wanted
        if name in installed and name in recorded and installed[name] != recorded[name]
    ]
    problems = []
    if missing:
        problems.append(f"not installed: {', '.join(missing)}")
    if unrecorded:
        problems.append(f"not in the build manifest: {', '.join(unrecorded)}")
    if drifted:
        problems.append(f"other version: {', '.join(drifted)}")
    assert not problems, "; ".join(problems)


def test_no_package_from_outside_debian(host, params) -> None:
    """No package from outside Debian"""
    sources = run_ok(
        host,
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources "
        "2>/dev/null || true",
    )
    foreign = []
    for line in sources.splitlines():
        words = line.split("#", 1)[0].split()
        uris = [w for w in words if "://" in w]
        foreign += [u for u in uris if not any(h in u.split("/")[2] for h in DEBIAN_ARCHIVE_HOSTS)]
    assert not foreign, f"apt sources outside Debian: {', '.join(foreign)}"
    recorded = _manifest_packages(params)
    installed = _installed(host)
    if len(recorded) > len(read_package_list(params["packages_dir"], params["flavour"])):
        # the manifest holds the whole installed set: anything else was added after the build
        extra = sorted(set(installed) - set(recorded))
        assert not extra, f"installed but not part of the build: {', '.join(extra)}"


@pytest.mark.live
def test_running_kernel_is_the_flavours(host, params) -> None:
    """The running kernel is the flavour's (uname -m)"""
    machine = run_ok(host, "uname -m").strip()
    expected = KERNEL_OF[params["flavour"]][0]
    assert machine == expected, f"uname -m says {machine}; the {params['flavour']} flavour runs {expected}"


def test_installed_kernel_is_the_flavours(host, params) -> None:
    """The installed kernel image is the flavour's"""
    kernels = run_ok(host, "ls /boot").split()
    images = [k for k in kernels if k.startswith("vmlinuz-")]
    assert images, "no kernel in /boot"
    suffixes = KERNEL_OF[params["flavour"]][1]
    wrong = [k for k in images if not k.endswith(suffixes)]
    assert not wrong, f"kernels not of the {params['flavour']} flavour: {', '.join(wrong)}"


# Programs CloudStack's own scripts run on a system VM (contract sections 4 and 7): the live patch
# (zip, unzip, tar, md5sum in 4.20, sha512sum in 4.22: PR 11134), 4.22's user data step (base64, gunzip,
# cloud-init: PR 11654), template download and unpack on the storage VM (bzip2, bunzip2, gunzip,
# file), ssvm-check.sh and router_proxy.sh (ping, route, nslookup, socat), router address announcements
# (arping), the patch copy (scp) and the agent (java, keytool).
CLOUDSTACK_PROGRAMS = (
    "zip", "unzip", "tar", "md5sum", "sha512sum", "base64", "cloud-init", "bzip2", "bunzip2", "gunzip",
    "file", "ping", "arping", "route",
    "nslookup", "socat", "scp", "java", "keytool", "ipcalc", "uuid", "lsof", "traceroute",
)  # fmt: skip


def test_programs_cloudstack_scripts_run_are_present(host) -> None:
    """Every program CloudStack's scripts call on a system VM is installed"""
    missing = [name for name in CLOUDSTACK_PROGRAMS if not host.exists(name)]
    assert not missing, f"not on the image: {', '.join(missing)} (CloudStack's scripts call them)"


# The image's own programs and the systemvm.guest modules each imports (element systemvm-guest installs
# the package in /opt/cloud/lib/systemvm/; tests/unit/test_guest_layout.py checks the same on its copy).
GUEST_PROGRAMS = {
    "/opt/cloud/bin/cloud-early-config": "early_config",
    "/opt/cloud/bin/systemvm-postinit": "postinit",
}


def test_the_boot_programs_import_the_installed_guest_package(host) -> None:
    """The boot and patch programs import systemvm.guest from /opt/cloud/lib with the image's python3 alone"""
    for program, module in GUEST_PROGRAMS.items():
        file = host.file(program)
        assert file.exists and file.mode & 0o111, f"{program} is missing or not executable"
        # -I -S: the standard library and /opt/cloud/lib only, as the guest code promises
        code = (
            "import sys; sys.path.insert(0, '/opt/cloud/lib'); "
            f"from systemvm.guest import {module}; import systemvm.contract; "
            f"print({module}.__file__, systemvm.contract.__file__)"
        )
        where = run_ok(host, f'python3 -I -S -c "{code}"').split()
        expected = [f"/opt/cloud/lib/systemvm/guest/{module}.py", "/opt/cloud/lib/systemvm/contract.py"]
        assert where == expected, f"{program}: systemvm.guest.{module} comes from {where}"
