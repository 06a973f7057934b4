"""The patch's output and the version handshake, read as CloudStack reads them."""

from __future__ import annotations

import pytest

from systemvm.boot.patch import patch_version, template_version


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("version:0123abcd \n", "0123abcd"),
        ("version:0123abcd", "0123abcd"),
        ("restarting cloud\nversion:0123abcd \n", "0123abcd"),  # other lines without a colon are harmless
        ("log_it: command not found\nversion:0123abcd \n", ""),  # a colon elsewhere breaks CloudStack's split
        ("", ""),
    ],
)
def test_patch_version_is_read_as_the_kvm_agent_reads_it(output: str, version: str) -> None:
    assert patch_version(output) == version


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("Cloudstack Release 4.20.0 Tue Dec 01 2026&0123abcd\n", ("4.20.0", "0123abcd")),
        ("Cloudstack Release 4.20.1.0-SNAPSHOT Tue&ab", ("4.20.1.0-SNAPSHOT", "ab")),
        # no signature: Java's split drops the trailing empty part, one part is left (issue 22)
        ("Cloudstack Release 4.20.0 Tue&", None),
        ("Cloudstack Release 4.20.0 Tue&\n", None),
        ("Cloudstack Release 4.20.0 Tue", None),  # no '&'
        ("Cloudstack Release 4.20.0&a&b", None),  # three parts
        ("Cloudstack Release unknown Tue&ab", None),  # not x.y.z
        ("4.20.0&ab", None),  # too few words
    ],
)
def test_template_version_is_read_as_the_management_server_reads_it(line: str, parsed) -> None:
    assert template_version(line) == parsed
