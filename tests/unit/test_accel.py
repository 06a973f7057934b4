"""Domain type detection from recorded host files (a fake /dev/kvm, cpuinfo and /sys/module trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm.boot.hypervisors import accel
from systemvm.errors import UserError

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx ept sse2\n"
NO_VIRT = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\n"


def host(tmp_path: Path, cpuinfo: str, modules: tuple[str, ...], dev_kvm: bool = True) -> dict[str, Path]:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    sys_module = tmp_path / "module"
    for name in ("kvm", *modules):
        (sys_module / name).mkdir(parents=True)
    dev = tmp_path / "kvm"
    if dev_kvm:
        dev.write_bytes(b"")
    return {"dev_kvm": dev, "cpuinfo": tmp_path / "cpuinfo", "sys_module": sys_module}


def test_kvm_when_device_cpu_flags_and_vendor_module_are_present(tmp_path: Path) -> None:
    probe = accel.probe_domain_type(**host(tmp_path, INTEL, ("kvm_intel",)))
    assert probe.domain_type == "kvm"
    assert "kvm_intel" in probe.reason


def test_tcg_without_vmx_or_svm(tmp_path: Path) -> None:
    probe = accel.probe_domain_type(**host(tmp_path, NO_VIRT, ("kvm_intel",)))
    assert probe.domain_type == "qemu"
    assert "neither vmx nor svm" in probe.reason


def test_tcg_when_only_pvm_backs_dev_kvm(tmp_path: Path) -> None:
    probe = accel.probe_domain_type(**host(tmp_path, INTEL, ("kvm_pvm",)))
    assert probe.domain_type == "qemu"
    assert "kvm_pvm" in probe.reason


def test_tcg_without_dev_kvm(tmp_path: Path) -> None:
    probe = accel.probe_domain_type(**host(tmp_path, INTEL, ("kvm_amd",), dev_kvm=False))
    assert probe.domain_type == "qemu"
    assert "does not exist" in probe.reason


def test_svm_counts_like_vmx() -> None:
    assert accel.cpu_has_virt_extensions("flags\t: fpu svm sse2\n")
    assert not accel.cpu_has_virt_extensions("flags\t: fpu sse2\nbugs\t: svm\n")


def test_option_beats_environment_beats_detection() -> None:
    assert accel.choose_domain_type("KVM", {"SYSTEMVM_DOMAIN_TYPE": "qemu"}).domain_type == "kvm"
    probe = accel.choose_domain_type(None, {"SYSTEMVM_DOMAIN_TYPE": "qemu"})
    assert (probe.domain_type, probe.reason) == ("qemu", "set by SYSTEMVM_DOMAIN_TYPE")


def test_bad_override_is_one_line_user_error() -> None:
    with pytest.raises(UserError, match="unknown domain type 'xen'.*use kvm or qemu"):
        accel.choose_domain_type("xen", {})


def test_this_host_is_detected_without_error() -> None:
    probe = accel.probe_domain_type()
    assert probe.domain_type in accel.DOMAIN_TYPES
    assert probe.reason


def test_dev_kvm_group_is_given_back_to_kvm(tmp_path: Path) -> None:
    import grp
    import os

    from systemvm.boot.hypervisors import libvirtd

    if os.geteuid() != 0:
        pytest.skip("only root can chgrp")
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    kvm_gid = grp.getgrnam("kvm").gr_gid
    os.chown(device, -1, 0)
    assert libvirtd.restore_dev_kvm_group(device) is True
    assert device.stat().st_gid == kvm_gid
    assert libvirtd.restore_dev_kvm_group(device) is False  # nothing to do the second time
