"""Live patch and version handshake.

What CloudStack 4.16+'s management server does to a running system VM and reads back: patch-sysvms.sh run
from /var/cache/cloud/ with the copied agent.zip and cloud-scripts.tgz (the harness ran it after the boot,
with a payload of its own), the MD5 signature the version handshake compares, get_template_version.sh's line
and the patched.sh probe, each parsed as CloudStack parses it.
"""

from __future__ import annotations

import shlex

import pytest

from systemvm import contract
from systemvm.boot import payload
from systemvm.boot.patch import template_version
from systemvm.check.appliance.target import run_ok

pytestmark = pytest.mark.live


@pytest.fixture()
def patched(params) -> dict:
    if not params.get("live_patch"):
        pytest.skip("the harness ran no live patch on this VM")
    return params["live_patch"]


def test_live_patch_exits_0_with_the_version_cloudstack_reads(patched) -> None:
    """patch-sysvms.sh exits 0 and its output gives CloudStack the new scripts' MD5 as the version"""
    assert patched["exit_status"] == 0, (
        f"patch-sysvms.sh exited {patched['exit_status']}: {patched['output']}"
    )
    assert patched["version"] == patched["expected"], (
        f"CloudStack reads version {patched['version']!r} from {patched['output']!r}; "
        f"the scripts' MD5 is {patched['expected']}"
    )


def test_scripts_signature_is_the_md5_of_the_kept_scripts(host, patched) -> None:
    """cloud-scripts-signature holds the MD5 of the applied cloud-scripts.tgz, kept in /usr/share/cloud"""
    signature = host.file(contract.SCRIPTS_SIGNATURE_PATH)
    assert signature.exists, f"{contract.SCRIPTS_SIGNATURE_PATH} is missing"
    assert signature.content_string.strip() == patched["expected"]
    copy = host.file(contract.SCRIPTS_COPY_PATH)
    assert copy.exists, f"{contract.SCRIPTS_COPY_PATH} is missing: the patch did not keep its scripts"
    assert copy.md5sum == patched["expected"]
    assert not host.file(f"{contract.CACHE_DIR}/cloud-scripts.tgz").exists  # moved, as CloudStack's does


def test_scripts_of_the_live_patch_are_unpacked_over_root(host, patched) -> None:
    """The live patch's cloud-scripts.tgz was unpacked over / (its marker names the live payload)"""
    marker = host.file(f"/{payload.SCRIPTS_MARKER}")
    assert marker.exists and marker.content_string.strip() == patched["payload_id"]


def test_agent_is_fresh_from_agent_zip_on_agent_roles(host, params, patched) -> None:
    """The agent directory is agent.zip's content on secstorage and consoleproxy, absent on routers"""
    agent = host.file(contract.AGENT_DIR)
    if params["role"] in contract.AGENT_ROLES:
        run = host.file(f"{contract.AGENT_DIR}/_run.sh")
        assert run.exists and run.mode & 0o100, f"{contract.AGENT_DIR}/_run.sh missing or not executable"
    else:
        assert not agent.exists, f"a {params['role']} has {contract.AGENT_DIR}: the patch unpacked an agent"


def test_live_patch_logged_its_result(host, patched) -> None:
    """/var/log/livepatchsystemvm.log records the patch and the version it answered"""
    log = host.file(contract.LIVE_PATCH_LOG)
    assert log.exists, f"{contract.LIVE_PATCH_LOG} is missing"
    assert f"done: version {patched['expected']}, failed=0" in log.content_string


def test_template_version_answers_as_cloudstack_parses_it(host, params, patched) -> None:
    """get_template_version.sh prints release&signature: the release version parses, the signature is the
    recorded MD5"""
    out = run_ok(host, contract.TEMPLATE_VERSION_SCRIPT)
    parsed = template_version(out)
    assert parsed is not None, f"CloudStack cannot parse {out.strip()!r} (two parts around '&', x.y.z)"
    release, signature = parsed
    recorded = host.file(contract.SCRIPTS_SIGNATURE_PATH).content_string.strip()
    assert signature == recorded, (
        f"the handshake reports signature {signature!r}, the VM recorded {recorded!r}"
    )
    if params.get("version"):
        assert release == params["version"], f"the handshake reports release {release}"


def test_patched_probe_passes_once_the_scripts_are_in(host, patched) -> None:
    """patched.sh /opt/cloud/bin/keystore* exits 0 (the management server waits for it), and 1 for a
    missing file"""
    probe = host.run(f"{contract.PATCHED_SCRIPT} /opt/cloud/bin/keystore*")
    assert probe.rc == 0, f"patched.sh exited {probe.rc}: {probe.stdout}{probe.stderr}"
    missing = host.run(f"{contract.PATCHED_SCRIPT} {shlex.quote('/opt/cloud/bin/no such file')}")
    assert missing.rc == 1
