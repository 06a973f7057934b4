"""Our own exports (qcow2.bz2, vhd.bz2, ova, hyperv.vhd.zip written by systemvm.export.formats and
published with sha512sum.txt and metadata.ini) seed into an empty directory with CloudStack's layout and
keys, and twice with -F alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from systemvm import naming
from systemvm.export import publish
from systemvm.export.formats import hyperv, ova, qcow2, vhd
from systemvm.seed.install import SeedRequest, parse_properties, seed
from tests.unit.test_seed_support import MIB, cloudstack_expected_properties, make_raw, matches, snapshot

pytestmark = pytest.mark.e2e
VERSION = "4.20.0"
HYPERVISOR_OF = {
    "qcow2": ("kvm", "qcow2"),
    "vhd": ("xenserver", "vhd"),
    "ova": ("vmware", "ova"),
    "hyperv": ("hyperv", "vhd"),  # cloud-install-sys-tmplt -h hyperv: extension vhd, the zip unpacked
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports")
    raw = make_raw(out / "disk.raw", 16 * MIB)
    digests = {}
    for fmt in ("qcow2", "vhd", "ova", "hyperv"):
        target = out / naming.export_name(VERSION, "amd64", fmt)
        if fmt == "qcow2":
            qcow2.write_qcow2(raw, out / "disk.qcow2")
            publish.compress_bz2(out / "disk.qcow2", target)
        elif fmt == "vhd":
            vhd.write_dynamic_vhd(raw, out / "disk.vhd", timestamp=1_700_000_000)
            publish.compress_bz2(out / "disk.vhd", target)
        elif fmt == "hyperv":
            entry = target.name.removesuffix(".zip")
            hyperv.write_hyperv_zip(raw, target, out, entry=entry, epoch=1_700_000_000).unlink()
        else:
            ova.write_ova(raw, target, name="systemvm", flavour="amd64", epoch=1_700_000_000)
        digests[target.name] = publish.file_digests(target)
    publish.refresh_listing(out, VERSION, digests, "https://download.example.org/systemvm/4.20")
    assert (out / "sha512sum.txt").is_file() and (out / "metadata.ini").is_file()
    return out


@pytest.mark.parametrize("fmt", ["qcow2", "vhd", "ova", "hyperv"])
def test_each_export_seeds_with_cloudstack_layout(tmp_path: Path, exports: Path, fmt: str) -> None:
    hypervisor, ext = HYPERVISOR_OF[fmt]
    artifact = exports / naming.export_name(VERSION, "amd64", fmt)
    make = lambda **kw: SeedRequest(  # noqa: E731
        mount=tmp_path,
        hypervisor=hypervisor,
        file=str(artifact),
        template_id=201,
        use_db=False,
        progress=False,
        **kw,
    )
    result = seed(make())
    props = parse_properties((result.directory / "template.properties").read_text())
    expected = cloudstack_expected_properties(ext, 201, result.directory / result.filename)
    if ext != "qcow2":  # we read the disk size from the image; CloudStack's script writes the file size here
        expected[f"{ext}.virtualsize"] = expected["virtualsize"] = str(16 * MIB)
    for key, value in expected.items():
        assert matches(value, props[key]), f"{fmt} {key}: expected {value}, got {props[key]}"
    assert props["virtualsize"] == str(16 * MIB)
    names = {p.name for p in result.directory.iterdir()}
    if fmt == "ova":
        assert {n.rsplit(".", 1)[-1] for n in names} == {"ova", "ovf", "mf", "vmdk", "properties"}
    else:
        assert names == {result.filename, "template.properties"}
    first = snapshot(tmp_path)
    seed(make(force=True))
    assert snapshot(tmp_path) == first
