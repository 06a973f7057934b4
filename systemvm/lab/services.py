"""The services of the network lab (:mod:`systemvm.lab.netlab`), each started by one function in a lab
host's namespace and stopped with the lab: HTTP backends and the public HTTP site (:mod:`systemvm.lab.httpd`),
an NFS export, a strongSwan peer and an iperf3 server, all on the addresses of :class:`netlab.LabPlan`.

Each one keeps its configuration, state and logs in the lab's work directory and never reads or writes the
host's own configuration of the same daemon (no /etc/ganesha, /etc/ipsec.*, /etc/swanctl, no host rpcbind).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from systemvm.hosttools import require_tools
from systemvm.lab.netlab import LabError, NetLab, Service, backend_names

CHARON = Path("/usr/lib/ipsec/charon")  # strongswan-charon: the IKE daemon (not on PATH)
HTTPD = Path(__file__).with_name("httpd.py")


def _python_service(lab: NetLab, name: str, host: str, *args: str, port: int = 80) -> Service:
    access_log = lab.work_dir / f"{name}.access.log"
    access_log.touch()
    service = lab.spawn(
        name, host,
        [sys.executable, str(HTTPD), "--name", name, "--port", str(port), "--log", str(access_log), *args],
        address=lab.hosts[host].ip, port=port, access_log=access_log,
    )  # fmt: skip
    lab.wait_listening(service, port)
    return service


def start_web_backends(lab: NetLab, port: int = 80) -> list[Service]:
    """An HTTP server on every backend host (``web1``, ``web2``, ...), each answering with its name:
    a load balancer's round-robin shows in the bodies, its source address in each access log."""
    return [_python_service(lab, h, h, port=port) for h in backend_names(lab.plan)]


def start_public_http(lab: NetLab, files: Mapping[str, bytes] | None = None, port: int = 80) -> Service:
    """The public server's HTTP site: serves ``files`` (name -> content) and logs each client's address
    (the router's public address when the router SNATs its guests; the storage VM's for a download)."""
    root = lab.work_dir / "www"
    root.mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    for name, content in (files or {"index.html": b"public\n"}).items():
        written[name] = root / name
        written[name].write_bytes(content)
    service = _python_service(lab, "public-http", "server", "--root", str(root), port=port)
    service.files = written
    return service


def start_iperf3(lab: NetLab, port: int = 5201) -> Service:
    """iperf3's server on the public server (throughput through the router)."""
    require_tools("iperf3")
    service = lab.spawn(
        "iperf3", "server", ["iperf3", "--server", "--port", str(port), "--bind", lab.plan.server_ip],
        address=lab.plan.server_ip, port=port,
    )  # fmt: skip
    lab.wait_listening(service, port)
    return service


NFS_EXPORT = "/export"


def start_nfs_export(lab: NetLab, files: Mapping[str, bytes] | None = None) -> Service:
    """An NFS export (v3 and v4, ``server:/export``) on the public server: secondary storage for the
    storage VM. nfs-ganesha in user space (this kind of host has no kernel nfsd, and kernel nfsd would
    want the host's /etc/exports and daemons), with an rpcbind of its own for v3's MOUNT protocol; both
    run under a private /run so they meet neither the host's rpcbind nor its ganesha."""
    require_tools("ganesha.nfsd", "rpcbind")
    base = lab.work_dir / "nfs"
    export = base / "export"
    export.mkdir(parents=True)
    (base / "recovery").mkdir()
    written: dict[str, Path] = {}
    for name, content in (files or {}).items():
        written[name] = export / name
        written[name].write_bytes(content)
    config = base / "ganesha.conf"
    config.write_text(f"""\
NFS_CORE_PARAM {{
    Bind_addr = {lab.plan.server_ip};
    NFS_Port = 2049;
    MNT_Port = 20048;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Protocols = 3, 4;
    Mount_Path_Pseudo = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSv4 {{
    RecoveryBackend = fs;
    RecoveryRoot = {base / "recovery"};
    Graceless = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = {NFS_EXPORT};
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
""")
    script = (
        "set -e; mount -t tmpfs lab-run /run; mkdir -p /run/ganesha; rpcbind -f -w & "
        "for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done; "
        f"exec ganesha.nfsd -F -f {config} -L {base / 'ganesha.log'} -p /run/ganesha/ganesha.pid"
    )
    service = lab.spawn("nfs", "server", ["sh", "-c", script], address=lab.plan.server_ip, port=2049)
    service.stop_signal = signal.SIGKILL  # a clean shutdown takes ganesha seconds; its state is throwaway
    service.files = {"export": export, "ganesha_log": base / "ganesha.log", **written}
    lab.wait_listening(service, 2049)
    lab.wait_listening(service, 20048)
    return service


@dataclasses.dataclass(frozen=True)
class IpsecPeer:
    """The site-to-site VPN the router will be configured with: the peer side's view (PSK, IKEv2)."""

    psk: str = "lab-preshared-key"
    ike_proposals: str = "aes128-sha256-modp2048"
    esp_proposals: str = "aes128-sha256-modp2048"
    ike_version: int = 2


