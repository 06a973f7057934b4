"""The secondary storage VM and the console proxy VM inside the network lab: the services their checks talk
to, and what the checks are told about them (``params["lab"]``).

CloudStack lays their NICs out on KVM as eth0 control, eth1 management, eth2 public (and eth3 storage, left
out here): :func:`systemvm.boot.testnet.plan_test_network` puts eth2 on the lab's public bridge with the
role's own public address (:meth:`netlab.LabPlan.public_ip`) and the public server as gateway, the other two
stay user-mode. On the public server (:func:`agent_lab`):

- for the storage VM, secondary storage as CloudStack's resource uses it: an NFS export (v3 and v4,
  :func:`services.start_nfs_export`) and an HTTP site serving a real ``.qcow2.bz2`` of a known virtual
  size (a template download: :func:`template_image`);
- for the console proxy, nothing: the checks connect from the server's namespace to the proxy's public
  address, to the ports CloudStack's console proxy rules open on the public NIC and to ports they keep shut.

The checks configure the VM over SSH at run time as CloudStack's scripts and resources do (a mount, a
download, apache's virtual host on the public address; listeners for the proxy's ports): nothing of it is
baked into the image.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from systemvm import contract
from systemvm.errors import UserError
from systemvm.hosttools import require_tools
from systemvm.lab import netlab, services

PUBLIC_DEV = f"eth{contract.PUBLIC_NIC_INDEX}"
TEMPLATE_NAME = "template.qcow2.bz2"  # what a template registration's URL names
TEMPLATE_VIRTUAL_SIZE = 64 << 20  # bytes; what the storage VM must read back from the unpacked image
# The NFS versions the storage VM mounts the export with: CloudStack's nfsVersion (3, 4 or the mount's
# default); the lab's ganesha speaks both.
NFS_VERSIONS = ("3", "4")
# The ports CloudStack's console proxy rules (iptables-consoleproxy) open on the public NIC: HTTPS, HTTP
# and the VNC port (vncport=, written over their 8080). Everything else arriving on eth2 meets the INPUT
# policy DROP: no answer at all, 8001 too (the proxy's own port: CloudStack's rules, and the image's,
# open it on eth0 and eth1 only).
CONSOLE_OPEN_PORTS = (443, 80, contract.CONSOLE_VNC_PORT)
CONSOLE_CLOSED_PORTS = (22, 3922, contract.CONSOLE_PROXY_PORT)


def template_image(directory: Path, virtual_size: int = TEMPLATE_VIRTUAL_SIZE) -> bytes:
    """A real qcow2 of ``virtual_size`` bytes made by ``qemu-img create``, bzip2-compressed (as CloudStack's
    templates are published): the download the storage VM unpacks and measures."""
    require_tools("qemu-img")
    image = directory / "template.qcow2"
    done = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(virtual_size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise UserError(f"qemu-img create failed: {done.stderr.strip()}")
    data = bz2.compress(image.read_bytes())
    image.unlink()
    return data


@dataclasses.dataclass
class AgentLab:
    """The lab a storage or console VM boots into, with the services its checks talk to."""

    lab: netlab.NetLab
    role: str
    public_http: netlab.Service | None = None
    nfs: netlab.Service | None = None

    def params(self, taps: list[str]) -> dict[str, Any]:
        return lab_params(self, taps)


def lab_params(agent_lab: AgentLab, taps: list[str]) -> dict[str, Any]:
    """What the appliance suite is told about the lab (JSON): namespaces, addresses, and per role the
    export and the download (storage) or the ports to probe (console)."""
    lab = agent_lab.lab
    plan = lab.plan
    params: dict[str, Any] = {
        "prefix": lab.prefix,
        "role": agent_lab.role,
        "taps": list(taps),
        "netns": {name: lab.netns(name) for name in lab.hosts},
        "plan": dataclasses.asdict(plan),
        "public_dev": PUBLIC_DEV,
        "public_ip": plan.public_ip(agent_lab.role),
        "server_ip": plan.server_ip,
    }
    if agent_lab.public_http is not None:
        params["template"] = {
            "url": f"http://{plan.server_ip}/{TEMPLATE_NAME}",
            "virtual_size": TEMPLATE_VIRTUAL_SIZE,
            "access_log": str(agent_lab.public_http.access_log),
        }
    if agent_lab.nfs is not None:
        params["nfs"] = {
            "server": plan.server_ip,
            "export": services.NFS_EXPORT,
            "versions": list(NFS_VERSIONS),
            "directory": str(agent_lab.nfs.files["export"]),  # the export as the host sees it
        }
    if agent_lab.role == "consoleproxy":
        params["ports"] = {"open": list(CONSOLE_OPEN_PORTS), "closed": list(CONSOLE_CLOSED_PORTS)}
    return params


@contextlib.contextmanager
def agent_lab(role: str, prefix: str | None = None) -> Iterator[AgentLab]:
    """The lab (torn down on any exit, failure or Ctrl-C) with the role's services on the public server."""
    if role not in ("secstorage", "consoleproxy"):
        raise UserError(f"an agent lab is for a secstorage or a consoleproxy, not a {role}")
    with netlab.net_lab(prefix) as lab:
        if role != "secstorage":
            yield AgentLab(lab, role)
            return
        with tempfile.TemporaryDirectory(dir=lab.work_dir) as scratch:
            image = template_image(Path(scratch))
        public = services.start_public_http(lab, {TEMPLATE_NAME: image})
        nfs = services.start_nfs_export(lab)
        yield AgentLab(lab, role, public_http=public, nfs=nfs)


@contextlib.contextmanager
def lab_for(role: str) -> Iterator[Any]:
    """The lab a KVM VM of ``role`` boots into: the router's (:func:`routerlab.router_lab`) or this one."""
    if role == "router":
        from systemvm.lab.routerlab import router_lab

        with router_lab() as rlab:
            yield rlab
        return
    with agent_lab(role) as alab:
        yield alab
