"""The short human report of an appliance test run, made from the JUnit XML pytest writes.

pytest's ``--junitxml`` is the machine record. This module reads it back and writes a Markdown page a
release engineer reads before publishing: what was tested, one row per check (check, result, time) and
the boot numbers the suite recorded (uptime, boot time). The suite names each check with the
``check``/``section`` properties (``record_property``); a test without them is named from its function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

from lxml import etree

from systemvm.atomic import atomic_path
from systemvm.errors import UserError

# JUnit properties the suite records that the report shows as boot numbers (name -> label)
BOOT_NUMBERS = {
    "boot_seconds": "Boot time (kernel start to boot_up_done), s",
    "uptime_seconds": "Uptime when checked, s",
    "ssh_seconds": "Start to SSH on 3922 answering, s",
}
RESULT_WORDS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}


@dataclasses.dataclass
class CheckResult:
    section: str
    check: str
    result: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    name: str = ""  # the test function (JUnit testcase name), e.g. test_nothing_listens_on_port_22


@dataclasses.dataclass
class RunSummary:
    checks: list[CheckResult]
    numbers: dict[str, str]

    def count(self, result: str) -> int:
        return sum(1 for c in self.checks if c.result == result)

    @property
    def failed(self) -> bool:
        return any(c.result in ("failed", "error") for c in self.checks)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.checks)


def humanize_test_name(name: str) -> str:
    """``test_sshd_listens_on_3922[eth0]`` -> ``Sshd listens on 3922 [eth0]``."""
    base, bracket, param = name.partition("[")
    words = base.removeprefix("test_").replace("_", " ").strip()
    words = words[:1].upper() + words[1:]
    return f"{words} [{param}" if bracket else words


def section_from_classname(classname: str) -> str:
    """``systemvm.check.appliance.test_iptables`` -> ``iptables``."""
    last = classname.split(".")[-1] if classname else ""
    return last.removeprefix("test_").replace("_", " ")


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_junit(path: str | Path) -> RunSummary:
    """Read a JUnit XML file written by pytest (``<testsuites>`` or a bare ``<testsuite>``)."""
    path = Path(path)
    try:
        root = etree.parse(str(path)).getroot()
    except OSError:
        raise UserError(f"JUnit XML {path} not found: run the suite with --junitxml={path} first") from None
    except etree.XMLSyntaxError as exc:
        raise UserError(f"JUnit XML {path} is not valid XML ({exc}): rerun the suite") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise UserError(f"{path} is not JUnit XML (root element <{root.tag}>): give pytest's --junitxml file")
    checks: list[CheckResult] = []
    numbers: dict[str, str] = {}
    for case in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        result, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                result = {"failure": "failed"}.get(tag, tag)
                message = _first_line(node.get("message")) or _first_line(node.text)
                break
        checks.append(
            CheckResult(
                section=props.get("section") or section_from_classname(case.get("classname", "")),
                check=props.get("check") or humanize_test_name(case.get("name", "?")),
                result=result,
                seconds=float(case.get("time") or 0.0),
                message=message,
                properties=props,
                name=case.get("name", ""),
            )
        )
        for key in BOOT_NUMBERS:
            if props.get(key):
                numbers[key] = props[key]
    return RunSummary(checks=checks, numbers=numbers)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: RunSummary, title: str, context: Mapping[str, str] | None = None) -> str:
    """The report page: heading, what was tested, verdict, checks table, failures, boot numbers."""
    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- **{key}**: {value}")
    if context:
        lines.append("")
    verdict = "FAILED" if summary.failed else "PASSED"
    if not summary.checks:
        verdict = "NO CHECKS RAN"
    lines.append(
        f"**{verdict}**: {summary.count('passed')} passed, {summary.count('failed')} failed, "
        f"{summary.count('error')} errors, {summary.count('skipped')} skipped in {summary.seconds:.1f} s"
    )
    lines += ["", "| Section | Check | Result | Time (s) |", "|---|---|---|---:|"]
    for c in summary.checks:
        word = RESULT_WORDS.get(c.result, c.result.upper())
        lines.append(f"| {_cell(c.section)} | {_cell(c.check)} | {word} | {c.seconds:.2f} |")
    problems = [c for c in summary.checks if c.result in ("failed", "error")]
    if problems:
        lines += ["", "## Failures", ""]
        for c in problems:
            lines.append(f"- **{_cell(c.check)}**: {_cell(c.message) or 'no message'}")
    numbers = {**summary.numbers}
    if numbers:
        lines += ["", "## Boot", "", "| Measure | Value |", "|---|---:|"]
        for key, label in BOOT_NUMBERS.items():
            if key in numbers:
                lines.append(f"| {label} | {_cell(numbers[key])} |")
    return "\n".join(lines) + "\n"


def write_report(
    junit_xml: str | Path, out: str | Path, title: str, context: Mapping[str, str] | None = None
) -> RunSummary:
    """Read ``junit_xml`` and write the Markdown report to ``out`` atomically; return the summary."""
    summary = parse_junit(junit_xml)
    with atomic_path(out) as tmp:
        tmp.write_text(render_markdown(summary, title, context), encoding="utf-8")
    return summary


def render_matrix_table(rows: Iterable[Mapping[str, str]], columns: Iterable[str]) -> str:
    """A Markdown/console table for the matrix summary: one row per VM."""
    cols = list(columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_cell(str(row.get(c, ""))) for c in cols) + " |")
    return "\n".join(out) + "\n"
