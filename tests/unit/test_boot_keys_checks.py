"""The appliance checks of the optional boot keys (systemvm/check/appliance/test_boot_keys.py), run against a
recorded host: they pass on what a correctly configured VM answers and fail when a key was not applied."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest

with warnings.catch_warnings():  # deprecated since 3.11; Debian 12's python3, which the check uses, has it
    warnings.simplefilter("ignore", DeprecationWarning)
    crypt = pytest.importorskip("crypt")

from systemvm import contract
from systemvm.boot import testnet
from systemvm.check.appliance import test_boot_keys as checks
from systemvm.check.appliance.target import Params

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHarnessTestKey harness"


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str = ""


class Host:
    """Answers from recorded outputs by command prefix; commands that verify a hash run here for real."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def run(self, command: str) -> Result:
        if "python3 -W ignore" in command:
            done = subprocess.run(
                command.replace("python3", sys.executable, 1), shell=True, capture_output=True
            )
            return Result(done.returncode, "")
        for prefix, output in self.answers.items():
            if command.startswith(prefix):
                return Result(0, output)
        return Result(1, "", f"unrecorded: {command}")


def router_params() -> tuple[Params, contract.BootConfig]:
    plan = testnet.plan_test_network("router", "r-1-VM", 40000)
    cmdline = testnet.boot_args(plan, "r-1-VM", KEY, 8250).to_cmdline()
    params = Params({"target": "x", "role": "router", "flavour": "amd64", "kind": "vm", "cmdline": cmdline})
    return params, contract.read_config(params.cmdline_args)


def good_answers(config: contract.BootConfig) -> dict[str, str]:
    macs = "\n".join(f"eth{i}={mac}" for i, mac in enumerate(config.nic_macs))
    stored = crypt.crypt(config.vm_password or "", crypt.mksalt(crypt.METHOD_SHA512))
    return {
        'echo "eth0=': macs,
        "ip -6 -o addr show dev eth0": "2: eth0  inet6 fd00:a01:101::1/64 scope global \\ valid_lft forever",
        "ip -6 route show default": "default via fd00:a01:101::2 dev eth0 metric 1024 pref medium",
        "systemd-analyze cat-config": "[Time]\n#NTP=\n# /etc/systemd/timesyncd.conf.d/60-cloud-ntp.conf\n"
        "[Time]\nNTP=127.0.0.1 localhost\n",
        "getent shadow root": f"root:{stored}:19700:0:99999:7:::",
        "grep -cF": "0\n",
        "journalctl -b": "0\n",
        "stat -c %a": "600\n",
    }


def test_the_checks_pass_on_a_vm_that_applied_the_keys() -> None:
    params, config = router_params()
    host = Host(good_answers(config))
    checks.test_nics_carry_the_macs_nic_macs_lists(host, params)
    checks.test_nics_have_their_ipv6_addresses(host, params)
    checks.test_default_ipv6_route_is_ip6gateway(host, params)
    checks.test_timesyncd_uses_the_ntp_servers_sent(host, params)
    checks.test_root_password_is_vmpassword_and_kept_hashed_only(host, params)
    checks.test_command_line_copies_are_roots_only(host, params)


@pytest.mark.parametrize(
    ("check", "prefix", "output"),
    [
        (checks.test_nics_carry_the_macs_nic_macs_lists, 'echo "eth0=', "eth0=52:54:00:00:00:01\neth1="),
        (checks.test_nics_have_their_ipv6_addresses, "ip -6 -o addr show dev eth0", ""),
        (checks.test_default_ipv6_route_is_ip6gateway, "ip -6 route show default", ""),
        (checks.test_timesyncd_uses_the_ntp_servers_sent, "systemd-analyze cat-config", "[Time]\n#NTP=\n"),
        (
            checks.test_root_password_is_vmpassword_and_kept_hashed_only,
            "getent shadow root",
            "root:!:19700::::::",
        ),
        (checks.test_root_password_is_vmpassword_and_kept_hashed_only, "journalctl -b", "1\n"),
        (checks.test_command_line_copies_are_roots_only, "stat -c %a", "644\n"),
    ],
)
def test_the_checks_fail_when_a_key_was_not_applied(check, prefix, output) -> None:
    params, config = router_params()
    answers = good_answers(config)
    answers[prefix] = output
    with pytest.raises(AssertionError):
        check(Host(answers), params)


def test_a_wrong_password_hash_fails() -> None:
    params, config = router_params()
    answers = good_answers(config)
    answers["getent shadow root"] = f"root:{crypt.crypt('other', crypt.mksalt(crypt.METHOD_SHA512))}:1::::::"
    with pytest.raises(AssertionError, match="does not match"):
        checks.test_root_password_is_vmpassword_and_kept_hashed_only(Host(answers), params)


def test_the_checks_skip_when_the_keys_were_not_sent() -> None:
    params = Params({"target": "x", "role": "secstorage", "flavour": "amd64", "cmdline": "type=secstorage"})
    for check in (
        checks.test_nics_carry_the_macs_nic_macs_lists,
        checks.test_nics_have_their_ipv6_addresses,
        checks.test_default_ipv6_route_is_ip6gateway,
        checks.test_timesyncd_uses_the_ntp_servers_sent,
        checks.test_root_password_is_vmpassword_and_kept_hashed_only,
    ):
        with pytest.raises(pytest.skip.Exception):
            check(Host({}), params)
