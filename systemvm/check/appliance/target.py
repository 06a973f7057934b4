"""What the appliance checks share: the parameters, running commands, and parsers of command output.

The parsers are plain functions so unit tests can feed them recorded outputs.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from systemvm.defaults import elements_dir

if TYPE_CHECKING:
    from systemvm.profile import CloudStackProfile

PARAMS_ENV = "SYSTEMVM_APPLIANCE_PARAMS"


class Params(dict):
    """The parameters file, with the derived values the checks use."""

    @property
    def cmdline_args(self) -> dict[str, str]:
        from systemvm.contract import parse_cmdline

        return parse_cmdline(self.get("cmdline") or "")

    @property
    def control_nic(self) -> str:
        from systemvm.contract import control_nic

        ssh_on_guest = self.cmdline_args.get("sshonguest", "").lower() == "true"
        return control_nic(self["role"], self.get("hypervisor", "kvm"), ssh_on_guest)

    @property
    def control_ip(self) -> str:
        nic = self.control_nic
        ip = self.cmdline_args.get(f"{nic}ip", "")
        assert ip, f"the command line the harness sent has no {nic}ip= (the control NIC's address)"
        return ip

    def manifest(self) -> dict[str, Any]:
        path = self.get("manifest")
        assert path, "no build manifest given to the suite (params key 'manifest')"
        return json.loads(Path(path).read_text())

    def cloudstack_profile(self) -> CloudStackProfile:
        """The CloudStack line the image was built for: the build manifest's ``cloudstack_profile`` (a
        manifest from before it was recorded: its version's line), so a 4.22 image is checked as 4.22."""
        from systemvm.profile import manifest_profile

        manifest = self.manifest()
        if not manifest.get("version") and self.get("version"):
            manifest = {**manifest, "version": self["version"]}
        return manifest_profile(manifest)

    def listener_messages(self) -> list[Any]:
        state = self.get("listener") or {}
        if isinstance(state, str):
            state = json.loads(Path(state).read_text())
        return list(state.get("messages", []))


def load_params() -> Params:
    path = os.environ.get(PARAMS_ENV)
    if not path:
        raise pytest.UsageError(f"set {PARAMS_ENV} to the suite's parameters JSON file")
    data = json.loads(Path(path).read_text())
    missing = [k for k in ("target", "role", "flavour") if not data.get(k)]
    if missing:
        raise pytest.UsageError(f"{path}: missing keys {', '.join(missing)}")
    data.setdefault("kind", "vm")
    data.setdefault("hypervisor", "kvm")
    data.setdefault("packages_dir", str(elements_dir() / "systemvm-packages"))
    return Params(data)


def run_ok(host: Any, command: str) -> str:
    """Run ``command`` on the target; fail the check with its output when it exits non-zero."""
    result = host.run(command)
    assert result.rc == 0, f"`{command}` exited {result.rc}: {(result.stderr or result.stdout).strip()[:500]}"
    return result.stdout


def boot_epoch(host: Any) -> int:
    """The target's boot time (seconds since the epoch, from /proc/stat btime)."""
    for line in run_ok(host, "cat /proc/stat").splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise AssertionError("no btime line in /proc/stat")


# --- parsers of command output (unit-tested with recorded outputs) ---------------------------------


def parse_listeners(ss_output: str) -> list[tuple[str, int, str]]:
    """``ss -Htlnp`` / ``ss -Hulnp`` output -> [(local address, port, process text)]."""
    found: list[tuple[str, int, str]] = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        # State Recv-Q Send-Q Local:Port Peer:Port [Process]; UDP's state is UNCONN
        local = fields[3]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        address = address.strip("[]")
        address = address.split("%", 1)[0]  # 0.0.0.0%eth0 -> 0.0.0.0 (device-bound wildcard)
        found.append((address, int(port), " ".join(fields[5:])))
    return found


def read_package_list(packages_dir: str | Path, flavour: str) -> list[str]:
    """The package data files: ``packages.txt`` plus ``packages-<flavour>.txt``; '#' starts a comment."""
    names: list[str] = []
    directory = Path(packages_dir)
    for name in ("packages.txt", f"packages-{flavour}.txt"):
        path = directory / name
        if not path.is_file():
            if name == "packages.txt":
                raise AssertionError(f"package data file {path} is missing")
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            names += [w for w in words if w not in names]
    return names