def ipsec_configs(lab: NetLab, peer: IpsecPeer, directory: Path) -> tuple[Path, Path]:
    """strongswan.conf and swanctl.conf for the peer, in ``directory`` and nowhere else: an explicit plugin
    list without ``stroke`` (which would read the host's /etc/ipsec.secrets), the vici socket in the
    directory, kernel-libipsec for ESP (in UDP: ``encap = yes``)."""
    plan = lab.plan
    vici = directory / "charon.vici"
    strongswan_conf = directory / "strongswan.conf"
    strongswan_conf.write_text(f"""\
charon {{
    load = random nonce aes sha1 sha2 hmac gmp pem pkcs1 x509 pubkey kdf socket-default kernel-libipsec \
kernel-netlink vici updown
    install_routes = yes
    plugins {{
        vici {{
            socket = unix://{vici}
        }}
    }}
    filelog {{
        lab {{
            path = {directory / "charon.log"}
            default = 1
            ike = 2
            time_format = %T
        }}
    }}
}}
swanctl {{
    socket = unix://{vici}
    load = random pem pkcs1 x509 pubkey
}}
""")
    swanctl_conf = directory / "swanctl.conf"
    swanctl_conf.write_text(
        swanctl_config(
            "router", plan.server_ip, plan.router_public_ip, plan.site_cidr, plan.guest_cidr, peer, peer.psk,
            version=peer.ike_version,
        )
    )  # fmt: skip
    return strongswan_conf, swanctl_conf


def swanctl_config(
    name: str,
    local_ip: str,
    remote_ip: str,
    local_ts: str,
    remote_ts: str,
    peer: IpsecPeer,
    psk: str,
    version: int | None = None,
) -> str:
    """One side of the site-to-site tunnel in swanctl.conf form (PSK, UDP-encapsulated ESP); the other side
    is the same with local and remote swapped."""
    version_line = f"\n        version = {version}" if version is not None else ""
    return f"""\
connections {{
    {name} {{{version_line}
        local_addrs = {local_ip}
        remote_addrs = {remote_ip}
        encap = yes
        proposals = {peer.ike_proposals}
        local {{
            auth = psk
            id = {local_ip}
        }}
        remote {{
            auth = psk
            id = {remote_ip}
        }}
        children {{
            site {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {peer.esp_proposals}
            }}
        }}
    }}
}}
secrets {{
    ike-{name} {{
        id-1 = {local_ip}
        id-2 = {remote_ip}
        secret = "{psk}"
    }}
}}
"""


def swanctl(lab: NetLab, service: Service, *args: str, timeout: float = 30.0) -> str:
    """``swanctl`` against the peer's charon (its vici socket in the lab's directory)."""
    done = subprocess.run(
        ["ip", "netns", "exec", service.netns, "swanctl", *args],
        env={**os.environ, "STRONGSWAN_CONF": str(service.files["strongswan.conf"])},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise LabError(f"swanctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def charon_command() -> list[str]:
    """charon in the foreground under a private /run (its pid file): run it with ``ip netns exec`` and
    ``STRONGSWAN_CONF`` naming the run's own strongswan.conf."""
    return ["sh", "-c", f"mount -t tmpfs lab-run /run && exec {CHARON}"]


def start_ipsec_peer(lab: NetLab, peer: IpsecPeer | None = None) -> Service:
    """A strongSwan responder on the public server for a site-to-site VPN with the router: the site
    network (``plan.site_cidr``) behind it, the guest network behind the router. charon runs under
    ``ip netns exec`` with its own strongswan.conf (``STRONGSWAN_CONF``) and a private /run (its pid
    file), so nothing of the host's strongSwan is read or touched; swanctl loads the connection."""
    require_tools("swanctl")
    if not CHARON.exists():
        raise LabError(f"missing {CHARON}: install it with 'apt-get install strongswan-charon'")
    directory = lab.work_dir / "ipsec"
    directory.mkdir()
    strongswan_conf, swanctl_conf = ipsec_configs(lab, peer or IpsecPeer(), directory)
    service = lab.spawn(
        "ipsec", "server", charon_command(),
        env={"STRONGSWAN_CONF": str(strongswan_conf)}, address=lab.plan.server_ip, port=500,
    )  # fmt: skip
    service.files = {"strongswan.conf": strongswan_conf, "swanctl.conf": swanctl_conf}
    vici = directory / "charon.vici"
    deadline = time.monotonic() + 15
    while not vici.exists():
        if not service.alive() or time.monotonic() > deadline:
            raise LabError(f"charon did not open {vici}:\n{service.log_tail()}")
        time.sleep(0.05)
    swanctl(lab, service, "--load-all", "--file", str(swanctl_conf))
    lab.wait_listening(service, 500, "udp")
    lab.wait_listening(service, 4500, "udp")
    return service
