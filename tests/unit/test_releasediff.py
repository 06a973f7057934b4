"""invoke diff: two releases whose manifests differ, every line of the report checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from systemvm.export import debversion, publish, releasediff
from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, PACKAGES_OLD, make_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
OLD_COMMIT = "1" * 40
NEW_COMMIT = "2" * 40


def two_releases(tmp_path: Path) -> tuple[Path, Path]:
    old_dir, new_dir = tmp_path / "4.20.0", tmp_path / "4.20.1"
    old = make_manifest(
        PACKAGES_OLD,  # no origins: as a release built before they were recorded
        version="4.20.0",
        kernel="6.1.0-56-amd64",
        commit=OLD_COMMIT,
        artifacts={
            "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2": {"format": "qcow2", "size": 1000, "sha512": "a"},
            "systemvmtemplate-4.20.0-x86_64-vmware.ova": {"format": "ova", "size": 500, "sha512": "b"},
        },
    )
    new = make_manifest(
        PACKAGES_NEW,
        ORIGINS_NEW,
        version="4.20.1",
        kernel="6.1.0-57-amd64",
        commit=NEW_COMMIT,
        artifacts={
            "systemvmtemplate-4.20.1-x86_64-kvm.qcow2.bz2": {"format": "qcow2", "size": 1250, "sha512": "c"},
            "systemvmtemplate-4.20.1-x86_64-xen.vhd.bz2": {"format": "vhd", "size": 900, "sha512": "d"},
        },
    )
    write_manifest(old_dir, old)
    write_manifest(new_dir, new)
    return old_dir, new_dir


def test_report_names_every_change_line_by_line(tmp_path):
    old_dir, new_dir = two_releases(tmp_path)
    markdown, data = releasediff.write_release_diff(old_dir, new_dir)
    assert (markdown.name, data.name) == ("release-diff.md", "release-diff.json")
    method = releasediff.diff_releases(old_dir, new_dir)["security_decided_by"]
    assert method == (
        "an upgrade counts as one when its new version is listed in a *-security suite's index; "
        "the build records per package the suites whose Packages index (as apt in the image chroot had it) "
        "lists the installed version and architecture "
        "(elements/systemvm-base/post-install.d/89-record-apt-origins)"
    )
    assert markdown.read_text().splitlines() == [
        f"# Release diff: {old_dir} -> {new_dir}",
        "",
        f"Security updates: {method}.",
        "",
        "## amd64",
        "",
        f"- template: 4.20.0 ({OLD_COMMIT}) -> 4.20.1 ({NEW_COMMIT})",
        "- CloudStack line: 4.20 (unchanged)",
        "- kernel: 6.1.0-56-amd64 -> 6.1.0-57-amd64",
        "- packages: 2 added, 2 removed, 3 upgraded (1 from the security suite), 0 downgraded",
        "",
        "### Added",
        "",
        "| package | version | suites |",
        "| --- | --- | --- |",
        "| linux-image-6.1.0-57-amd64 | 6.1.192-3 | bookworm-security |",
        "| zstd | 1.5.4+dfsg2-5 | bookworm |",
        "",
        "### Removed",
        "",
        "| package | version |",
        "| --- | --- |",
        "| linux-image-6.1.0-56-amd64 | 6.1.190-1 |",
        "| nano | 7.2-1 |",
        "",
        "### Upgraded",
        "",
        "| package | old | new | security |",
        "| --- | --- | --- | --- |",
        "| libc6 | 2.36-9+deb12u9 | 2.36-9+deb12u10 | no |",
        "| libssl3 | 3.0.15-1~deb12u1 | 3.0.16-1~deb12u1 | yes |",
        "| tzdata | 2025a-0+deb12u1 | 2025b-0+deb12u1 | no |",
        "",
        "### Artifacts",
        "",
        "| artifact | old size | new size | change |",
        "| --- | --- | --- | --- |",
        "| kvm.qcow2.bz2 | 1,000 B | 1,250 B | +250 B (+25.00 %) |",
        "| vmware.ova | 500 B | - | gone |",
        "| xen.vhd.bz2 | - | 900 B | new |",
    ]
    report = json.loads(data.read_text())
    amd64 = report["flavours"]["amd64"]
    assert amd64["cloudstack"]["changes"] == [] and amd64["cloudstack"]["new_line"] == "4.20"
    assert amd64["kernel"] == {"old": "6.1.0-56-amd64", "new": "6.1.0-57-amd64", "changed": True}
    assert [e["name"] for e in amd64["upgraded"] if e["security"]] == ["libssl3"]
    assert amd64["upgraded"][1] == {
        "name": "libssl3", "old": "3.0.15-1~deb12u1", "new": "3.0.16-1~deb12u1",
        "suites": ["bookworm-security"], "security": True,
    }  # fmt: skip
    # both reports are published files: checksummed beside the artifacts
    assert publish.verify_listing(new_dir) == []
    assert {"release-diff.md", "release-diff.json"} <= set(publish.parse_checksums(new_dir / "sha512sum.txt"))
    assert {"release-diff.md", "release-diff.json"} <= set(publish.parse_checksums(new_dir / "md5sum.txt"))


def test_a_dropped_package_shows_and_an_unchanged_release_shows_nothing(tmp_path):
    old_dir, new_dir = two_releases(tmp_path)
    same = releasediff.diff_releases(new_dir, new_dir)["flavours"]["amd64"]
    assert (same["added"], same["removed"], same["upgraded"], same["downgraded"]) == ([], [], [], [])
    manifest_path = next(new_dir.glob("*.manifest.json"))
    data = json.loads(manifest_path.read_text())
    del data["packages"]["bash"], data["package_records"]["bash"]
    manifest_path.write_text(json.dumps(data))
    dropped = releasediff.diff_releases(old_dir, new_dir)["flavours"]["amd64"]
    assert {"name": "bash", "version": "5.2.15-2+b2"} in dropped["removed"]


def test_a_downgrade_is_not_an_upgrade(tmp_path):
    old_dir, new_dir = two_releases(tmp_path)
    d = releasediff.diff_releases(new_dir, old_dir)["flavours"]["amd64"]
    assert [e["name"] for e in d["downgraded"]] == ["libc6", "libssl3", "tzdata"]
    assert d["upgraded"] == []
    assert all(e["security"] is None for e in d["downgraded"])  # the old release recorded no suites


def run_diff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "diff", *args], cwd=REPO, capture_output=True, text=True
    )


@pytest.mark.parametrize("case", ["missing", "empty", "no-manifest-new"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    old_dir, new_dir = two_releases(tmp_path)
    before = {p: p.read_bytes() for d in (old_dir, new_dir) for p in d.iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "missing": ("--old", str(tmp_path / "nowhere"), "--new", str(new_dir)),
        "empty": ("--old", str(empty), "--new", str(new_dir)),
        "no-manifest-new": ("--old", str(old_dir), "--new", str(empty)),
    }[case]
    run = run_diff(*args)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if case == "missing":
        assert f"old release directory {tmp_path / 'nowhere'} does not exist: pass --old" in lines[0]
    else:
        assert "no build manifest (systemvmtemplate-<version>-<arch>.manifest.json)" in lines[0]
        assert "pass --old" in lines[0] if case == "empty" else "pass --new" in lines[0]
    assert {p: p.read_bytes() for d in (old_dir, new_dir) for p in d.iterdir()} == before
    assert list(empty.iterdir()) == []


def test_invoke_diff_writes_both_reports(tmp_path):
    old_dir, new_dir = two_releases(tmp_path)
    run = run_diff("--old", str(old_dir), "--new", str(new_dir))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(new_dir / "release-diff.md"), str(new_dir / "release-diff.json")]


@pytest.mark.parametrize(
    "a, b, order",
    [
        ("2.36-9+deb12u9", "2.36-9+deb12u10", -1),
        ("1:1.0", "2.0", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0-1", "1.0-1+b1", -1),
        ("3.0.15-1~deb12u1", "3.0.15-1", -1),
        ("5.2.15-2+b2", "5.2.15-2+b2", 0),
        ("0:1.0", "1.0", 0),
        ("1.0a", "1.0+", -1),
        ("10", "9", 1),
    ],
)
def test_versions_order_as_dpkg_orders_them(a, b, order):
    assert debversion.compare(a, b) == order
    assert debversion.compare(b, a) == -order
    dpkg = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], capture_output=True)
    if dpkg.returncode in (0, 1) and order != 0:
        assert (dpkg.returncode == 0) == (order < 0)


def test_a_420_to_422_diff_names_the_line_and_each_contract_change(tmp_path):
    """A 4.20 release (manifest from before the profile was recorded) against a 4.22 one: the line, every
    contract field that changed, the added cloud-init and the artifacts of both versions matched by kind."""
    old = make_manifest(
        PACKAGES_OLD, version="4.20.0", kernel="6.1.0-56-amd64", commit=OLD_COMMIT,
        artifacts={"systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip": {"format": "hyperv", "size": 300}},
    )  # fmt: skip
    new = make_manifest(
        PACKAGES_NEW + "cloud-init\t22.4.2-1+deb12u4\tall\tcloud-init\t22.4.2-1+deb12u4\n",
        ORIGINS_NEW, version="4.22.0", commit=NEW_COMMIT, recorded_profile=True,
        artifacts={"systemvmtemplate-4.22.0-x86_64-hyperv.vhd.zip": {"format": "hyperv", "size": 330}},
    )  # fmt: skip
    old["sizes"] = {"rootfs_used_bytes": 1_110_000_000, "raw_disk_allocated_bytes": 980_000_000}
    new["sizes"] = {"rootfs_used_bytes": 1_133_035_520, "raw_disk_allocated_bytes": 987_901_952}
    old_dir, new_dir = tmp_path / "4.20.0", tmp_path / "4.22.0"
    write_manifest(old_dir, old)
    write_manifest(new_dir, new)
    diff = releasediff.diff_releases(old_dir, new_dir)["flavours"]["amd64"]
    contract = diff["cloudstack"]
    assert (contract["old_line"], contract["new_line"], contract["changed"]) == ("4.20", "4.22", True)
    assert contract["new_signature"] == "sha512"
    changed = {c["field"]: (c["old"], c["new"]) for c in contract["changes"]}
    assert changed == {
        "line": ("4.20", "4.22"),
        "checksum": ("md5", "sha512"),
        "checksum_list": ("md5sum.txt", "sha512sum.txt"),
        "scripts_digest": ("md5", "sha512"),
        "kvm_plain_section": (True, False),
        "four_part_metadata_version": (False, True),
        "userdata": (False, True),
        "stored_checksum_prefix": ("", "{SHA-512}"),
    }
    assert "cloud-init" in [e["name"] for e in diff["added"]]
    assert diff["artifacts"] == [
        {"kind": "hyperv.vhd.zip", "old_file": "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip",
         "new_file": "systemvmtemplate-4.22.0-x86_64-hyperv.vhd.zip", "old_size": 300, "new_size": 330,
         "change_bytes": 30, "change_percent": 10.0},
    ]  # fmt: skip
    text = releasediff.render_markdown(releasediff.diff_releases(old_dir, new_dir)).splitlines()
    assert "- CloudStack line: 4.20 -> 4.22" in text
    table = text[text.index("### CloudStack contract") :]
    assert "| metadata.ini checksum algorithm | md5 | sha512 |" in table
    assert "| scripts signature digest (version handshake, live patch) | md5 | sha512 |" in table
    assert "| boot runs cloud-init from userdata= (PR 11654) | no | yes |" in table
    assert "| vm_template.checksum prefix | none | {SHA-512} |" in table
    assert "- root filesystem used: 1,110,000,000 B -> 1,133,035,520 B (+23,035,520 B)" in text
    assert diff["image"][1] == {
        "size": "raw_disk_allocated_bytes", "what": "raw disk allocated",
        "old": 980_000_000, "new": 987_901_952, "change_bytes": 7_901_952,
    }  # fmt: skip


def test_an_arm64_release_is_diffed_as_its_own_flavour(tmp_path):
    """The aarch64 manifest is found beside the x86 ones and compared with the previous arm64 build."""
    old_dir, new_dir = two_releases(tmp_path)
    for directory, version, packages in (
        (old_dir, "4.20.0", PACKAGES_OLD),
        (new_dir, "4.20.1", PACKAGES_NEW),
    ):
        write_manifest(
            directory, make_manifest(packages, version=version, flavour="arm64", kernel="6.1.0-57-arm64")
        )
    assert (new_dir / "systemvmtemplate-4.20.1-aarch64.manifest.json").is_file()
    flavours = releasediff.diff_releases(old_dir, new_dir)["flavours"]
    assert set(flavours) == {"amd64", "arm64"}
    names = {f: [u["name"] for u in flavours[f]["upgraded"]] for f in ("amd64", "arm64")}
    assert names["arm64"] == names["amd64"] != []
