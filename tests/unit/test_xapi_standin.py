"""The XAPI stand-in is strict where XAPI is: reply shapes, sessions, handles, types, uploads."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.parse
import xmlrpc.client
from pathlib import Path

import pytest

from systemvm.export.formats.vhd import write_dynamic_vhd
from tests.standins.xapi import DEFAULT_NETWORK, DEFAULT_SR, TEMPLATE_NAME, XapiStandin

MIB = 2**20


@pytest.fixture()
def xapi():
    with XapiStandin() as standin:
        yield standin


@pytest.fixture()
def rpc(xapi):
    return xmlrpc.client.ServerProxy(xapi.url)


@pytest.fixture()
def session(rpc):
    reply = rpc.session.login_with_password("root", "xenroot", "2.21", "test")
    assert reply["Status"] == "Success"
    return reply["Value"]


@pytest.fixture()
def small_vhd(tmp_path: Path) -> Path:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(6 * MIB)
        handle.seek(2 * MIB + 4096)
        handle.write(os.urandom(70000))
    vhd = tmp_path / "disk.vhd"
    write_dynamic_vhd(raw, vhd)
    return vhd


def ok(reply: dict) -> object:
    assert set(reply) == {"Status", "Value"}, reply
    assert reply["Status"] == "Success", reply
    return reply["Value"]


def failure(reply: dict) -> list[str]:
    assert set(reply) == {"Status", "ErrorDescription"}, reply
    assert reply["Status"] == "Failure"
    return reply["ErrorDescription"]


def make_vdi(rpc, session, xapi, size: int = 8 * MIB) -> str:
    sr = ok(rpc.SR.get_by_name_label(session, DEFAULT_SR))[0]
    record = {
        "name_label": "t",
        "name_description": "",
        "SR": sr,
        "virtual_size": str(size),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "other_config": {},
    }
    return ok(rpc.VDI.create(session, record))


def put(xapi, path: str, body: bytes | None, headers: dict[str, str], *, half_close: bool = False) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", xapi.port, timeout=10)
    try:
        conn.putrequest("PUT", path)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            if body:
                conn.send(body)
        except ConnectionError:
            pass
        if half_close:  # a client that dies mid-upload: the server sees EOF before Content-Length bytes
            conn.sock.shutdown(socket.SHUT_WR)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def import_path(session: str, vdi: str, task: str, **extra: str) -> str:
    query = {"format": "vhd", "vdi": vdi, "session_id": session, "task_id": task, **extra}
    return "/import_raw_vdi?" + urllib.parse.urlencode(query)


def test_login_reply_shape_and_wire_types(xapi, rpc):
    body = xmlrpc.client.dumps(("root", "xenroot"), "session.login_with_password").encode()
    conn = http.client.HTTPConnection("127.0.0.1", xapi.port)
    conn.request("POST", "/", body, {"Content-Type": "text/xml"})
    raw = conn.getresponse().read().decode()
    assert "<name>Status</name>" in raw and "<string>Success</string>" in raw
    session = ok(rpc.session.login_with_password("root", "xenroot"))
    assert session.startswith("OpaqueRef:")
    records = ok(rpc.SR.get_all_records(session))
    (sr,) = [r for r in records.values() if r["name_label"] == DEFAULT_SR]
    assert isinstance(sr["physical_size"], str) and sr["physical_size"].isdigit()
    # XAPI never sends <int>/<i4>/<nil>: int64 goes as a string
    conn.request("POST", "/", xmlrpc.client.dumps((session,), "VM.get_all_records").encode())
    raw = conn.getresponse().read().decode()
    assert "<int>" not in raw and "<i4>" not in raw and "<nil" not in raw
    assert "<name>memory_static_max</name>" in raw


def test_wrong_password_and_invalid_session(rpc, session):
    assert failure(rpc.session.login_with_password("root", "nope")) == [
        "SESSION_AUTHENTICATION_FAILED",
        "root",
        "Authentication failure",
    ]
    assert failure(rpc.VM.get_all("OpaqueRef:bogus")) == ["SESSION_INVALID", "OpaqueRef:bogus"]
    ok(rpc.session.logout(session))
    assert failure(rpc.VM.get_all(session)) == ["SESSION_INVALID", session]


def test_unknown_method_count_mismatch_handle_and_uuid(rpc, session):
    assert failure(rpc.VM.frobnicate(session)) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert failure(rpc.VM.get_record(session)) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "VM.get_record",
        "2",
        "1",
    ]
    assert failure(rpc.VM.get_record(session, "OpaqueRef:nope")) == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    assert failure(rpc.SR.get_by_uuid(session, "123")) == ["UUID_INVALID", "SR", "123"]
    # read-only fields have no setter
    vm = ok(rpc.VM.get_by_name_label(session, TEMPLATE_NAME))[0]
    assert failure(rpc.VM.set_power_state(session, vm, "Running"))[0] == "MESSAGE_METHOD_UNKNOWN"


def test_int_fields_must_be_strings(xapi, rpc, session):
    sr = ok(rpc.SR.get_by_name_label(session, DEFAULT_SR))[0]
    record = {
        "name_label": "x",
        "name_description": "",
        "SR": sr,
        "virtual_size": 8 * MIB,
        "type": "user",
        "sharable": False,
        "read_only": False,
        "other_config": {},
    }
    assert failure(rpc.VDI.create(session, record)) == ["FIELD_TYPE_ERROR", "VDI.virtual_size"]
    record["virtual_size"] = str(5 * MIB)
    vdi = ok(rpc.VDI.create(session, record))
    assert ok(rpc.VDI.get_virtual_size(session, vdi)) == str(6 * MIB)  # rounded up to a 2 MiB VHD block


def test_template_rules(rpc, session):
    template = [
        ref
        for ref in ok(rpc.VM.get_by_name_label(session, TEMPLATE_NAME))
        if ok(rpc.VM.get_is_a_template(session, ref))
    ][0]
    assert failure(rpc.VM.destroy(session, template)) == ["VM_CANNOT_DELETE_DEFAULT_TEMPLATE", template]
    assert failure(rpc.VM.start(session, template, False, False)) == ["VM_IS_TEMPLATE", template]
    vm = ok(rpc.VM.clone(session, template, "svmt-test"))
    assert ok(rpc.VM.get_is_a_template(session, vm)) is True
    assert "default_template" not in ok(rpc.VM.get_other_config(session, vm))
    ok(rpc.VM.provision(session, vm))  # disks spec not cleared: provisioning adds a disk
    assert len(ok(rpc.VM.get_VBDs(session, vm))) == 1
    assert ok(rpc.VM.get_is_a_template(session, vm)) is False
    ok(rpc.VM.start(session, vm, False, False))
    assert failure(rpc.VM.start(session, vm, False, False)) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(rpc.VM.destroy(session, vm)) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    vbd = ok(rpc.VM.get_VBDs(session, vm))[0]
    vdi = ok(rpc.VBD.get_VDI(session, vbd))
    assert failure(rpc.VDI.destroy(session, vdi)) == ["VDI_IN_USE", vdi, "destroy"]
    ok(rpc.VM.hard_shutdown(session, vm))
    ok(rpc.VM.destroy(session, vm))
    assert failure(rpc.VBD.get_record(session, vbd))[0] == "HANDLE_INVALID"
    ok(rpc.VDI.destroy(session, vdi))  # VM.destroy keeps VDIs


def test_map_duplicate_key(rpc, session):
    template = ok(rpc.VM.get_by_name_label(session, TEMPLATE_NAME))[0]
    vm = ok(rpc.VM.clone(session, template, "svmt-dup"))
    ok(rpc.VM.add_to_xenstore_data(session, vm, "vm-data/a", "1"))
    uuid = ok(rpc.VM.get_uuid(session, vm))
    assert failure(rpc.VM.add_to_xenstore_data(session, vm, "vm-data/a", "2")) == [
        "MAP_DUPLICATE_KEY",
        "VM",
        "xenstore_data",
        uuid,
        "vm-data/a",
    ]


def test_good_vhd_import_completes_the_task(xapi, rpc, session, small_vhd):
    vdi = make_vdi(rpc, session, xapi)
    task = ok(rpc.task.create(session, "import", ""))
    data = small_vhd.read_bytes()
    status = put(xapi, import_path(session, vdi, task), data, {"Content-Length": str(len(data))})
    assert status == 200
    assert ok(rpc.task.get_status(session, task)) == "success"
    assert ok(rpc.task.get_result(session, task)) == f"<value>{vdi}</value>"
    assert ok(rpc.task.get_progress(session, task)) == 1.0
    assert xapi.vdi_file(vdi).read_bytes() == data
    assert ok(rpc.VDI.get_physical_utilisation(session, vdi)) == str(len(data))


def test_chunked_upload_is_refused(xapi, rpc, session, small_vhd):
    vdi = make_vdi(rpc, session, xapi)
    task = ok(rpc.task.create(session, "import", ""))
    data = small_vhd.read_bytes()
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    status = put(xapi, import_path(session, vdi, task), body, {"Transfer-Encoding": "chunked"})
    assert status == 404
    assert ok(rpc.task.get_status(session, task)) == "failure"
    assert ok(rpc.task.get_error_info(session, task)) == ["INTERNAL_ERROR", "Cannot handle encoding: chunked"]
    assert not xapi.vdi_file(vdi).exists()
    task2 = ok(rpc.task.create(session, "import", ""))
    path = import_path(session, vdi, task2, chunked="true")
    assert put(xapi, path, data, {"Content-Length": str(len(data))}) == 404
    assert ok(rpc.task.get_error_info(session, task2)) == ["INTERNAL_ERROR", "Cannot handle chunked VHD"]


def test_upload_needs_a_valid_session_and_known_format(xapi, rpc, session, small_vhd):
    vdi = make_vdi(rpc, session, xapi)
    task = ok(rpc.task.create(session, "import", ""))
    data = small_vhd.read_bytes()
    headers = {"Content-Length": str(len(data))}
    assert put(xapi, import_path("OpaqueRef:bad", vdi, task), data, headers) == 401
    assert put(xapi, import_path(session, vdi, task, format="qcow3"), data, headers) == 404
    assert ok(rpc.task.get_error_info(session, task)) == ["INTERNAL_ERROR", "Unknown format qcow3"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("footer-checksum", "invalid VHD"),
        ("header-checksum", "invalid VHD"),
        ("truncated", "stream ended"),
        ("too-big", "does not fit the VDI"),
    ],
)
def test_broken_vhd_fails_the_task_with_vdi_io_error(xapi, rpc, session, small_vhd, damage, reason):
    data = bytearray(small_vhd.read_bytes())
    length = len(data)
    vdi_size = 8 * MIB
    if damage == "footer-checksum":
        data[-512 + 64] ^= 0xFF
    elif damage == "header-checksum":
        data[512 + 36] ^= 0xFF
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "too-big":
        vdi_size = 2 * MIB
    vdi = make_vdi(rpc, session, xapi, size=vdi_size)
    task = ok(rpc.task.create(session, "import", ""))
    path = import_path(session, vdi, task)
    status = put(xapi, path, bytes(data), {"Content-Length": str(length)}, half_close=damage == "truncated")
    assert status == 200  # XAPI answers before reading the body: the verdict is in the task
    assert ok(rpc.task.get_status(session, task)) == "failure"
    assert ok(rpc.task.get_error_info(session, task)) == ["VDI_IO_ERROR", "Device I/O errors"]
    assert any(reason in line for line in xapi.log if line.startswith("vhd-tool")), xapi.log[-3:]
    assert not xapi.vdi_file(vdi).exists()


def test_vif_and_vbd_devices_are_unique(rpc, session):
    template = ok(rpc.VM.get_by_name_label(session, TEMPLATE_NAME))[0]
    vm = ok(rpc.VM.clone(session, template, "svmt-dev"))
    network = ok(rpc.network.get_by_name_label(session, DEFAULT_NETWORK))[0]
    vif = {
        "device": "0",
        "network": network,
        "VM": vm,
        "MAC": "",
        "MTU": "1500",
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    ref = ok(rpc.VIF.create(session, vif))
    assert ok(rpc.VIF.get_MAC_autogenerated(session, ref)) is True
    assert failure(rpc.VIF.create(session, vif)) == ["DEVICE_ALREADY_EXISTS", "0"]
    vif.pop("qos_algorithm_params")
    vif["device"] = "1"
    assert failure(rpc.VIF.create(session, vif)) == ["FIELD_TYPE_ERROR", "VIF.qos_algorithm_params"]
