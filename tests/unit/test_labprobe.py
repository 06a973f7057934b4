"""The lab's DNS probe against a real UDP responder on 127.0.0.1, and the DHCP option parser."""

from __future__ import annotations

import socket
import struct
import threading

from systemvm.lab import probe


def responder(answer_ip: str | None) -> tuple[int, threading.Thread]:
    """One UDP DNS answer on a free port: the question echoed, one A record (a name pointer) or NXDOMAIN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        with sock:
            query, client = sock.recvfrom(512)
            qid = struct.unpack("!H", query[:2])[0]
            question = query[12:]
            if answer_ip is None:
                reply = struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
            else:
                record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer_ip)
                reply = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + record
            sock.sendto(reply, client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread


def test_an_a_record_is_read_back() -> None:
    port, thread = responder("10.1.1.11")
    assert probe.dns_query("127.0.0.1", "web1-vm", 3, port=port) == {
        "rcode": 0,
        "addresses": ["10.1.1.11"],
    }
    thread.join(3)


def test_nxdomain_gives_no_address() -> None:
    port, thread = responder(None)
    assert probe.dns_query("127.0.0.1", "nope", 3, port=port) == {"rcode": 3, "addresses": []}
    thread.join(3)


def test_no_answer_is_said() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = probe.dns_query("127.0.0.1", "web1-vm", 0.3, port=silent.getsockname()[1])
    assert result["rcode"] is None and "no answer" in str(result["error"])


def test_dhcp_options_are_parsed_with_pads_and_the_end() -> None:
    data = bytes([53, 1, 2, 0, 3, 4, 10, 1, 1, 1, 6, 8, 10, 1, 1, 1, 10, 1, 1, 2, 255, 1, 1])
    options = probe._options(data)
    assert options[53] == b"\x02" and 1 not in options
    assert probe._ips(options[6]) == ["10.1.1.1", "10.1.1.2"]
