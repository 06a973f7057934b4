"""Secondary storage traffic.

What the secondary storage VM does for CloudStack, through the network lab: it mounts secondary storage over
NFS (v3 and v4), downloads a template (``.qcow2.bz2``) over HTTP, unpacks it and reads its virtual size, and
serves files from apache on its public address (template and volume downloads: the image's virtual host,
written at boot as secstorage.sh writes it, with the HTTP rules the agent adds when it starts). Only for a
storage VM booted inside the lab (``params["lab"]``, :mod:`systemvm.lab.agentlab`): its public NIC (eth2) is
a tap on the lab's public bridge, where the public server holds the NFS export and the download site. Each
check does over SSH what CloudStack's resource and scripts do at run time (never baked into the image) and
leaves the VM as it found it: the mount gone, the download removed, apache's state and the rules restored.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from systemvm import contract
from systemvm.check.appliance.lab import applicable, in_netns
from systemvm.check.appliance.target import Params, parse_listeners, run_ok

pytestmark = [pytest.mark.live]

MOUNT_ROOT = "/mnt/SecStorage"  # where CloudStack's storage resource mounts secondary storage
MOUNT_SECONDS = 60  # a mount that hangs (an unreachable export) fails the check instead of the run
DOWNLOAD_SECONDS = 120
CONNECT_TIMEOUT = 5
QCOW2_MAGIC = b"QFI\xfb"
# The qcow2 header's size field (offset 24, big-endian u64), read as CloudStack's Java QCOW2 processor
# reads it, with the image's python3, where qemu-img is not in the image.
QCOW2_SIZE = (
    "import struct,sys; h=open(sys.argv[1],'rb').read(32); "
    f"sys.exit('not a qcow2 image') if h[:4]!={QCOW2_MAGIC!r} else print(struct.unpack('>Q',h[24:32])[0])"
)
ROLE = "secstorage"
DOC_ROOT = "/var/www/html"
EXTRACT_DIR = f"{DOC_ROOT}/userdata"  # where the storage resource links a template or volume for download
# From apache's start until it answers on the public address: it binds at once, but answers only once
# mod_ssl loaded its key (12 s on an emulated amd64, measured; more on a loaded host).
APACHE_SECONDS = 90


@pytest.fixture
def lab(params: Params) -> dict[str, Any]:
    return dict(applicable(params, params.get("lab"), ROLE))


def mount_and_use(host: Any, lab: dict[str, Any], version: str) -> None:
    """Mount the export with NFS ``version`` as the storage resource mounts secondary storage, write a file
    through it, read it back in the VM and on the server's side, remove it, unmount."""
    nfs = lab["nfs"]
    point = f"{MOUNT_ROOT}/svmt-{secrets.token_hex(4)}"
    name, body = f"svmt-nfs-{secrets.token_hex(4)}", secrets.token_hex(16)
    # v3's locking (NLM) is off in the lab's server, so v3 mounts with nolock; retry=0: fail, do not wait
    options = f"vers={version},retry=0,soft,timeo=50,retrans=2" + (",nolock" if version == "3" else "")
    source = f"{nfs['server']}:{nfs['export']}"
    run_ok(host, f"mkdir -p {point}")
    try:
        mount = host.run(f"timeout {MOUNT_SECONDS} mount -t nfs -o {options} {source} {point}")
        said = (mount.stderr or mount.stdout).strip()
        assert mount.rc == 0, f"mount -t nfs -o {options} {source} failed ({mount.rc}): {said}"
        try:
            run_ok(host, f"echo {body} > {point}/{name} && sync")
            read = run_ok(host, f"cat {point}/{name}").strip()
            assert read == body, f"read {read!r} back through the NFS v{version} mount, not {body!r}"
            on_server = Path(nfs["directory"]) / name
            assert on_server.is_file() and on_server.read_text().strip() == body, (
                f"the file written through the NFS v{version} mount is not on the export ({on_server})"
            )
            run_ok(host, f"rm -f {point}/{name}")
        finally:
            host.run(f"umount {point} || umount -l {point}")
        mounts = run_ok(host, "cat /proc/mounts")
        assert f" {point} " not in mounts, f"{point} is still mounted after umount"
    finally:
        host.run(f"rmdir {point}")


def test_secondary_storage_mounts_over_nfs_v3(host: Any, lab: dict[str, Any]) -> None:
    """NFS v3: secondary storage mounts from the public server; a file written through it is on the export"""
    mount_and_use(host, lab, "3")


def test_secondary_storage_mounts_over_nfs_v4(host: Any, lab: dict[str, Any]) -> None:
    """NFS v4: secondary storage mounts from the public server; a file written through it is on the export"""
    mount_and_use(host, lab, "4")