def parse_policies(rules: str) -> dict[str, str]:
    """Chain policies from ``iptables -S`` (``-P INPUT DROP``) or a save file (``:INPUT DROP [0:0]``)."""
    policies: dict[str, str] = {}
    table = "filter"
    for line in rules.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif table != "filter":
            continue
        elif line.startswith("-P "):
            _, chain, policy = line.split()[:3]
            policies[chain] = policy
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if policy != "-":
                policies[chain] = policy
    return policies


def parse_rules(rules: str, chain: str = "INPUT") -> list[dict[str, str]]:
    """``-A CHAIN`` rules of the filter table as {option: value} (``-i``, ``-p``, ``--dport``, ``-j``...)."""
    parsed: list[dict[str, str]] = []
    table = "filter"
    for line in rules.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        words = line.split()
        if table != "filter" or len(words) < 2 or words[0] != "-A" or words[1] != chain:
            continue
        rule: dict[str, str] = {"text": line}
        key = None
        for word in words[2:]:
            if word.startswith("-") and not word.lstrip("-").isdigit():
                key = word
                rule[key] = rule.get(key, "")
            elif key is not None:
                rule[key] = f"{rule[key]} {word}".strip()
        parsed.append(rule)
    return parsed


def rule_ports(rule: dict[str, str]) -> set[int] | None:
    """The destination ports a rule matches; None when it matches every port."""
    spec = rule.get("--dport") or rule.get("--dports") or rule.get("--destination-port")
    if spec is None:
        return None
    ports: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _multicast(destination: str) -> bool:
    try:
        return bool(destination) and ipaddress.ip_network(destination, strict=False).is_multicast
    except ValueError:
        return False


def rules_accepting(
    rules: list[dict[str, str]], port: int, protocols: tuple[str, ...] = ("tcp",), some_sources: bool = False
) -> list:
    """Rules that accept new traffic to ``port`` (any interface, protocol in ``protocols`` or any);
    ``some_sources``: a rule limited to some sources counts too (a router's DNS for its guest network)."""
    accepting = []
    for rule in rules:
        if rule.get("-j") != "ACCEPT":
            continue
        states = (rule.get("--ctstate") or rule.get("--state") or "NEW").split(",")
        if "NEW" not in states:
            continue  # only established/related traffic
        if _multicast(rule.get("-d", "")):
            continue  # a multicast group (a redundant router's VRRP, conntrackd): no TCP connection to us
        if rule.get("-p") and rule["-p"] not in protocols:
            continue
        if (rule.get("-s") or rule.get("--src-range")) and not some_sources:
            continue  # restricted to some sources: not "accepted" in general
        ports = rule_ports(rule)
        if ports is None or port in ports:
            accepting.append(rule)
    return accepting


def key_identity(line: str) -> tuple[str, str] | None:
    """An authorized_keys line -> (key type, base64 blob); options and comments ignored."""
    words = line.strip().split()
    if not words or words[0].startswith("#"):
        return None
    for index, word in enumerate(words):
        if word.startswith(("ssh-", "ecdsa-", "sk-")) and index + 1 < len(words):
            return word, words[index + 1]
    return None


def parse_plugins(listplugins_output: str) -> set[str]:
    """``ipsec listplugins`` -> names of loaded plugins (unindented ``name:`` lines)."""
    names = set()
    for line in listplugins_output.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":") and " " not in line.strip():
            names.add(line.strip()[:-1])
    return names


def normalized_rule(rule: dict[str, str]) -> frozenset[tuple[str, str]]:
    """A rule's meaning without spelling: match-module names dropped, comma lists sorted."""
    items = []
    for key, value in rule.items():
        if key in ("text", "-m"):
            continue
        if key in ("--ctstate", "--state", "--dports"):
            value = ",".join(sorted(value.split(",")))
        if key == "--state":
            key = "--ctstate"  # -m state and -m conntrack match the same thing
        if key in ("-s", "-d"):
            value = _network(value)  # the kernel keeps the network: 10.1.1.1/24 is listed as 10.1.1.0/24
        items.append((key, value))
    return frozenset(items)
