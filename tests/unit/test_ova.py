"""OVA writer and checker: schema validity, determinism, independent read-back, corrupted archives."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from systemvm import cli
from systemvm.errors import UserError
from systemvm.export.formats.ova import OvaError, check_ova, member_names, ova_virtual_size, write_ova
from systemvm.export.formats.vmdk import GRAIN, VmdkError, check_stream_vmdk

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "ovf"
EPOCH = 1_700_000_000
NAME = "svmt-unit"
MiB = 1 << 20


def make_raw(path: Path, size: int, seed: int = 7) -> Path:
    """A sparse raw disk with data in a few places: first sector, a grain-table boundary, a partial grain."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in (
            (0, 512),
            (3 * MiB + 100, 200_000),
            (32 * MiB - 1000, 5000),
            (size - 4096, 4096),
        ):
            f.seek(offset)
            f.write(rng.randbytes(length))
        f.seek(40 * MiB)
        f.write(b"systemvm" * 8192)  # compressible run
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Not a multiple of the 64 KiB grain: the last grain is partial.
    return make_raw(tmp_path_factory.mktemp("raw") / "disk.raw", 48 * MiB + 8192)


@pytest.fixture(scope="module")
def ova(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ova") / "t.ova"
    write_ova(raw, out, name=NAME, flavour="amd64", epoch=EPOCH, schema_dir=SCHEMAS)
    return out


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def repack(items: list[tuple[str, bytes]], out: Path, fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(out, "w", format=fmt) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), EPOCH
            tar.addfile(info, io.BytesIO(data))
    return out


def manifest_for(items: list[tuple[str, bytes]]) -> bytes:
    return "".join(f"SHA256({n})= {hashlib.sha256(d).hexdigest()}\n" for n, d in items).encode()


def extract_vmdk(ova: Path, directory: Path) -> Path:
    vmdk_name = member_names(NAME)[2]
    data = dict((m.name, d) for m, d in members(ova))[vmdk_name]
    path = directory / vmdk_name  # the descriptor names the extent file: keep the member's name
    path.write_bytes(data)
    return path


def test_written_ova_passes_our_checker(ova: Path, raw: Path) -> None:
    info = check_ova(ova, schema_dir=SCHEMAS)
    assert info["members"] == list(member_names(NAME))
    assert info["capacity"] == raw.stat().st_size
    assert info["vmdk"]["version"] == 3
    assert info["vmdk"]["adapter"] == "lsilogic"
    assert info["vmdk_size"] == dict((m.name, m.size) for m, _ in members(ova))[member_names(NAME)[2]]
    assert (info["os_id"], info["os_type"], info["hardware"]) == ("96", "debian10_64Guest", "vmx-13")
    assert ova_virtual_size(ova) == raw.stat().st_size


def test_archive_is_deterministic_ustar(ova: Path) -> None:
    with open(ova, "rb") as f:
        data = f.read()
    for info, _ in members(ova):
        header = data[info.offset : info.offset + 512]
        assert header[257:265] == b"ustar\x0000"
        assert (info.mtime, info.uid, info.gid, info.mode) == (EPOCH, 0, 0, 0o644)


def test_ovf_content(ova: Path, raw: Path) -> None:
    by_name = {m.name: d for m, d in members(ova)}
    ovf_name, mf_name, vmdk_name = member_names(NAME)
    root = etree.fromstring(by_name[ovf_name])
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    file_el = root.find("ovf:References/ovf:File", ns)
    assert file_el.get(f"{{{ns['ovf']}}}size") == str(len(by_name[vmdk_name]))
    disk = root.find("ovf:DiskSection/ovf:Disk", ns)
    assert disk.get(f"{{{ns['ovf']}}}capacity") == str(raw.stat().st_size)
    assert disk.get(f"{{{ns['ovf']}}}format").endswith("vmdk.html#streamOptimized")
    assert root.find("ovf:NetworkSection/ovf:Network", ns) is not None
    # No NIC is bound to a switch: the hardware has no Ethernet item (ResourceType 10).
    rasd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    types = [t.text for t in root.iter(f"{{{rasd}}}ResourceType")]
    assert types == ["3", "4", "6", "17"]
    assert [t.text for t in root.iter(f"{{{rasd}}}ResourceSubType")] == ["lsilogic"]
    lines = by_name[mf_name].decode().splitlines()
    assert lines == [
        f"SHA256({ovf_name})= {hashlib.sha256(by_name[ovf_name]).hexdigest()}",
        f"SHA256({vmdk_name})= {hashlib.sha256(by_name[vmdk_name]).hexdigest()}",
    ]


def test_ovf_validates_with_xmllint(ova: Path, tmp_path: Path) -> None:
    """An independent validator (libxml2's xmllint with the DMTF catalog) accepts the descriptor."""
    ovf = tmp_path / "t.ovf"
    ovf.write_bytes(members(ova)[0][1])
    result = subprocess.run(
        ["xmllint", "--nonet", "--noout", "--schema", str(SCHEMAS / "dsp8023_1.1.1.xsd"), str(ovf)],
        env={**os.environ, "XML_CATALOG_FILES": str(SCHEMAS / "catalog.xml")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "validates" in result.stderr


def test_i386_declares_debian_32_bit(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "i386.ova"
    write_ova(raw, out, name=NAME, flavour="i386", epoch=EPOCH, schema_dir=SCHEMAS)
    info = check_ova(out, schema_dir=SCHEMAS)
    assert (info["os_id"], info["os_type"]) == ("95", "debian10Guest")


def test_two_writes_are_identical(raw: Path, ova: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.ova"
    write_ova(raw, again, name=NAME, flavour="amd64", epoch=EPOCH, schema_dir=SCHEMAS)
    sha = [hashlib.sha512(p.read_bytes()).hexdigest() for p in (ova, again)]
    assert sha[0] == sha[1]
    later = tmp_path / "later.ova"
    write_ova(raw, later, name=NAME, flavour="amd64", epoch=EPOCH + 1, schema_dir=SCHEMAS)
    assert hashlib.sha512(later.read_bytes()).hexdigest() != sha[0]


def test_vmdk_reads_back_with_qemu_img(ova: Path, raw: Path, tmp_path: Path) -> None:
    vmdk = extract_vmdk(ova, tmp_path)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(vmdk)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert '"create-type": "streamOptimized"' in info.stdout
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(back)], check=True)
    assert back.stat().st_size == raw.stat().st_size
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(raw.read_bytes()).digest()


def test_vmdk_reads_back_with_libvmdk(ova: Path, raw: Path, tmp_path: Path) -> None:
    vmdk = extract_vmdk(ova, tmp_path)
    info = subprocess.run(["vmdkinfo", str(vmdk)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "Stream optimized" in info.stdout
    assert f"({raw.stat().st_size} bytes)" in info.stdout
    # Debian's libvmdk-utils has no vmdkexport; its Python binding (python3-libvmdk) reads the data.
    if not list(Path("/usr/lib/python3/dist-packages").glob("pyvmdk*.so")):
        pytest.fail("python3-libvmdk is needed: apt-get install python3-libvmdk")
    back = tmp_path / "libvmdk.raw"
    reader = (
        "import pyvmdk, sys\n"
        "h = pyvmdk.handle(); h.open(sys.argv[1]); h.open_extent_data_files()\n"
        "n = h.get_media_size(); out = open(sys.argv[2], 'wb'); done = 0\n"
        "while done < n:\n"
        "    d = h.read_buffer(min(1 << 22, n - done)); out.write(d); done += len(d)\n"
        "out.close()\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-c", reader, str(vmdk), str(back)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(raw.read_bytes()).digest()


def test_empty_disk_is_tiny_and_reads_back(tmp_path: Path) -> None:
    raw = tmp_path / "zero.raw"
    with open(raw, "wb") as f:
        f.truncate(70 * MiB)
    out = tmp_path / "zero.ova"
    write_ova(raw, out, name=NAME, flavour="amd64", epoch=EPOCH, schema_dir=SCHEMAS)
    info = check_ova(out, schema_dir=SCHEMAS)
    assert info["vmdk"]["grains"] == 0
    assert info["vmdk_size"] < 200 * 1024
    vmdk = extract_vmdk(out, tmp_path)
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(raw), str(vmdk)])
    assert compare.returncode == 0


# ------------------------------------------------------------------------------------ corrupted OVAs


def corrupt(ova: Path, tmp_path: Path, change) -> Path:  # noqa: ANN001
    items = [(m.name, d) for m, d in members(ova)]
    items = change(items)
    return repack(items, tmp_path / "bad.ova")


def with_ovf(items: list[tuple[str, bytes]], edit) -> list[tuple[str, bytes]]:  # noqa: ANN001
    """Edit the OVF and write a matching manifest, so only the edited rule is broken."""
    (ovf_name, ovf), (mf_name, _), rest = items[0], items[1], items[2:]
    ovf = edit(ovf)
    return [(ovf_name, ovf), (mf_name, manifest_for([(ovf_name, ovf), *rest])), *rest]


def test_manifest_mismatch(ova: Path, tmp_path: Path) -> None:
    def flip(items):  # noqa: ANN001, ANN202
        name, data = items[2]
        data = bytearray(data)
        data[GRAIN] ^= 0xFF
        return [*items[:2], (name, bytes(data))]

    with pytest.raises(
        OvaError, match=rf"manifest mismatch for {NAME}-disk1\.vmdk: manifest says [0-9a-f]{{64}}"
    ):
        check_ova(corrupt(ova, tmp_path, flip), schema_dir=SCHEMAS)


def test_ovf_not_first(ova: Path, tmp_path: Path) -> None:
    bad = corrupt(ova, tmp_path, lambda items: [items[1], items[0], items[2]])
    with pytest.raises(
        OvaError, match=rf"OVF descriptor is not the first member \(the first is {NAME}\.mf\)"
    ):
        check_ova(bad, schema_dir=SCHEMAS)


def test_schema_invalid_ovf(ova: Path, tmp_path: Path) -> None:
    # DiskSection without its mandatory Info element.
    bad = corrupt(
        ova,
        tmp_path,
        lambda items: with_ovf(items, lambda x: x.replace(b"<Info>Virtual disk information</Info>", b"")),
    )
    with pytest.raises(OvaError, match=r"is not valid against DSP8023 1\.1\.1: line \d+: .*Disk.*Info"):
        check_ova(bad, schema_dir=SCHEMAS)


def test_ovf_size_not_real_size(ova: Path, raw: Path, tmp_path: Path) -> None:
    real = dict((m.name, m.size) for m, _ in members(ova))[member_names(NAME)[2]]
    bad = corrupt(
        ova,
        tmp_path,
        lambda items: with_ovf(items, lambda x: x.replace(f'ovf:size="{real}"'.encode(), b'ovf:size="512"')),
    )
    with pytest.raises(
        OvaError, match=rf"ovf:size of {NAME}-disk1\.vmdk is 512 but the file has {real} bytes"
    ):
        check_ova(bad, schema_dir=SCHEMAS)


def test_capacity_wrong(ova: Path, raw: Path, tmp_path: Path) -> None:
    size = raw.stat().st_size
    bad = corrupt(
        ova,
        tmp_path,
        lambda items: with_ovf(
            items,
            lambda x: x.replace(f'ovf:capacity="{size}"'.encode(), f'ovf:capacity="{size + 512}"'.encode()),
        ),
    )
    with pytest.raises(
        OvaError, match=rf"capacity wrong: the OVF says {size + 512} bytes .* holds {size} bytes"
    ):
        check_ova(bad, schema_dir=SCHEMAS)


def test_not_ustar(ova: Path, tmp_path: Path) -> None:
    bad = repack([(m.name, d) for m, d in members(ova)], tmp_path / "gnu.ova", fmt=tarfile.GNU_FORMAT)
    with pytest.raises(OvaError, match=rf"member {NAME}\.ovf has a GNU tar header, not ustar"):
        check_ova(bad, schema_dir=SCHEMAS)


def test_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "noise.ova"
    bad.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(OvaError, match="is not an uncompressed tar archive"):
        check_ova(bad, schema_dir=SCHEMAS)


def test_truncated_vmdk(ova: Path, tmp_path: Path) -> None:
    def cut(items):  # noqa: ANN001, ANN202
        name, data = items[2]
        data = data[:-1024]
        items = [*items[:2], (name, data)]
        return with_ovf(
            items,
            lambda x: x.replace(
                f'ovf:size="{len(data) + 1024}"'.encode(), f'ovf:size="{len(data)}"'.encode()
            ),
        )

    with pytest.raises(OvaError, match="no footer marker, footer and end-of-stream marker"):
        check_ova(corrupt(ova, tmp_path, cut), schema_dir=SCHEMAS)


def test_vmdk_checker_accepts_qemu_stream(raw: Path, tmp_path: Path) -> None:
    """The checker is not tuned to our writer: qemu-img's streamOptimized output passes it too."""
    other = tmp_path / "qemu.vmdk"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            str(raw),
            str(other),
        ],
        check=True,
    )
    with open(other, "rb") as f:
        info = check_stream_vmdk(f, other.stat().st_size, "qemu.vmdk")
    assert info["capacity"] == raw.stat().st_size
    assert info["grains"] > 0


def test_vmdk_checker_rejects_other_vmdks(raw: Path, tmp_path: Path) -> None:
    """qemu-img's monolithicSparse VMDK is a VMDK but not a stream: rejected with the reason."""
    other = tmp_path / "sparse.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(other)], check=True)
    with open(other, "rb") as f, pytest.raises(VmdkError, match="header version is 1, expected 3"):
        check_stream_vmdk(f, other.stat().st_size, "sparse.vmdk")


def test_cli_check(ova: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (SCHEMAS / "dsp8023_1.1.1.xsd").is_file():
        pytest.fail(f"OVF schemas missing at {SCHEMAS}")
    assert cli.main(["ova", "check", str(ova)]) == 0
    assert '"capacity"' in capsys.readouterr().out
    bad = corrupt(ova, tmp_path, lambda items: [items[1], items[0], items[2]])
    assert cli.main(["ova", "check", str(bad)]) == 1
    assert "not the first member" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ bad input


def test_bad_inputs(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_ova(tmp_path / "missing.raw", tmp_path / "x.ova", name=NAME, flavour="amd64", epoch=EPOCH)
    with pytest.raises(UserError, match="unknown flavour 'arm64'"):
        write_ova(raw, tmp_path / "x.ova", name=NAME, flavour="arm64", epoch=EPOCH)
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"x" * 1000)
    with pytest.raises(UserError, match="not a non-empty multiple of 512"):
        write_ova(odd, tmp_path / "x.ova", name=NAME, flavour="amd64", epoch=EPOCH)
    with pytest.raises(UserError, match="output directory .* does not exist"):
        write_ova(raw, tmp_path / "nope" / "x.ova", name=NAME, flavour="amd64", epoch=EPOCH)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("odd.raw",)]
    assert leftovers == [], leftovers


def test_interrupted_write_leaves_nothing(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the VMDK is written and before the archive exists: no OVA, no temp file."""
    import systemvm.export.formats.ova as ova_module

    def interrupt(path: Path) -> str:
        assert path.stat().st_size > 0  # the VMDK was written in the output directory's temp folder
        raise KeyboardInterrupt

    monkeypatch.setattr(ova_module, "_sha256_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_ova(raw, tmp_path / "x.ova", name=NAME, flavour="amd64", epoch=EPOCH, schema_dir=SCHEMAS)
    assert list(tmp_path.iterdir()) == []
