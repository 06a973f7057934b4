"""Issue 7's done-when on the real thing: each export of the build seeds into an empty directory with
CloudStack's layout, its checksum verified against the build's sha512sum.txt, its virtual size read from the
image itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm.seed.install import SeedRequest, parse_properties, seed
from tests.e2e import artifacts

pytestmark = pytest.mark.e2e
HYPERVISOR_OF = {"qcow2": "kvm", "vhd": "xenserver", "ova": "vmware"}
TWO_MIB = 2 * 2**20


@pytest.mark.parametrize("fmt", ["qcow2", "vhd", "ova"])
def test_real_export_seeds_into_an_empty_directory(fmt: str, tmp_path: Path) -> None:
    artifact = artifacts.export("amd64", fmt)
    manifest = artifacts.manifest("amd64")
    if artifact is None or manifest is None:
        pytest.skip("SYSTEMVM_ARTIFACTS is not set (invoke ci sets it after building)")
    result = seed(
        SeedRequest(mount=tmp_path, hypervisor=HYPERVISOR_OF[fmt], file=str(artifact), template_id=3,
                    use_db=False, progress=False)
    )  # fmt: skip
    assert result.directory == tmp_path / "template" / "tmpl" / "1" / "3"
    props = parse_properties((result.directory / "template.properties").read_text())
    disk_bytes = manifest["sizes"]["raw_disk_virtual_bytes"]
    expected_virtual = -(-disk_bytes // TWO_MIB) * TWO_MIB if fmt == "vhd" else disk_bytes
    assert int(props["virtualsize"]) == expected_virtual
    assert props["id"] == "3" and props[fmt] == "true"
    assert props["checksum"] == manifest["artifacts"][artifact.name]["sha512"]
    assert (result.directory / props["filename"]).is_file()
    if fmt == "ova":
        kinds = {p.suffix for p in result.directory.iterdir()}
        assert {".ova", ".ovf", ".mf", ".vmdk", ".properties"} <= kinds
