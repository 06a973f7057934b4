"""A skipped check that applies to the target fails it (systemvm/check/appliance/applies.py); a check that
does not apply skips as not applicable. Run through the real suite runner on this host (testinfra's local
backend): each selected check skips before it touches the target, so no VM is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from systemvm.check.report import parse_junit
from systemvm.check.suite import PACKAGES_DIR, REPO, check_node, run_checks

LIVE_PATCH = check_node("test_patch.py") + "test_live_patch_exits_0_with_the_version_cloudstack_reads"
PAYLOAD = check_node("test_role_contract.py") + "test_the_delivered_patch_was_applied"
MGMT_PORT = check_node("test_role_contract.py") + "test_agent_runs_with_the_boot_command_line"
AGENT = check_node("test_agent.py") + "test_cloud_service_is_active"
NFS = check_node("test_storage_traffic.py") + "test_secondary_storage_mounts_over_nfs_v3"
IPV6 = check_node("test_boot_keys.py") + "test_nics_have_their_ipv6_addresses"
ROUTER_SNAT = (
    check_node("test_router_traffic.py") + "test_guest_traffic_leaves_with_the_routers_public_address"
)
# what the harness gives a KVM storage VM, less what each case leaves out
VM = {"target": "local://", "kind": "vm", "role": "secstorage", "hypervisor": "kvm", "flavour": "amd64",
      "version": "4.20.0", "packages_dir": str(PACKAGES_DIR), "cmdline": "template=domP type=secstorage",
      "payload_id": "svmt-test", "mgmt_port": 8250}  # fmt: skip


def outcomes(tmp_path: Path, nodes: list[str], **changes: Any) -> dict[str, tuple[str, str]]:
    """{node: (result, message)} of one suite run on this host with ``VM`` changed by ``changes``."""
    params = {k: v for k, v in {**VM, **changes}.items() if v is not None}
    summary = parse_junit(run_checks(params, tmp_path, "cell", select=nodes))
    by_name = {check.name: (check.result, check.message) for check in summary.checks}
    return {node: by_name[node.rsplit("::", 1)[1]] for node in nodes}


# One suite run per target (each costs a pytest start): a KVM storage VM the harness left every input out
# for, a KVM router, and the same checks on other hypervisors and on an image.
LEFT_OUT = {"live_patch": None, "payload_id": None, "mgmt_port": None, "lab": None}


@pytest.fixture(scope="module")
def storage_vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    nodes = [LIVE_PATCH, PAYLOAD, MGMT_PORT, NFS, IPV6]
    return outcomes(tmp_path_factory.mktemp("storage"), nodes, **LEFT_OUT)


@pytest.fixture(scope="module")
def router_vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    return outcomes(tmp_path_factory.mktemp("router"), [AGENT, NFS, IPV6], role="router", **LEFT_OUT)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """A router on XenServer (no lab, no IPv6 sent there), the live patch on an image."""
    found = outcomes(
        tmp_path_factory.mktemp("xen"), [ROUTER_SNAT, IPV6], role="router", hypervisor="xenserver", **LEFT_OUT
    )
    image = outcomes(tmp_path_factory.mktemp("img"), [LIVE_PATCH], kind="image", **LEFT_OUT)
    return found | {"image " + node: value for node, value in image.items()}


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (LIVE_PATCH, "the harness ran no live patch on this VM"),
        (PAYLOAD, "the harness delivered no patch payload"),
        (MGMT_PORT, "the harness named no management port"),
        (NFS, "this secstorage has no network lab around it"),
    ],
    ids=["live-patch", "payload", "management-port", "lab"],
)
def test_a_check_that_applies_fails_when_the_harness_leaves_its_input_out(storage_vm, node, reason):
    result, message = storage_vm[node]
    assert result in ("failed", "error"), message  # a skip in a fixture fails the check's setup: an error
    assert "skipped, but it applies to this secstorage on kvm (amd64): " in message
    assert reason in message


@pytest.mark.parametrize(
    ("where", "node", "reason"),
    [
        ("elsewhere", "image " + LIVE_PATCH, "for kind vm, not image"),
        ("router_vm", AGENT, "for role consoleproxy or secstorage, not router"),
        ("elsewhere", ROUTER_SNAT, "the network lab is built around KVM VMs, not a router on xenserver"),
        ("router_vm", NFS, "these lab checks are for a secstorage, not a router"),
        ("storage_vm", IPV6, "for role dhcpsrvr or router or vpcrouter, not secstorage"),
        ("elsewhere", IPV6, "for hypervisor kvm, not xenserver"),
    ],
    ids=[
        "live-on-image",
        "agent-on-router",
        "lab-on-xenserver",
        "lab-of-another-role",
        "ipv6-role",
        "ipv6-hv",
    ],
)
def test_a_check_that_does_not_apply_skips_as_not_applicable(request, where, node, reason):
    result, message = request.getfixturevalue(where)[node]
    assert result == "skipped", message
    assert message.startswith("not applicable: ") and reason in message


def test_a_skip_inside_a_check_is_a_failure_where_it_applies_only(router_vm, storage_vm):
    """The same missing IPv6 keys: a KVM router fails, a storage VM (no IPv6 sent) does not apply."""
    assert router_vm[IPV6][0] in ("failed", "error")
    assert storage_vm[IPV6][0] == "skipped"


def test_an_e2e_run_that_skipped_everything_says_it_tested_nothing():
    """``pytest -m e2e`` without invoke ci's environment: exit 5 and one line, not a green run of skips."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYSTEMVM_ARTIFACTS", "SYSTEMVM_RAW_DISKS")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "e2e", "-p", "no:cacheprovider", "-q",
         "tests/e2e/test_seed_real_exports.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout[-2000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("tested nothing: ")]
    assert said and "all 3 e2e tests skipped" in said[0] and "SYSTEMVM_ARTIFACTS" in said[0]


def test_the_projects_own_modules_are_imported_never_skipped_for():
    """A test that skips when a module of ours is missing would pass a broken package: import them."""
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path == Path(__file__):
            continue
        text = path.read_text()
        for needle in ('importorskip("systemvm', "importorskip('systemvm", 'find_spec("systemvm'):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert not offenders, offenders
