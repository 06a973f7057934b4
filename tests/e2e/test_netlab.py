"""The network lab for real, without a VM: namespaces, bridges, taps (one held by a diskless QEMU), the
services, and that nothing is left afterwards. A "fake router" namespace made here stands in for the router
VM: its NICs are plugged into the lab as the VM's taps will be.

Traffic goes only between namespaces these tests made (never to the host's own networks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from systemvm.lab import netlab
from systemvm.lab import services as labservices

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, bridges and taps need root"),
]

REPO = Path(__file__).resolve().parents[2]
PLAN = netlab.LabPlan()


def sh(*command: str, netns: str | None = None, timeout: float = 30.0) -> str:
    argv = ["ip", "netns", "exec", netns, *command] if netns else list(command)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


def curl(netns: str, url: str, *args: str) -> str:
    return sh("curl", "--silent", "--show-error", "--max-time", "5", *args, url, netns=netns)


class FakeRouter:
    """A namespace with one veth per lab network, plugged into the lab like the router VM's taps."""

    def __init__(self, lab: netlab.NetLab) -> None:
        self.lab = lab
        self.netns = lab.netns("fakerouter")  # the lab's prefix: a crashed test leaves nothing unnamed
        sh("ip", "netns", "add", self.netns)
        nics = {"guest": (PLAN.router_guest_ip, "eth0"), "public": (PLAN.router_public_ip, "eth1")}
        for index, (network, (address, inside)) in enumerate(nics.items()):
            outside = f"{lab.prefix}vt{index}"  # a lab device name: cleanup_leftovers finds it
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", self.netns)
            sh("ip", "-n", self.netns, "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "-n", self.netns, "link", "set", inside, "up")
            lab.plug(outside, network)  # the same call the VM's taps get
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def close(self) -> None:
        netlab.remove_netns(self.netns)  # its processes (charon), then the namespace with its veths


@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.NetLab]:
    with netlab.net_lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def services(lab: netlab.NetLab) -> dict[str, netlab.Service]:
    web1, web2 = labservices.start_web_backends(lab)
    return {
        "web1": web1,
        "web2": web2,
        "http": labservices.start_public_http(lab, {"template.bin": b"x" * 4096}),
        "iperf3": labservices.start_iperf3(lab),
        "nfs": labservices.start_nfs_export(lab, {"hello.txt": b"hello from secondary storage\n"}),
        "ipsec": labservices.start_ipsec_peer(lab),
    }


@pytest.fixture(scope="module")
def router(lab: netlab.NetLab) -> Iterator[FakeRouter]:
    fake = FakeRouter(lab)
    try:
        yield fake
    finally:
        fake.close()


def _root_addresses() -> dict[str, list[str]]:
    out = json.loads(sh("ip", "-j", "addr", "show"))
    return {entry["ifname"]: [a["local"] for a in entry.get("addr_info", [])] for entry in out}


