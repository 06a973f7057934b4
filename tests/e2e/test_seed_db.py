"""Seeding against a real MariaDB (Debian's mariadbd, started here) with CloudStack's ``cloud.vm_template``:
the template id is found as CloudStack finds it, uuid and url are updated only when the files are in place,
and every failure leaves both the database row and secondary storage as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from systemvm import naming
from systemvm.errors import UserError
from systemvm.seed.cli import main as seed_main
from systemvm.seed.db import DbConfig
from systemvm.seed.install import SeedRequest, parse_properties, seed
from tests.standins.mariadb import running_mariadb
from tests.unit.test_seed_support import ArtifactServer, compress, make_qcow2, make_vhd, publish, snapshot

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def db():
    with running_mariadb() as server:
        yield server


@pytest.fixture(scope="module")
def pub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("img")
    out = tmp_path_factory.mktemp("pub")
    (work / "q").mkdir()
    (work / "v").mkdir()
    publish(compress(make_qcow2(work / "q"), "bz2", out / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"))
    publish(compress(make_vhd(work / "v"), "bz2", out / "systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2"))
    return out


@pytest.fixture
def rows(db):
    """ids: 1, 2 KVM SYSTEM (2 is the newest live one), 3 XenServer SYSTEM, 4 KVM USER, 5 KVM removed."""
    db.reset()
    db.add_template("KVM")
    db.add_template("KVM")
    db.add_template("XenServer")
    db.add_template("KVM", type="USER")
    db.add_template("KVM", removed=True)
    return db


@pytest.fixture(scope="module")
def pub_422(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4.22 x86_64 KVM artifact and an aarch64 one (the arm64 flavour's name), sha512sum.txt beside."""
    work = tmp_path_factory.mktemp("img422")
    out = tmp_path_factory.mktemp("pub422")
    qcow2 = make_qcow2(work)
    publish(compress(qcow2, "bz2", out / "systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2"))
    publish(compress(qcow2, "bz2", out / "systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2"))
    return out


@pytest.fixture
def rows_422(db):
    """CloudStack 4.22's registration left: 1 the 4.20.1 x86_64 KVM template, 2 the 4.22.0 x86_64 one,
    3 the 4.22.0 aarch64 one, 4 a newer x86_64 SYSTEM template of another name."""
    db.reset()
    db.add_template("KVM", name="systemvm-kvm-4.20.1-x86_64")
    db.add_template("KVM", name="systemvm-kvm-4.22.0-x86_64")
    db.add_template("KVM", name="systemvm-kvm-4.22.0-aarch64", arch="aarch64")
    db.add_template("KVM", name="custom-router-template")
    return db


def config(db, **changes: object) -> DbConfig:
    base = DbConfig(host="127.0.0.1", port=db.port, user=db.user, password=db.password, name="cloud")
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def all_rows(db) -> list[tuple]:
    return db.execute("SELECT id, uuid, url, type, hypervisor_type, removed FROM vm_template ORDER BY id")


def test_finds_the_newest_system_template_and_updates_uuid_and_url(tmp_path: Path, rows, pub: Path) -> None:
    before = {row[0]: row for row in all_rows(rows)}
    name = "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
    with ArtifactServer(pub) as base:
        url = f"{base}/{name}"
        result = seed(SeedRequest(mount=tmp_path, hypervisor="kvm", url=url, db=config(rows), progress=False))
    assert result.template_id == 2 and result.database_updated
    assert result.directory == tmp_path / "template/tmpl/1/2"
    row = rows.row(2)
    assert row["uuid"] == result.uuid and row["url"] == url
    assert result.filename == f"{row['uuid']}.qcow2"
    assert parse_properties((result.directory / "template.properties").read_text())["id"] == "2"
    after = {row[0]: row for row in all_rows(rows)}
    assert {k: v for k, v in after.items() if k != 2} == {k: v for k, v in before.items() if k != 2}


def test_xenserver_id_and_file_seed_keeps_url(tmp_path: Path, rows, pub: Path) -> None:
    result = seed(
        SeedRequest(
            mount=tmp_path,
            hypervisor="xenserver",
            file=str(pub / "systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2"),
            db=config(rows),
            progress=False,
        )
    )
    assert result.template_id == 3
    assert rows.row(3)["uuid"] == result.uuid and rows.row(3)["url"] == "http://old.example/x"


