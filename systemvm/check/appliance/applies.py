"""Which checks apply to a target, and what a skip means: a skipped check that applies fails the cell.

Every check either applies to the target (its role, hypervisor, flavour and kind: ``vm`` or ``image``) or
it does not. A check that applies must run. When it skips anyway, its input was missing (the harness left
out the network lab, the live patch, the patch payload, the management port, a key of the command line;
a tool is missing on the test runner), and a pass would hide that: so the skip is turned into a failure
of the check, which fails the cell (``systemvm.check.suite``, each matrix cell). A harness regression can
no longer stay green.

How a check says where it applies (rules for everyone who adds a check):

1. **Declare it** with the ``applies`` marker on the check or its module (``pytestmark``); every argument is
   a tuple of values, an omitted one means all::

       pytestmark = [pytest.mark.live, pytest.mark.applies(roles=contract.AGENT_ROLES)]

       @pytest.mark.applies(roles=contract.GUEST_FACING_ROLES, hypervisors=("kvm",))
       def test_...

   ``roles``, ``hypervisors``, ``flavours``, ``kinds``; the ``live`` marker is ``kinds=("vm",)``. Where a
   check does not apply it is skipped as "not applicable" before any of its fixtures runs.
2. **At run time**, when whether it applies depends on more than those four (what the role does with the
   target's kind, say), call :func:`not_applicable` with the reason: a skip that is not a failure.
3. **Any other skip** (``pytest.skip``, ``pytest.importorskip``, a fixture that skips) of a check that
   applies is reported as a failure: "skipped, but it applies to this <role> on <hypervisor> (<flavour>)",
   then the reason. So a check may keep ``pytest.skip("the harness ran no live patch")`` for a missing
   input: the reason tells what was missing, and the cell fails.

Declare what the harness gives each cell: a check of a key that the KVM harness sends but the other
hypervisors' do not applies to ``hypervisors=("kvm",)``; if the KVM harness stops sending it, the cell
fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import pytest

NOT_APPLICABLE = "not applicable: "
DIMENSIONS = ("roles", "hypervisors", "flavours", "kinds")
_PARAM_OF = {"roles": "role", "hypervisors": "hypervisor", "flavours": "flavour", "kinds": "kind"}


class NotApplicable(pytest.skip.Exception):
    """A skip that says the check does not apply to this target: never a failure."""


def not_applicable(reason: str) -> NoReturn:
    """Skip this check: it does not apply to this target (``reason`` says why)."""
    __tracebackhide__ = True
    raise NotApplicable(msg=NOT_APPLICABLE + reason, pytrace=False)


def why_not_applicable(item: pytest.Item, params: Mapping[str, Any]) -> str | None:
    """Why a check's ``applies``/``live`` markers rule this target out; None when the check applies."""
    wanted: dict[str, set[str]] = {}
    if item.get_closest_marker("live") is not None:
        wanted["kinds"] = {"vm"}
    for marker in item.iter_markers("applies"):
        unknown = set(marker.kwargs) - set(DIMENSIONS)
        if unknown or marker.args:
            raise pytest.UsageError(
                f"{item.nodeid}: applies() takes {', '.join(DIMENSIONS)} as keywords, not {sorted(unknown)}"
            )
        for dimension, values in marker.kwargs.items():
            chosen = {str(v) for v in _as_tuple(values)}
            wanted[dimension] = wanted[dimension] & chosen if dimension in wanted else chosen
    for dimension, allowed in wanted.items():
        key = _PARAM_OF[dimension]
        value = str(params.get(key, ""))
        if value not in allowed:
            return f"for {key} {' or '.join(sorted(allowed))}, not {value or 'none'}"
    return None


def _as_tuple(values: Iterable[str] | str) -> tuple[str, ...]:
    return (values,) if isinstance(values, str) else tuple(values)


def target_words(params: Mapping[str, Any]) -> str:
    """``this router on kvm (amd64)``, or ``this image (amd64)``."""
    if params.get("kind") == "image":
        return f"this {params.get('role', '?')} image ({params.get('flavour', '?')})"
    return f"this {params.get('role', '?')} on {params.get('hypervisor', '?')} ({params.get('flavour', '?')})"


def skip_is_a_failure(report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException] | None) -> bool:
    """Whether this report is a skip of a check that applies (any skip but :class:`NotApplicable`)."""
    if not report.skipped or excinfo is None or hasattr(report, "wasxfail"):
        return False
    return excinfo.errisinstance(pytest.skip.Exception) and not excinfo.errisinstance(NotApplicable)


def as_failure(report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException], params: Any) -> None:
    """Turn the skip in ``report`` into a failure that says the check applies and why it skipped."""
    reason = str(getattr(excinfo.value, "msg", "") or excinfo.value) or "no reason given"
    report.outcome = "failed"  # in a fixture (setup) pytest reports it as an error: the cell fails either way
    report.longrepr = f"skipped, but it applies to {target_words(params)}: {reason}"


def tidy_not_applicable(
    report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException] | None
) -> None:
    """Report a :class:`NotApplicable` skip by its reason alone, as a plain ``pytest.skip`` reads (the JUnit
    XML would otherwise prefix it with the class's dotted name)."""
    if report.skipped and excinfo is not None and excinfo.errisinstance(NotApplicable):
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            path, line, _ = report.longrepr
            report.longrepr = (path, line, str(getattr(excinfo.value, "msg", "") or excinfo.value))
