"""The human report is made from real JUnit XML: pytest runs a tiny generated suite and writes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from systemvm.check.report import humanize_test_name, parse_junit, render_matrix_table, write_report
from systemvm.errors import UserError

SAMPLE_SUITE = textwrap.dedent(
    """
    import pytest

    def test_sshd_listens_on_3922(record_property):
        record_property("section", "3922 access")
        record_property("check", "sshd listens on 3922 on the control NIC only")
        record_property("uptime_seconds", "41.5")
        record_property("boot_seconds", "12.0")

    def test_input_policy_is_drop(record_property):
        record_property("section", "iptables")
        record_property("check", "INPUT policy is DROP")
        assert "ACCEPT" == "DROP", "INPUT policy is ACCEPT | expected DROP"

    def test_unnamed_check_with_param_x():
        pass

    @pytest.mark.skip(reason="not on this role")
    def test_skipped_one():
        pass

    def test_broken_fixture(missing_fixture_xyz):
        pass
    """
)


@pytest.fixture(scope="module")
def junit_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("junit")
    (work / "test_sample_suite.py").write_text(SAMPLE_SUITE)
    (work / "pytest.ini").write_text("[pytest]\n")
    xml = work / "out.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", str(work)],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one failure in the sample
    return xml


def test_parse_reads_every_case_with_its_result(junit_xml: Path) -> None:
    summary = parse_junit(junit_xml)
    results = {c.check: c.result for c in summary.checks}
    assert results == {
        "sshd listens on 3922 on the control NIC only": "passed",
        "INPUT policy is DROP": "failed",
        "Unnamed check with param x": "passed",
        "Skipped one": "skipped",
        "Broken fixture": "error",
    }
    assert summary.failed
    assert summary.numbers == {"uptime_seconds": "41.5", "boot_seconds": "12.0"}
    failed = next(c for c in summary.checks if c.result == "failed")
    assert "INPUT policy is ACCEPT" in failed.message
    assert failed.section == "iptables"
    unnamed = next(c for c in summary.checks if c.check.startswith("Unnamed"))
    assert unnamed.section == "sample suite"  # from the module name


def test_markdown_report_has_table_failures_and_boot_numbers(junit_xml: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    write_report(junit_xml, out, "amd64 secstorage on kvm", {"Version": "4.20.0"})
    text = out.read_text()
    assert text.startswith("# amd64 secstorage on kvm\n")
    assert "- **Version**: 4.20.0" in text
    assert "**FAILED**: 2 passed, 1 failed, 1 errors, 1 skipped" in text
    assert "| Section | Check | Result | Time (s) |" in text
    assert "| iptables | INPUT policy is DROP | FAIL |" in text
    assert "| 3922 access | sshd listens on 3922 on the control NIC only | PASS |" in text
    # a '|' in a message must not break the table
    assert "INPUT policy is ACCEPT \\| expected DROP" in text
    assert "| Uptime when checked, s | 41.5 |" in text
    assert "| Boot time (kernel start to boot_up_done), s | 12.0 |" in text
    assert not list(tmp_path.glob(".report.md.*"))  # no temp file left behind


def test_passing_run_says_passed(tmp_path: Path) -> None:
    xml = tmp_path / "ok.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="systemvm.check.appliance.test_haproxy" '
        'name="test_haproxy_config_accepted" time="0.25"/></testsuite></testsuites>'
    )
    summary = write_report(xml, tmp_path / "r.md", "t")
    assert not summary.failed
    text = (tmp_path / "r.md").read_text()
    assert "**PASSED**: 1 passed" in text
    assert "| haproxy | Haproxy config accepted | PASS | 0.25 |" in text


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        parse_junit(tmp_path / "absent.xml")
    (tmp_path / "bad.xml").write_text("<testsuites><oops")
    with pytest.raises(UserError, match="not valid XML"):
        parse_junit(tmp_path / "bad.xml")
    (tmp_path / "html.xml").write_text("<html/>")
    with pytest.raises(UserError, match="not JUnit XML"):
        parse_junit(tmp_path / "html.xml")


def test_humanize_and_matrix_table() -> None:
    assert humanize_test_name("test_sshd_on_3922[eth0]") == "Sshd on 3922 [eth0]"
    table = render_matrix_table([{"flavour": "amd64", "result": "PASS"}], ["flavour", "result"])
    assert table.splitlines() == ["| flavour | result |", "|---|---|", "| amd64 | PASS |"]
