"""The appliance suite: testinfra checks run against one booted System VM (or a chroot of the image).

The suite runs only when a target is given: ``SYSTEMVM_APPLIANCE_PARAMS=/path/params.json pytest
systemvm/check/appliance``. Without that variable nothing here is collected. ``systemvm.check.suite`` writes
the parameters file after booting a VM through the harness; its keys:

- ``target``: testinfra host spec (``paramiko://root@127.0.0.1:40022?ssh_identity_file=...``,
  ``chroot:///mnt/image`` or ``local://``)
- ``kind``: ``vm`` (a running system VM) or ``image`` (a chroot: checks that need a running system do not
  apply)
- ``role``, ``hypervisor``, ``flavour``, ``version``, ``name``, ``cmdline`` (the command line the
  harness sent), ``manifest`` (path of the build manifest JSON), ``packages_dir`` (the package data
  files; default ``elements/systemvm-packages``)
- ``ssh``: ``{"host", "port", "key_file"}`` as reached from the test runner (key login, password refusal)
- ``listener``: ``{"messages": [...]}`` what the harness's management listener received (or a path to a
  JSON file holding that)

Where each check applies, and why a skipped check that applies fails: :mod:`systemvm.check.appliance.applies`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from systemvm.check.appliance import applies
from systemvm.check.appliance.target import PARAMS_ENV, Params, load_params

# Guard: without a target nothing here is collected (a plain `pytest` of the repository stays fast).
collect_ignore_glob = [] if os.environ.get(PARAMS_ENV) else ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs a running system VM (not applicable to an image chroot)")
    config.addinivalue_line(
        "markers",
        "applies(roles=, hypervisors=, flavours=, kinds=): where the check applies; a skip of a check that "
        "applies fails it (systemvm/check/appliance/applies.py)",
    )


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params()


@pytest.fixture(scope="session")
def host(params: Params) -> Any:
    """The testinfra host of the target (overrides testinfra's ``--hosts`` fixture)."""
    import testinfra

    target = params["target"]
    if target.startswith("chroot://"):  # testinfra takes a chroot as a bare path plus connection=chroot
        return testinfra.get_host(target.removeprefix("chroot://"), connection="chroot")
    return testinfra.get_host(target)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Name each check for a release engineer (its docstring; its section: the module docstring), then skip
    it as not applicable where its markers rule this target out, before any of its fixtures runs."""
    function, module = getattr(item, "function", None), getattr(item, "module", None)
    doc = ((function.__doc__ if function is not None else "") or "").strip().splitlines()
    module_doc = ((module.__doc__ if module is not None else "") or "").strip().splitlines()
    if doc:
        callspec = getattr(item, "callspec", None)  # a parametrized check: which case it is
        item.user_properties.append(("check", doc[0].strip() + (f" ({callspec.id})" if callspec else "")))
    if module_doc:
        item.user_properties.append(("section", module_doc[0].strip().rstrip(".")))
    reason = applies.why_not_applicable(item, load_params())
    if reason is not None:
        applies.not_applicable(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skip of a check that applies is a failure (:mod:`systemvm.check.appliance.applies`)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if applies.skip_is_a_failure(report, call.excinfo):
        assert call.excinfo is not None
        applies.as_failure(report, call.excinfo, load_params())
    applies.tidy_not_applicable(report, call.excinfo)