def test_a_downloaded_template_unpacks_to_its_virtual_size(host: Any, lab: dict[str, Any]) -> None:
    """A .qcow2.bz2 template downloaded over HTTP unpacks to a qcow2 of the virtual size it was made with"""
    template = lab["template"]
    work = run_ok(host, "mktemp -d /var/tmp/svmt-template-XXXXXX").strip()
    packed = f"{work}/{template['url'].rsplit('/', 1)[-1]}"
    image = packed.removesuffix(".bz2")
    try:
        download = host.run(
            f"curl --fail --silent --show-error --connect-timeout {CONNECT_TIMEOUT} "
            f"--max-time {DOWNLOAD_SECONDS} -o {packed} {shlex.quote(template['url'])}"
        )
        assert download.rc == 0, f"downloading {template['url']} failed: {download.stderr.strip()}"
        unpack = host.run(f"bzip2 -d {packed}")
        assert unpack.rc == 0, f"bzip2 -d of the download failed ({unpack.rc}): {unpack.stderr.strip()}"
        if host.exists("qemu-img"):
            out = run_ok(host, f"qemu-img info --output=json {image}")
            size = int(json.loads(out)["virtual-size"])
        else:
            read = host.run(f"python3 -c {shlex.quote(QCOW2_SIZE)} {image}")
            assert read.rc == 0, f"cannot read the unpacked image's qcow2 header: {read.stderr.strip()}"
            size = int(read.stdout.strip())
        assert size == template["virtual_size"], (
            f"the unpacked template's virtual size is {size}, not the {template['virtual_size']} it was made"
        )
    finally:
        host.run(f"rm -rf {work}")


# What the storage VM's agent adds when it starts serving downloads (DownloadManagerImpl in CloudStack's
# secondary storage resource): apache stopped, HTTP and HTTPS accepted on the public NIC in front of INPUT,
# apache started. The image's own rules (CloudStack's iptables-secstorage) open neither.
AGENT_HTTP_RULES = [
    f"INPUT -i eth{contract.PUBLIC_NIC_INDEX} -p tcp -m state --state NEW -m tcp --dport {port} -j ACCEPT"
    for port in (80, 443)
]


def open_downloads_as_the_agent_does(host: Any, ip: str) -> None:
    """The agent's share at run time: its two INPUT rules, apache restarted; the template's share (the
    virtual host on the public address, written at boot as secstorage.sh writes it) must then serve."""
    run_ok(host, "systemctl stop apache2")
    for rule in AGENT_HTTP_RULES:
        run_ok(host, f"iptables -I {rule}")
    start = host.run("systemctl start apache2")
    said = (start.stderr or start.stdout).strip()[-300:]
    assert start.rc == 0, f"apache2 did not start with the image's public virtual host: {said}"
    deadline = time.monotonic() + APACHE_SECONDS
    while (found := http_listeners(host)) != {ip}:
        assert time.monotonic() < deadline, f"apache2 listens on {sorted(found)} for HTTP, not on {ip} only"
        time.sleep(1)


def http_listeners(host: Any) -> set[str]:
    """The addresses something in the VM listens on for HTTP (port 80)."""
    return {address for address, port, _ in parse_listeners(run_ok(host, "ss -Htln")) if port == 80}


def test_apache_serves_a_download_on_the_public_address(host: Any, lab: dict[str, Any]) -> None:
    """apache2 serves a template download on the storage VM's public address to the public network"""
    ip = lab["public_ip"]
    was_active = host.service("apache2").is_running
    name, body = f"svmt-{secrets.token_hex(4)}.qcow2", secrets.token_hex(16)
    try:
        open_downloads_as_the_agent_does(host, ip)
        run_ok(host, f"mkdir -p {EXTRACT_DIR} && echo {body} > {EXTRACT_DIR}/{name}")
        url = f"http://{ip}/userdata/{name}"
        deadline = time.monotonic() + APACHE_SECONDS
        while True:  # a connection apache took before it was ready times out: ask again until the deadline
            done = in_netns(
                lab, "server", "curl", "--silent", "--show-error", "--fail", "--connect-timeout",
                str(CONNECT_TIMEOUT), "--max-time", str(CONNECT_TIMEOUT + 10), url, timeout=60,
            )  # fmt: skip
            if done.returncode == 0 or time.monotonic() > deadline:
                break
        assert done.returncode == 0, f"{url} from the public server failed: {done.stderr.strip()}"
        assert done.stdout.strip() == body, f"{url} answered {done.stdout.strip()[:80]!r}, not the file"
    finally:
        state = "systemctl restart apache2" if was_active else "systemctl stop apache2"
        removed = "; ".join(f"iptables -D {rule}" for rule in AGENT_HTTP_RULES)
        host.run(f"rm -f {EXTRACT_DIR}/{name}; {removed}; {state}")
