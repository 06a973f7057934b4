"""DHCP and DNS probes a lab host runs in its namespace (``ip netns exec <ns> python3 labprobe.py ...``):
the host has no DHCP client or resolver tool to borrow, and a probe must neither touch the namespace's
address nor write a lease file, so each one sends one request and prints what came back as JSON.

``dhcp <device>``: a DHCPDISCOVER for the device's MAC (broadcast flag set, so the server broadcasts its
offer and no address is needed); prints the offered address, the server and options 1, 3, 6 and 15.
``dns <server> <name>``: an A query over UDP; prints the answer code and the addresses.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import struct
import sys
import time
from pathlib import Path

MAGIC = b"\x63\x82\x53\x63"
DHCP_OFFER = 2


def _options(data: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    i = 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1]
        options[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    return options


def _ips(value: bytes) -> list[str]:
    return [socket.inet_ntoa(value[i : i + 4]) for i in range(0, len(value) - 3, 4)]


def dhcp_discover(device: str, timeout: float) -> dict[str, object]:
    mac = bytes.fromhex(Path(f"/sys/class/net/{device}/address").read_text().strip().replace(":", ""))
    xid = secrets.randbits(32)
    packet = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                         b"\0" * 4, b"\0" * 4, mac, b"", b"")  # fmt: skip
    packet += MAGIC + bytes([53, 1, 1, 55, 4, 1, 3, 6, 15, 255])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind(("0.0.0.0", 68))
        deadline = time.monotonic() + timeout
        sock.sendto(packet, ("255.255.255.255", 67))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply, sender = sock.recvfrom(4096)
            except TimeoutError:
                break
            if len(reply) < 240 or struct.unpack("!I", reply[4:8])[0] != xid or reply[236:240] != MAGIC:
                continue
            options = _options(reply[240:])
            if options.get(53) != bytes([DHCP_OFFER]):
                continue
            return {
                "offer": socket.inet_ntoa(reply[16:20]),
                "server": sender[0],
                "netmask": _ips(options.get(1, b""))[:1],
                "router": _ips(options.get(3, b"")),
                "dns": _ips(options.get(6, b"")),
                "domain": options.get(15, b"").decode(errors="replace").rstrip("\0"),
            }
    return {"offer": None, "error": f"no DHCPOFFER on {device} within {timeout:.0f} s"}


def dns_query(server: str, name: str, timeout: float, port: int = 53) -> dict[str, object]:
    query_id = secrets.randbits(16)
    question = (
        b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    )
    packet = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        try:
            reply = sock.recv(4096)
        except TimeoutError:
            return {
                "rcode": None,
                "addresses": [],
                "error": f"no answer from {server}:{port} within {timeout:.0f} s",
            }
    rid, flags, _, ancount, _, _ = struct.unpack("!HHHHHH", reply[:12])
    if rid != query_id:
        return {"rcode": None, "addresses": [], "error": "an answer to another query"}
    i = 12 + len(question)
    addresses = []
    for _ in range(ancount):
        while reply[i] != 0 and reply[i] & 0xC0 != 0xC0:  # the owner name: labels, or a pointer
            i += reply[i] + 1
        i += 2 if reply[i] & 0xC0 == 0xC0 else 1
        rtype, _, _, length = struct.unpack("!HHIH", reply[i : i + 10])
        i += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[i : i + 4]))
        i += length
    return {"rcode": flags & 0xF, "addresses": addresses}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    dhcp = sub.add_parser("dhcp")
    dhcp.add_argument("device")
    dns = sub.add_parser("dns")
    dns.add_argument("server")
    dns.add_argument("name")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.probe == "dhcp":
        result = dhcp_discover(args.device, args.timeout)
    else:
        result = dns_query(args.server, args.name, args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