def test_twice_with_force_same_tree_and_row(tmp_path: Path, rows, pub: Path) -> None:
    artifact = str(pub / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2")
    seed(SeedRequest(mount=tmp_path, hypervisor="kvm", file=artifact, db=config(rows), progress=False))
    tree, table = snapshot(tmp_path), all_rows(rows)
    seed(
        SeedRequest(
            mount=tmp_path, hypervisor="kvm", file=artifact, db=config(rows), force=True, progress=False
        )
    )
    assert snapshot(tmp_path) == tree and all_rows(rows) == table


def unchanged_after(mount: Path, server, match: str, **kwargs: object) -> None:
    tree, table = snapshot(mount), all_rows(server)
    kwargs.setdefault("progress", False)
    with pytest.raises(UserError, match=match) as caught:
        seed(SeedRequest(mount=mount, **kwargs))
    assert "\n" not in str(caught.value)
    assert snapshot(mount) == tree
    assert all_rows(server) == table


def test_failures_leave_row_and_storage_alone(tmp_path: Path, rows, pub: Path) -> None:
    artifact = str(pub / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2")
    seed(SeedRequest(mount=tmp_path, hypervisor="kvm", file=artifact, db=config(rows), progress=False))
    common = {"hypervisor": "kvm", "file": artifact, "db": config(rows)}
    unchanged_after(tmp_path, rows, "already exists", **common)
    unchanged_after(tmp_path, rows, "checksum mismatch", force=True, sha512="0" * 128, **common)
    unchanged_after(tmp_path, rows, "not in cloud.vm_template", template_id=77, **common)
    unchanged_after(tmp_path, rows, "holds a qcow2 image", **{**common, "hypervisor": "xenserver"})
    unchanged_after(
        tmp_path, rows, "no SYSTEM template for VMware", **{**common, "hypervisor": "vmware"}
    )  # fmt: skip
    unchanged_after(
        tmp_path,
        rows,
        "cannot connect to the CloudStack database",
        **{**common, "db": config(rows, password="wrong")},
    )


def test_cli_with_db_properties_file(tmp_path: Path, rows, pub: Path, capsys) -> None:
    props = tmp_path / "db.properties"
    props.write_text(
        f"db.cloud.host=127.0.0.1\ndb.cloud.port={rows.port}\ndb.cloud.username={rows.user}\n"
        f"db.cloud.password={rows.password}\ndb.cloud.name=cloud\ndb.cloud.encryption.type=none\n"
    )
    mount = tmp_path / "mnt"
    mount.mkdir()
    artifact = str(pub / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2")
    argv = ["-m", str(mount), "-h", "kvm", "-f", artifact, "--db-properties", str(props), "--quiet"]
    assert seed_main(argv) == 0, capsys.readouterr().err
    assert (mount / "template/tmpl/1/2/template.properties").is_file()
    assert rows.row(2)["uuid"] in capsys.readouterr().out
    # the options win over the file: a wrong -d fails with one line and changes nothing
    tree = snapshot(mount)
    assert seed_main([*argv, "-F", "-d", "wrong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot connect to the CloudStack database")
    assert snapshot(mount) == tree
    # -o/-r/-d/-p alone, no file
    other = tmp_path / "other"
    other.mkdir()
    argv = ["-m", str(other), "-h", "kvm", "-f", artifact, "-o", "127.0.0.1", "-p", str(rows.port)]
    argv += ["-r", rows.user, "-d", rows.password, "--db-properties", str(tmp_path / "absent"), "--quiet"]
    assert seed_main(argv) == 0


def test_a_422_template_goes_to_its_name_and_arch_with_the_checksum_422_stores(
    tmp_path: Path, rows_422, pub_422: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row 4.22's registration made for this template (name and arch), never the newest id of another
    architecture; checksum set as 4.22 stores it ({SHA-512} and the hex: PR 12165)."""
    monkeypatch.setitem(naming.ARCH_OF, "arm64", "aarch64")  # the arm64 flavour another branch adds
    before = {row[0]: row for row in all_rows(rows_422)}
    artifact = pub_422 / "systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2"
    result = seed(
        SeedRequest(mount=tmp_path, hypervisor="kvm", file=str(artifact), db=config(rows_422), progress=False)
    )
    assert (result.template_id, result.arch, result.cloudstack_line) == (2, "x86_64", "4.22")
    sha512 = hashlib.sha512(artifact.read_bytes()).hexdigest()
    assert rows_422.row(2)["checksum"] == f"{{SHA-512}}{sha512}" == result.stored_checksum
    assert rows_422.row(2)["uuid"] == result.uuid
    after = {row[0]: row for row in all_rows(rows_422)}
    assert {k: v for k, v in after.items() if k != 2} == {k: v for k, v in before.items() if k != 2}
    # the aarch64 artifact: row 3, though rows 4 and 2 are newer or by name closer
    arm = pub_422 / "systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2"
    result = seed(
        SeedRequest(mount=tmp_path, hypervisor="kvm", file=str(arm), db=config(rows_422), progress=False)
    )
    assert (result.template_id, result.arch) == (3, "aarch64")
    # without a row of its name: the newest of its architecture (4), not the newest id overall
    rows_422.execute("UPDATE vm_template SET removed = NOW() WHERE id = 2")
    other = tmp_path / "other"
    other.mkdir()
    result = seed(
        SeedRequest(mount=other, hypervisor="kvm", file=str(artifact), db=config(rows_422), progress=False)
    )
    assert result.template_id == 4


def test_a_420_template_stores_its_md5_as_420_registration_does(tmp_path: Path, rows, pub: Path) -> None:
    artifact = pub / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
    result = seed(
        SeedRequest(mount=tmp_path, hypervisor="kvm", file=str(artifact), db=config(rows), progress=False)
    )
    assert result.cloudstack_line == "4.20"
    assert rows.row(result.template_id)["checksum"] == hashlib.md5(artifact.read_bytes()).hexdigest()
