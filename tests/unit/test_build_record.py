"""The build's record of its packages: dpkg fields, source packages and the apt suites of each version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from systemvm.build import image

REPO = Path(__file__).resolve().parents[2]
ORIGINS_SCRIPT = REPO / "elements/systemvm-base/post-install.d/89-record-apt-origins"


def test_package_records_join_dpkg_fields_and_suites():
    records = image.parse_package_records(
        "libc6\t2.36-9+deb12u10\tamd64\tglibc\t2.36-9+deb12u10\n"
        "bash\t5.2.15-2+b2\tamd64\t\t\n"  # dpkg-query leaves the source empty when it is the package
        "nano\t7.2-1\tamd64\n"  # a three-column record of an older image
    )
    image.add_apt_origins(
        records,
        "libc6\t2.36-9+deb12u10\tamd64\tbookworm-security\n"
        "libc6\t2.36-9+deb12u10\tamd64\tbookworm\n"
        "bash\t5.2.15-2+b1\tamd64\tbookworm\n",  # another version than the installed one: not bash's
    )
    assert records["libc6"] == {
        "version": "2.36-9+deb12u10",
        "architecture": "amd64",
        "source": "glibc",
        "source_version": "2.36-9+deb12u10",
        "suites": ["bookworm", "bookworm-security"],
    }
    assert records["bash"]["source"] == "bash" and records["bash"]["source_version"] == "5.2.15-2+b2"
    assert records["bash"]["suites"] == []
    assert records["nano"]["architecture"] == "amd64" and records["nano"]["source"] == "nano"


@pytest.mark.skipif(
    shutil.which("apt-get") is None or not any(Path("/var/lib/apt/lists").glob("*_Packages*")),
    reason="needs apt with downloaded package indexes",
)
def test_origins_script_finds_this_hosts_packages_in_its_apt_indexes(tmp_path):
    """The element's script, run on this host's dpkg database and apt indexes as it runs in the image."""
    env = dict(os.environ, SYSTEMVM_BUILD_RECORD=str(tmp_path))
    run = subprocess.run(["bash", str(ORIGINS_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "apt-origins.tsv").read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 4 for line in lines)
    every = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${Architecture}\n"], capture_output=True, text=True
    ).stdout.splitlines()
    suites = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(CODENAME)", "Created-By: Packages"],
        capture_output=True,
        text=True,
    ).stdout.split()
    # every line names an installed package at its installed version, and a suite apt knows
    assert {line.rsplit("\t", 1)[0] for line in lines} <= set(every)
    assert {line.rsplit("\t", 1)[1] for line in lines} <= set(suites)
    # most of a Debian host's packages are found (this host's own may lag behind the mirror)
    assert len({line.split("\t", 1)[0] for line in lines}) > len(every) / 2
