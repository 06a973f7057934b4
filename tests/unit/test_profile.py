"""The CloudStack line profiles (systemvm/profile.py): the version picks the line, each line's contract,
and an unsupported line refused with one line that names the supported ones."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from systemvm import defaults, profile
from systemvm.errors import UserError


def test_the_default_version_is_the_newest_supported_line():
    assert defaults.DEFAULT_VERSION == "4.22.0"
    newest = max(profile.SUPPORTED, key=lambda line: tuple(int(p) for p in line.split(".")))
    assert profile.profile_for(defaults.DEFAULT_VERSION).line == newest


@pytest.mark.parametrize(
    ("version", "line"),
    [("4.20.0", "4.20"), ("4.20.2", "4.20"), ("4.22.0", "4.22"), ("4.22.0.1", "4.22"),
     ("4.22.1-rc1", "4.22")],
)  # fmt: skip
def test_the_version_picks_the_line(version, line):
    assert profile.profile_for(version).line == line


@pytest.mark.parametrize("version", ["4.23.0", "4.19.1", "5.0.0", "latest", ""])
def test_an_unsupported_line_is_refused_in_one_line_naming_the_supported_ones(version):
    with pytest.raises(UserError) as caught:
        profile.profile_for(version)
    message = str(caught.value)
    assert "\n" not in message
    assert "4.20 or 4.22" in message and "--version 4.22.0" in message
    assert caught.value.exit_code == 2


def test_the_420_contract():
    p = profile.profile_for("4.20.1")
    assert (p.checksum, p.checksum_list, p.scripts_digest) == ("md5", "md5sum.txt", "md5")
    assert p.scripts_digest_command == "md5sum" and p.scripts_digest_length == 32 and p.checksum_length == 32
    assert p.kvm_plain_section and not p.userdata
    assert p.metadata_version("4.20.1") == "4.20.1"
    assert p.digest(b"abc") == hashlib.md5(b"abc").hexdigest()


def test_the_422_contract():
    p = profile.profile_for("4.22.0")
    assert (p.checksum, p.checksum_list, p.scripts_digest) == ("sha512", "sha512sum.txt", "sha512")
    assert p.scripts_digest_command == "sha512sum" and p.scripts_digest_length == 128
    assert not p.kvm_plain_section and p.userdata
    assert p.metadata_version("4.22.0") == "4.22.0.0"  # templateConfig.sh's four-part version
    assert p.metadata_version("4.22.0.1") == "4.22.0.1"
    assert p.digest(b"abc") == hashlib.sha512(b"abc").hexdigest()


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_the_digest_command_prints_the_profiles_digest(tmp_path, line):
    p = profile.LINES[line]
    data = tmp_path / "cloud-scripts.tgz"
    data.write_bytes(b"\x1f\x8b scripts")
    command = [p.scripts_digest_command, str(data)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert printed.stdout.split()[0] == p.digest(data.read_bytes()) == p.file_digest(data)


@pytest.mark.parametrize("line", profile.SUPPORTED)
def test_the_build_environment_and_the_manifest_record_name_the_line(line):
    p = profile.LINES[line]
    env = p.build_environment()
    assert env["SYSTEMVM_CLOUDSTACK_LINE"] == line
    assert env["SYSTEMVM_SCRIPTS_DIGEST"] == p.scripts_digest
    assert env["SYSTEMVM_CLOUD_INIT_DATASOURCES"] == "CloudStack"
    assert profile.profile_from_record(p.record()) is p
    assert profile.manifest_profile({"cloudstack_profile": p.record(), "version": "0.0.1"}) is p


def test_a_manifest_from_before_the_record_falls_back_on_its_version():
    assert profile.manifest_profile({"version": "4.20.0"}).line == "4.20"
    with pytest.raises(UserError, match="rebuild"):
        profile.manifest_profile({})


def test_the_profiles_are_frozen():
    p = profile.profile_for("4.22.0")
    with pytest.raises(AttributeError):
        p.scripts_digest = "md5"  # type: ignore[misc]


@pytest.mark.parametrize("task", ["build", "export"])
def test_the_tasks_refuse_an_unsupported_line_before_any_work(task, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "invoke", task, "--version", "4.23.0", "--flavour", "amd64",
         "--artifacts", str(tmp_path)],
        capture_output=True, text=True, cwd=profile.__file__.rsplit("/systemvm/", 1)[0],
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "4.20 or 4.22" in done.stderr
    assert list(tmp_path.iterdir()) == []