def test_the_lab_is_up_and_nothing_of_it_is_in_the_root_namespace(lab: netlab.NetLab) -> None:
    existing = netlab.list_netns()
    for name in lab.namespaces():
        assert name in existing
    bridge = json.loads(sh("ip", "-j", "-n", lab.switch("guest"), "link", "show", "master", "br0"))
    assert sorted(port["ifname"] for port in bridge) == ["client", "web1", "web2"]
    assert f"{PLAN.client_ip}/24" in sh("ip", "-n", lab.netns("client"), "-o", "addr", "show", "dev", "eth0")
    assert f"default via {PLAN.router_guest_ip}" in sh("ip", "-n", lab.netns("web1"), "route")
    assert "inet6" not in sh("ip", "-n", lab.netns("client"), "addr")  # no stray neighbour discovery

    tap = lab.add_tap("public")
    assert len(tap) <= 15 and tap.startswith(lab.prefix)
    addresses = _root_addresses()
    assert addresses[tap] == [], "a lab tap in the root namespace has an address"
    assert Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").read_text().strip() == "1"
    lab_names = [name for name in addresses if name.startswith(lab.prefix)]
    assert lab_names == [tap], f"lab devices in the root namespace: {lab_names}"
    routes = sh("ip", "route", "show", "table", "all")
    assert f"dev {lab.prefix}" not in routes
    for network in (PLAN.guest_cidr, PLAN.public_cidr, PLAN.site_cidr):
        assert network not in routes, f"{network} is routed in the root namespace"
    with pytest.raises(netlab.LabError, match="no process holds the tap"):
        lab.plug(tap)  # nothing opened it: it stays in the root namespace
    assert tap in _root_addresses()


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_a_tap_qemu_holds_keeps_working_in_the_lab(
    lab: netlab.NetLab, services: dict[str, netlab.Service]
) -> None:
    """A diskless QEMU joins two taps with its hub: the lab's (plugged into the guest switch after QEMU
    opened it) and one moved into a namespace of this test. HTTP from there reaches both backends, so
    QEMU's descriptors work after the move; QEMU's exit takes the carrier."""
    lab_tap = lab.add_tap("guest")
    far_tap = f"{lab.prefix}qt0"  # a lab tap's pattern: cleanup_leftovers finds it after a crash
    far_ns = lab.netns("qemu-peer")
    sh("ip", "tuntap", "add", "dev", far_tap, "mode", "tap")
    sh("ip", "netns", "add", far_ns)
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg", "-m", "16",
         "-netdev", f"tap,id=lab,ifname={lab_tap},script=no,downscript=no",
         "-netdev", f"tap,id=far,ifname={far_tap},script=no,downscript=no",
         "-netdev", "hubport,id=p0,hubid=0,netdev=lab", "-netdev", "hubport,id=p1,hubid=0,netdev=far"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        lab.plug(lab_tap, timeout=10)  # as the harness will: right after the start, it waits for QEMU
        _wait(lambda: qemu.poll() is not None or netlab.tap_holders(far_tap) == [qemu.pid])
        assert qemu.poll() is None, qemu.stderr.read().decode() if qemu.stderr else ""
        sh("ip", "link", "set", far_tap, "netns", far_ns)
        sh("ip", "-n", far_ns, "addr", "add", "10.1.1.2/24", "dev", far_tap)
        sh("ip", "-n", far_ns, "link", "set", far_tap, "up")
        assert lab.has_carrier(lab_tap, "guest")
        assert netlab.tap_holders(lab_tap) == [qemu.pid], "QEMU lost the tap when it moved"
        assert f"{lab_tap}: " not in sh("ip", "-o", "link", "show")  # not in the root namespace any more
        bodies = {curl(far_ns, f"http://{ip}/").strip() for ip in PLAN.backend_ips}
        assert bodies == {"web1", "web2"}
    finally:
        qemu.kill()
        qemu.wait()
        subprocess.run(["ip", "netns", "del", far_ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", far_tap], capture_output=True, check=False)  # if never moved
    _wait(lambda: not lab.has_carrier(lab_tap, "guest"), timeout=5)


def test_the_fake_router_reaches_both_backends_and_the_public_server_sees_its_snat(
    lab: netlab.NetLab, services: dict[str, netlab.Service], router: FakeRouter
) -> None:
    assert curl(router.netns, f"http://{PLAN.backend_ips[0]}/").strip() == "web1"
    assert curl(router.netns, f"http://{PLAN.backend_ips[1]}/").strip() == "web2"
    assert services["web2"].clients_seen()[-1] == PLAN.router_guest_ip
    # the fake router routes the client out through its public NIC with SNAT, as the VM router will
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", netns=router.netns)
    sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth1", "-j", "MASQUERADE", netns=router.netns)
    body = curl(lab.netns("client"), f"http://{PLAN.server_ip}/template.bin")
    assert body == "x" * 4096
    assert services["http"].clients_seen()[-1] == PLAN.router_public_ip
    curl(router.netns, f"http://{PLAN.server_ip}/template.bin", "--output", "/dev/null")
    assert services["http"].clients_seen()[-1] == PLAN.router_public_ip


def test_the_nfs_export_is_served_to_the_public_network(
    services: dict[str, netlab.Service], router: FakeRouter
) -> None:
    """MOUNT (showmount), then NFSv3 and v4 reads and a write with libnfs: a user-space client, as this
    kind of host's kernel has no NFS client (the storage VM's kernel has one)."""
    assert "/export" in sh("showmount", "--exports", PLAN.server_ip, netns=router.netns)
    url = f"nfs://{PLAN.server_ip}{labservices.NFS_EXPORT}"
    for version in ("3", "4"):
        text = sh("nfs-cat", f"{url}/hello.txt?version={version}", netns=router.netns)
        assert text == "hello from secondary storage\n"
    local = services["nfs"].files["export"].parent / "upload.txt"
    local.write_text("written by the storage VM\n")
    sh("nfs-cp", str(local), f"{url}/upload.txt", netns=router.netns)
    assert (services["nfs"].files["export"] / "upload.txt").read_text() == "written by the storage VM\n"


def test_iperf3_answers_on_the_public_server(services: dict[str, netlab.Service], router: FakeRouter) -> None:
    report = json.loads(sh("iperf3", "-c", PLAN.server_ip, "-n", "1M", "-J", netns=router.netns))
    assert "error" not in report, report["error"]
    # with -n the server's count may stop short of the last bytes in flight: that it counted some is enough
    assert report["end"]["sum_sent"]["bytes"] >= 1 << 20 and report["end"]["sum_received"]["bytes"] > 0


def _initiator_configs(lab: netlab.NetLab, directory: Path, psk: str) -> Path:
    """The router's side of the VPN, for a charon in the fake router (the VM's own will differ)."""
    directory.mkdir(exist_ok=True)
    peer = labservices.IpsecPeer()
    conf, _ = labservices.ipsec_configs(lab, peer, directory)  # its strongswan.conf; swanctl.conf is replaced
    (directory / "swanctl.conf").write_text(
        labservices.swanctl_config(
            "peer", PLAN.router_public_ip, PLAN.server_ip, PLAN.guest_cidr, PLAN.site_cidr, peer, psk
        )
    )
    return conf


def test_the_ipsec_peer_listens_and_brings_up_a_tunnel(
    lab: netlab.NetLab, services: dict[str, netlab.Service], router: FakeRouter, tmp_path: Path
) -> None:
    peer = services["ipsec"]
    conns = labservices.swanctl(lab, peer, "--list-conns")
    assert f"remote: {PLAN.router_public_ip}" in conns and f"local:  {PLAN.site_cidr}" in conns
    sockets = sh("ss", "-Hlun", netns=peer.netns)
    assert ":500 " in sockets and ":4500 " in sockets
    # a second charon in the fake router initiates: the peer's configuration really works
    conf = _initiator_configs(lab, tmp_path / "router-ipsec", labservices.IpsecPeer().psk)
    env = {**os.environ, "STRONGSWAN_CONF": str(conf)}
    charon = subprocess.Popen(
        ["ip", "netns", "exec", router.netns, *labservices.charon_command()],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait(lambda: (tmp_path / "router-ipsec" / "charon.vici").exists())

        def initiator(*args: str) -> str:
            done = subprocess.run(
                ["ip", "netns", "exec", router.netns, "swanctl", *args],
                env=env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        initiator("--load-all", "--file", str(tmp_path / "router-ipsec" / "swanctl.conf"))
        initiator("--initiate", "--child", "site", "--timeout", "10")
        assert "ESTABLISHED" in labservices.swanctl(lab, peer, "--list-sas")
        # through the tunnel: from the router's guest address to the site address behind the peer
        body = curl(router.netns, f"http://{PLAN.site_ip}/template.bin", "--interface", PLAN.router_guest_ip)
        assert body == "x" * 4096
        assert services["http"].clients_seen()[-1] == PLAN.router_guest_ip
    finally:
        os.killpg(charon.pid, signal.SIGTERM)
        charon.wait(timeout=10)


# ------------------------------------------------------------------------------------------ teardown


def _small_lab_then(how: str) -> str:
    """A lab with a tap and a backend, left by a normal exit, an exception or a real Ctrl-C (SIGINT)."""
    prefix = netlab.new_prefix()
    seen: list[str] = []
    try:
        with netlab.net_lab(prefix) as lab:
            lab.add_tap("guest")
            labservices.start_web_backends(lab)
            seen = netlab.leftovers(prefix)
            if how == "exception":
                raise RuntimeError("a check failed")
            if how == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the KeyboardInterrupt arrives here
                pytest.fail("no KeyboardInterrupt")
    except RuntimeError:
        assert how == "exception"
    except KeyboardInterrupt:
        assert how == "ctrl-c"
    assert any(item.startswith("process") for item in seen) and any(item.startswith("link") for item in seen)
    return prefix


@pytest.mark.parametrize("how", ["normal", "exception", "ctrl-c"])
def test_nothing_is_left_after_the_block(how: str) -> None:
    # Python's Ctrl-C handler, also where the run started with SIGINT ignored (a CI job in the background
    # inherits SIG_IGN, and then Python installs none): the test is about the lab, not the runner.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        prefix = _small_lab_then(how)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert netlab.leftovers(prefix) == []


def test_cleanup_leftovers_removes_a_crashed_lab() -> None:
    """A run killed with SIGKILL inside its lab leaves namespaces, processes, a tap and a directory."""
    script = textwrap.dedent("""\
        import os, signal, sys
        from systemvm.lab import netlab
        from systemvm.lab import services as labservices
        with netlab.net_lab() as lab:
            lab.add_tap("public")
            labservices.start_web_backends(lab)
            print(lab.prefix, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    prefix = done.stdout.strip()
    left = netlab.leftovers(prefix)
    pids = [int(item.split()[1]) for item in left if item.startswith("process")]
    assert len(pids) == 2 and any(item.startswith("link") for item in left), left
    removed = netlab.cleanup_leftovers(prefix)
    assert removed == left
    assert netlab.leftovers(prefix) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
