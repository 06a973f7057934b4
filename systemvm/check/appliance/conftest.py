"""The appliance suite: testinfra checks run against one booted System VM (or a chroot of the image).

The suite runs only when a target is given: ``SYSTEMVM_APPLIANCE_PARAMS=/path/params.json pytest
systemvm/check/appliance``. Without that variable nothing here is collected. ``systemvm.check.suite`` writes
the parameters file after booting a VM through the harness; its keys:

- ``target``: testinfra host spec (``paramiko://root@127.0.0.1:40022?ssh_identity_file=...``,
  ``chroot:///mnt/image`` or ``local://``)
- ``kind``: ``vm`` (a running system VM) or ``image`` (a chroot: checks that need a running system skip)
- ``role``, ``hypervisor``, ``flavour``, ``version``, ``name``, ``cmdline`` (the command line the
  harness sent), ``manifest`` (path of the build manifest JSON), ``packages_dir`` (the package data
  files; default ``elements/systemvm-packages``)
- ``ssh``: ``{"host", "port", "key_file"}`` as reached from the test runner (key login, password refusal)
- ``listener``: ``{"messages": [...]}`` what the harness's management listener received (or a path to a
  JSON file holding that)
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from systemvm.check.appliance.target import PARAMS_ENV, Params, load_params

# Guard: without a target nothing here is collected (a plain `pytest` of the repository stays fast).
collect_ignore_glob = [] if os.environ.get(PARAMS_ENV) else ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs a running system VM (skipped against an image chroot)")


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


@pytest.fixture(autouse=True)
def _name_the_check(request: pytest.FixtureRequest, record_property: Any, params: Params) -> None:
    """Record a release engineer's name for each check (docstring) and its section (module docstring)."""
    doc = (request.function.__doc__ or "").strip().splitlines()
    module_doc = (request.module.__doc__ or "").strip().splitlines()
    if doc:
        callspec = getattr(request.node, "callspec", None)  # a parametrized check: which case it is
        record_property("check", doc[0].strip() + (f" ({callspec.id})" if callspec else ""))
    if module_doc:
        record_property("section", module_doc[0].strip().rstrip("."))
    if request.node.get_closest_marker("live") and params["kind"] != "vm":
        pytest.skip("needs a running system VM")
