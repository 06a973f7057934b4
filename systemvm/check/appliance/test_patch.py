"""Patch and version handshake.

What a CloudStack management server does to a system VM once SSH answers, and reads back: it copies agent.zip,
cloud-scripts.tgz and patch-sysvms.sh to /var/cache/cloud/ and runs the script at once, reading the version
from the merged output (exactly two parts around ':'); it runs get_template_version.sh, which waits for
boot_up_done, and splits its line on '&' (exactly two parts); and it live-patches a running VM the same way.
The harness did all three with payloads of its own (:mod:`systemvm.boot.payload`); the image must be quiet
while a patch runs (nothing of its own acts on the delivered files) and always carry a scripts signature.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from systemvm import contract
from systemvm.boot import payload
from systemvm.boot.patch import template_version
from systemvm.check.appliance.target import Params, run_ok

pytestmark = pytest.mark.live


def _given(params: Params, key: str) -> dict[str, Any]:
    if not params.get(key):
        pytest.skip(f"the harness ran no {key.replace('_', ' ')} on this VM")
    return dict(params[key])


@pytest.fixture()
def boot_patch(params: Params) -> dict[str, Any]:
    return _given(params, "boot_patch")


@pytest.fixture()
def patched(params: Params) -> dict[str, Any]:
    """The last patch the harness applied (the live patch)."""
    return _given(params, "live_patch")


def test_patch_run_after_the_copy_gives_exactly_the_version(boot_patch: dict[str, Any]) -> None:
    """patch-sysvms.sh run right after the copy exits 0, and its merged output reads as version:<digest>"""
    assert boot_patch["exit_status"] == 0, (
        f"patch-sysvms.sh exited {boot_patch['exit_status']}: {boot_patch['output']}"
    )
    assert boot_patch["version"] == boot_patch["expected"], (
        f"CloudStack reads version {boot_patch['version']!r} from {boot_patch['output']!r} (it splits the "
        f"merged output on ':' and needs two parts); the scripts' digest is {boot_patch['expected']}"
    )


def test_handshake_answers_release_and_signature(
    host: Any, params: Params, boot_patch: dict[str, Any]
) -> None:
    """get_template_version.sh answers <release>&<signature>: two parts, the release of this image and the
    signature of the scripts applied, right after the boot's patch and now"""
    recorded = _given(params, "handshake")
    now = host.run(contract.TEMPLATE_VERSION_SCRIPT).stdout.strip()
    signature_now = host.file(contract.SCRIPTS_SIGNATURE_PATH).content_string.strip()
    for when, line, signature in (("after the boot's patch", recorded["line"], boot_patch["expected"]),
                                  ("now", now, signature_now)):  # fmt: skip
        parsed = template_version(line)
        assert parsed, (
            f"{when}, CloudStack cannot parse {line!r}: two parts around '&' (a missing signature leaves "
            "one), the release's third word x.y.z"
        )
        assert parsed[1] == signature, (
            f"{when}, the handshake reports signature {parsed[1]!r}, not {signature}"
        )
        if params.get("version"):
            assert parsed[0] == params["version"], f"{when}, the handshake reports release {parsed[0]}"


def test_live_patch_exits_0_with_the_version_cloudstack_reads(patched: dict[str, Any]) -> None:
    """A live patch of the running VM exits 0 and its output gives CloudStack the new scripts' digest"""
    status = patched["exit_status"]
    assert status == 0, f"patch-sysvms.sh exited {status}: {patched['output']}"
    assert patched["version"] == patched["expected"], (
        f"CloudStack reads version {patched['version']!r} from {patched['output']!r}; "
        f"the scripts' digest is {patched['expected']}"
    )


def test_scripts_signature_is_the_digest_of_the_kept_scripts(host: Any, patched: dict[str, Any]) -> None:
    """cloud-scripts-signature holds the digest of the applied cloud-scripts.tgz, kept in /usr/share/cloud;
    the delivered files are gone from /var/cache/cloud"""
    signature = host.file(contract.SCRIPTS_SIGNATURE_PATH)
    assert signature.exists, f"{contract.SCRIPTS_SIGNATURE_PATH} is missing"
    assert signature.content_string.strip() == patched["expected"]
    copy = host.file(contract.SCRIPTS_COPY_PATH)
    assert copy.exists, f"{contract.SCRIPTS_COPY_PATH} is missing: the patch did not keep its scripts"
    digest = run_ok(host, f"{patched['digest']}sum {contract.SCRIPTS_COPY_PATH}").split()[0]
    assert digest == patched["expected"]
    left = [name for name in contract.PATCH_FILES if host.file(f"{contract.CACHE_DIR}/{name}").exists]
    assert not left, f"the patch left {left} in {contract.CACHE_DIR}"


def test_scripts_of_the_live_patch_are_unpacked_over_root(host: Any, patched: dict[str, Any]) -> None:
    """The live patch's cloud-scripts.tgz was unpacked over / (its marker names the live payload)"""
    marker = host.file(f"/{payload.SCRIPTS_MARKER}")
    assert marker.exists and marker.content_string.strip() == patched["payload_id"]


def test_agent_is_fresh_from_agent_zip_on_agent_roles(
    host: Any, params: Params, patched: dict[str, Any]
) -> None:
    """The agent directory is agent.zip's content on secstorage and consoleproxy, empty on routers"""
    if params["role"] in contract.AGENT_ROLES:
        run = host.file(f"{contract.AGENT_DIR}/_run.sh")
        assert run.exists and run.mode & 0o100, f"{contract.AGENT_DIR}/_run.sh missing or not executable"
    else:
        agent = host.file(f"{contract.AGENT_DIR}/_run.sh")
        assert not agent.exists, f"a {params['role']} has an agent: the patch unpacked agent.zip"


def test_live_patch_logged_its_result(host: Any, patched: dict[str, Any]) -> None:
    """/var/log/livepatchsystemvm.log records the patch and the version it answered"""
    log = host.file(contract.LIVE_PATCH_LOG)
    assert log.exists, f"{contract.LIVE_PATCH_LOG} is missing"
    assert f"done: version {patched['expected']}, failed=0" in log.content_string


def test_patched_probe_passes_once_the_scripts_are_in(host: Any, patched: dict[str, Any]) -> None:
    """patched.sh /opt/cloud/bin/keystore* exits 0 (the management server waits for it), and 1 for a
    missing file"""
    probe = host.run(f"{contract.PATCHED_SCRIPT} /opt/cloud/bin/keystore*")
    assert probe.rc == 0, f"patched.sh exited {probe.rc}: {probe.stdout}{probe.stderr}"
    missing = host.run(f"{contract.PATCHED_SCRIPT} {shlex.quote('/opt/cloud/bin/no such file')}")
    assert missing.rc == 1
