"""A strict XAPI stand-in: XML-RPC and ``PUT /import_raw_vdi`` over HTTP on 127.0.0.1.

Nothing real can run XAPI here, so this is a fake, built to fail where XAPI fails. Each behaviour follows
published XAPI documentation or source (reference only; nothing is copied):

- Wire format: "Wire Protocol for Remote API Calls" (docs.citrix.com/en-us/citrix-hypervisor/developer/
  management-api/wire-protocol; xapi-project/xen-api doc/content/xen-api/wire-protocol.md). Every reply is a
  struct ``{"Status": "Success", "Value": v}`` or ``{"Status": "Failure", "ErrorDescription": [code,
  ...]}``; ``int`` fields travel as decimal strings, ``float`` as ``<double>``, enums as strings, refs as
  opaque strings, ``OpaqueRef:NULL`` for no object. This stand-in never sends ``<int>`` or ``<nil>`` and
  refuses an ``int`` field that arrives as anything but a decimal string (FIELD_TYPE_ERROR).
- Errors and their parameters: "API Reference - Error Handling" (docs.citrix.com .../api-ref-autogen-errors)
  and ocaml/idl/datamodel_errors.ml: MESSAGE_METHOD_UNKNOWN [method], MESSAGE_PARAMETER_COUNT_MISMATCH
  [method, expected, received] (counts include the session argument), SESSION_INVALID [handle],
  HANDLE_INVALID [class, handle], UUID_INVALID [class, uuid], FIELD_TYPE_ERROR [field], MAP_DUPLICATE_KEY
  [class, param, uuid, key], VM_BAD_POWER_STATE [vm, expected, actual], VM_IS_TEMPLATE [vm],
  VM_CANNOT_DELETE_DEFAULT_TEMPLATE [vm], DEVICE_ALREADY_EXISTS [device], VDI_IN_USE [vdi, operation],
  MEMORY_CONSTRAINT_VIOLATION [constraint]. SESSION_AUTHENTICATION_FAILED carries [user, "Authentication
  failure"] as xapi's session code sends it. A request that is not well-formed XML-RPC gets HTTP 500 with an
  HTML body, as the error page shows.
- The classes, fields and messages (session, pool, host, SR, network, PIF, VM, VM_guest_metrics, VDI, VBD,
  VIF, task): "XenAPI Reference" class pages (xapi-project.github.io/xen-api/classes/*.html). VM.clone of a
  template gives a template and drops ``other_config:default_template``; VM.provision creates the disks
  described in ``other_config:disks`` and turns the template into a VM (xe vm-install's clone + provision
  sequence); VM.destroy removes the VM's VBDs and VIFs but not its VDIs; VDI.destroy refuses an attached VDI
  and removes the VBD records that point at it (ocaml/xapi/xapi_vdi.ml). The "Other install media" template
  has ``HVM_boot_policy`` "BIOS order", a ``disks`` provision spec and ``default_template`` = true.
- ``PUT /import_raw_vdi``: ocaml/xapi/import_raw_vdi.ml and vhd_tool_wrapper.ml. Credentials come from the
  ``session_id`` query parameter (Xapi_http.assert_credentials_ok: HTTP 401 when invalid). An unknown
  ``format`` fails the task with INTERNAL_ERROR ["Unknown format <x>"] and answers 404; ``format=vhd`` with
  the ``chunked`` query flag fails with INTERNAL_ERROR ["Cannot handle chunked VHD"]; any ``Transfer-
  Encoding`` header fails with INTERNAL_ERROR ["Cannot handle encoding: <x>"] and 404, before a byte of the
  body is read. Otherwise the handler answers ``200 OK`` with a ``task-id`` header *before* reading the
  body, so the outcome is only in the task: vhd-tool reads exactly Content-Length bytes (no Content-Length
  means an empty body under HTTP/1.1), sets the task's progress, and when the stream is not a valid VHD (or
  does not fit the VDI) the task fails with VDI_IO_ERROR ["Device I/O errors"], like vhd_tool_wrapper does
  when vhd-tool exits non-zero. The precise reason goes to :attr:`XapiStandin.log` (XAPI writes it to
  xensource.log). On success the task result is ``<value>OpaqueRef:...</value>`` (the VDI ref) and the SR
  holds ``<vdi-uuid>.vhd``, as a file-based ("ext") SR does.
- The VHD is checked with the project's own checker, ``systemvm.export.formats.vhd.check_vhd``
  (VHD specification
  plus blktap's rules), then for what vhd-tool needs: a dynamic disk (type 3; vhd-tool streams dynamic
  disks) whose virtual size fits the VDI's ``virtual_size``.
- Sizes: a VDI on a VHD-based SR has its ``virtual_size`` rounded up to 2 MiB (sm's vhdutil rounds sizes to
  the VHD block size).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import os
import shutil
import struct
import tempfile
import threading
import time
import urllib.parse
import uuid as uuidlib
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

NULL_REF = "OpaqueRef:NULL"
MIB = 2**20
VHD_BLOCK = 2 * MIB
DEFAULT_USER = "root"
DEFAULT_PASSWORD = "xenroot"
DEFAULT_SR = "Local storage"
DEFAULT_NETWORK = "Pool-wide network associated with eth0"
TEMPLATE_NAME = "Other install media"
# VHD footer fields (VHD specification: "Hard Disk Footer Format").
VHD_DISK_DYNAMIC = 3


class XapiFailure(Exception):
    """One XAPI failure: ``ErrorDescription`` = [code, *params]."""

    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code, *params)
        self.description = [code, *[str(p) for p in params]]


# Field kinds: str, int (int64 on the wire as a decimal string), float, bool, datetime, map (string->string),
# strs (string set), ref:<Class>, refs:<Class>, enum:<a|b|...>.
SCHEMA: dict[str, dict[str, str]] = {
    "session": {"uuid": "str", "this_host": "ref:host", "this_user": "str", "last_active": "datetime"},
    "pool": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "master": "ref:host",
        "default_SR": "ref:SR",
        "other_config": "map",
    },
    "host": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "hostname": "str",
        "address": "str",
        "enabled": "bool",
        "API_version_major": "int",
        "API_version_minor": "int",
        "software_version": "map",
        "resident_VMs": "refs:VM",
        "PIFs": "refs:PIF",
        "memory_overhead": "int",
        "other_config": "map",
    },
    "SR": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "type": "str",
        "content_type": "str",
        "shared": "bool",
        "physical_size": "int",
        "physical_utilisation": "int",
        "virtual_allocation": "int",
        "VDIs": "refs:VDI",
        "other_config": "map",
        "sm_config": "map",
        "tags": "strs",
    },
    "network": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "bridge": "str",
        "MTU": "int",
        "VIFs": "refs:VIF",
        "PIFs": "refs:PIF",
        "other_config": "map",
        "tags": "strs",
    },
    "PIF": {
        "uuid": "str",
        "device": "str",
        "network": "ref:network",
        "host": "ref:host",
        "MAC": "str",
        "MTU": "int",
        "VLAN": "int",
        "IP": "str",
        "netmask": "str",
        "ip_configuration_mode": "enum:None|DHCP|Static",
        "management": "bool",
        "currently_attached": "bool",
        "other_config": "map",
    },
    "VM": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "power_state": "enum:Halted|Paused|Running|Suspended",
        "is_a_template": "bool",
        "is_default_template": "bool",
        "is_control_domain": "bool",
        "user_version": "int",
        "domid": "int",
        "memory_static_max": "int",
        "memory_dynamic_max": "int",
        "memory_dynamic_min": "int",
        "memory_static_min": "int",
        "VCPUs_max": "int",
        "VCPUs_at_startup": "int",
        "VCPUs_params": "map",
        "actions_after_shutdown": "enum:destroy|restart",
        "actions_after_reboot": "enum:destroy|restart",
        "actions_after_crash": "enum:destroy|coredump_and_destroy|restart|coredump_and_restart|preserve"
        "|rename_restart",
        "PV_bootloader": "str",
        "PV_kernel": "str",
        "PV_ramdisk": "str",
        "PV_args": "str",
        "PV_bootloader_args": "str",
        "HVM_boot_policy": "str",
        "HVM_boot_params": "map",
        "HVM_shadow_multiplier": "float",
        "platform": "map",
        "other_config": "map",
        "xenstore_data": "map",
        "blocked_operations": "map",
        "tags": "strs",
        "VBDs": "refs:VBD",
        "VIFs": "refs:VIF",
        "resident_on": "ref:host",
        "affinity": "ref:host",
        "guest_metrics": "ref:VM_guest_metrics",
        "recommendations": "str",
    },
    "VM_guest_metrics": {
        "uuid": "str",
        "os_version": "map",
        "networks": "map",
        "other": "map",
        "live": "bool",
        "last_updated": "datetime",
    },
    "VDI": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "SR": "ref:SR",
        "VBDs": "refs:VBD",
        "virtual_size": "int",
        "physical_utilisation": "int",
        "type": "enum:system|user|ephemeral|suspend|crashdump|ha_statefile|metadata|redo_log|rrd|pvs_cache"
        "|cbt_metadata",
        "sharable": "bool",
        "read_only": "bool",
        "managed": "bool",
        "missing": "bool",
        "location": "str",
        "other_config": "map",
        "xenstore_data": "map",
        "sm_config": "map",
        "tags": "strs",
    },
    "VBD": {
        "uuid": "str",
        "VM": "ref:VM",
        "VDI": "ref:VDI",
        "device": "str",
        "userdevice": "str",
        "bootable": "bool",
        "mode": "enum:RO|RW",
        "type": "enum:CD|Disk|Floppy",
        "unpluggable": "bool",
        "empty": "bool",
        "currently_attached": "bool",
        "other_config": "map",
        "qos_algorithm_type": "str",
        "qos_algorithm_params": "map",
    },
    "VIF": {
        "uuid": "str",
        "device": "str",
        "network": "ref:network",
        "VM": "ref:VM",
        "MAC": "str",
        "MAC_autogenerated": "bool",
        "MTU": "int",
        "currently_attached": "bool",
        "other_config": "map",
        "qos_algorithm_type": "str",
        "qos_algorithm_params": "map",
    },
    "task": {
        "uuid": "str",
        "name_label": "str",
        "name_description": "str",
        "status": "enum:pending|success|failure|cancelling|cancelled",
        "progress": "float",
        "result": "str",
        "error_info": "strs",
        "created": "datetime",
        "finished": "datetime",
        "type": "str",
        "resident_on": "ref:host",
        "other_config": "map",
    },
}

# Fields a client may set with <Class>.set_<field> (XenAPI reference: the fields marked read/write).
WRITABLE: dict[str, set[str]] = {
    "pool": {"name_label", "name_description", "default_SR", "other_config"},
    "SR": {"name_label", "name_description", "other_config", "sm_config", "tags"},
    "network": {"name_label", "name_description", "other_config", "tags"},
    "VM": {
        "name_label",
        "name_description",
        "user_version",
        "is_a_template",
        "VCPUs_max",
        "VCPUs_at_startup",
        "VCPUs_params",
        "actions_after_shutdown",
        "actions_after_reboot",
        "actions_after_crash",
        "PV_bootloader",
        "PV_kernel",
        "PV_ramdisk",
        "PV_args",
        "PV_bootloader_args",
        "HVM_boot_policy",
        "HVM_boot_params",
        "HVM_shadow_multiplier",
        "platform",
        "other_config",
        "xenstore_data",
        "blocked_operations",
        "tags",
        "affinity",
        "recommendations",
    },
    "VDI": {"name_label", "name_description", "other_config", "xenstore_data", "sm_config", "tags"},
    "VBD": {"userdevice", "bootable", "mode", "type", "unpluggable", "other_config"},
    "VIF": {"other_config"},
    "task": {"other_config"},
    "host": {"name_label", "name_description", "other_config"},
}

# <Class>.create record: required fields and optional ones (XenAPI reference, "create" messages).
CREATE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "VDI": (
        (
            "name_label",
            "name_description",
            "SR",
            "virtual_size",
            "type",
            "sharable",
            "read_only",
            "other_config",
        ),
        ("xenstore_data", "sm_config", "tags"),
    ),
    "VBD": (
        (
            "VM",
            "VDI",
            "userdevice",
            "bootable",
            "mode",
            "type",
            "unpluggable",
            "empty",
            "other_config",
            "qos_algorithm_type",
            "qos_algorithm_params",
        ),
        ("device",),
    ),
    "VIF": (
        (
            "device",
            "network",
            "VM",
            "MAC",
            "MTU",
            "other_config",
            "qos_algorithm_type",
            "qos_algorithm_params",
        ),
        (),
    ),
}

NAMED_CLASSES = ("pool", "host", "SR", "network", "VM", "VDI", "task")


def _now() -> xmlrpc.client.DateTime:
    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime()))


def _check_wire(value: Any, where: str = "reply") -> None:
    """XAPI never puts <int> or <nil> on the wire: catch a stand-in bug before it reaches a client."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        raise AssertionError(f"stand-in bug: {where} holds {value!r}; XAPI sends int64 as strings")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_wire(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_wire(item, where)


def _coerce_scalar(name: str, kind: str, value: Any) -> Any:
    """An ``int`` (int64 as a decimal string on the wire), ``float`` or ``bool`` field's value."""
    if kind == "int":
        if not isinstance(value, str) or not value.lstrip("-").isdigit():
            raise XapiFailure("FIELD_TYPE_ERROR", name)
        return value
    if kind == "float":
        if not isinstance(value, float):
            raise XapiFailure("FIELD_TYPE_ERROR", name)
        return value
    if not isinstance(value, bool):
        raise XapiFailure("FIELD_TYPE_ERROR", name)
    return value


def _coerce_collection(name: str, kind: str, value: Any) -> dict[str, str] | list[str]:
    """A ``map`` (string to string) or ``strs`` (string set) field's value, copied."""
    if kind == "map":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise XapiFailure("FIELD_TYPE_ERROR", name)
        return dict(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise XapiFailure("FIELD_TYPE_ERROR", name)
    return list(value)


def _coerce_enum(name: str, values: list[str], value: Any) -> str:
    """An enum field's value, matched without regard to case, as the enum spells it."""
    if not isinstance(value, str) or value.lower() not in [v.lower() for v in values]:
        raise XapiFailure("FIELD_TYPE_ERROR", name)
    return next(v for v in values if v.lower() == value.lower())


def _import_refusal(fmt: str, query: dict[str, str], encoding: str | None) -> list[str] | None:
    """The INTERNAL_ERROR import_raw_vdi.ml fails an import with before reading its body, or None."""
    if fmt not in ("raw", "vhd", "tar"):
        return ["INTERNAL_ERROR", f"Unknown format {fmt}"]
    if fmt != "raw" and "chunked" in query:
        return ["INTERNAL_ERROR", "Cannot handle chunked VHD"]
    if encoding is not None:
        return ["INTERNAL_ERROR", f"Cannot handle encoding: {encoding}"]
    if fmt == "tar":
        return ["INTERNAL_ERROR", "stand-in does not implement format=tar"]
    return None


def read_vhd_footer(path: Path) -> tuple[int, int]:
    """(current size, disk type) from the trailing footer (VHD specification: Hard Disk Footer Format)."""
    with open(path, "rb") as handle:
        handle.seek(-512, os.SEEK_END)
        footer = handle.read(512)
    (current_size,) = struct.unpack_from(">Q", footer, 48)
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    return current_size, disk_type


class XapiStandin:
    """A pool of one host with one SR, one network and the "Other install media" template.

    ``with XapiStandin() as xapi: Session(xapi.url)``. State is inspectable: :meth:`records`, :attr:`log`,
    :meth:`vdi_file`. :meth:`publish_guest_networks` plays the guest agent reporting its addresses.
    """

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        sr_name: str = DEFAULT_SR,
        network_name: str = DEFAULT_NETWORK,
        sr_size: int = 512 * 2**30,
        storage_dir: Path | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.log: list[str] = []
        self.calls: list[str] = []
        self.imports: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._store: dict[str, dict[str, dict[str, Any]]] = {cls: {} for cls in SCHEMA}
        self._own_storage = storage_dir is None
        self.storage_dir = Path(storage_dir or tempfile.mkdtemp(prefix="xapi-standin-"))
        self._domids = itertools.count(1)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, tuple[int | tuple[int, ...], Callable[..., Any]]] = {}
        self._build_methods()
        self._populate(sr_name, network_name, sr_size)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> XapiStandin:
        standin = self

        class Handler(_XapiHttpHandler):
            xapi = standin

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="xapi-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_storage:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> XapiStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- inspection helpers for tests
    def records(self, cls: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {ref: dict(rec) for ref, rec in self._store[cls].items()}

    def find(self, cls: str, name_label: str) -> list[str]:
        with self._lock:
            return [ref for ref, rec in self._store[cls].items() if rec.get("name_label") == name_label]

    def vdi_file(self, vdi_ref: str) -> Path:
        with self._lock:
            return (
                self._sr_dir(self._store["VDI"][vdi_ref]["SR"]) / f"{self._store['VDI'][vdi_ref]['uuid']}.vhd"
            )

    def publish_guest_networks(self, vm_ref: str, networks: dict[str, str]) -> None:
        """Play the guest agent: fill VM_guest_metrics.networks (keys like ``0/ip``)."""
        with self._lock:
            vm = self._store["VM"][vm_ref]
            ref = self._new("VM_guest_metrics", os_version={}, networks=dict(networks), other={}, live=True)
            self._store["VM_guest_metrics"][ref]["last_updated"] = _now()
            vm["guest_metrics"] = ref

    # ----------------------------------------------------------------- object store
    def _new(self, cls: str, **fields: Any) -> str:
        ref = f"OpaqueRef:{uuidlib.uuid4()}"
        record: dict[str, Any] = {}
        for field, kind in SCHEMA[cls].items():
            record[field] = self._default(kind)
        record["uuid"] = str(uuidlib.uuid4())
        record.update(fields)
        _check_wire(record, f"{cls} record")
        self._store[cls][ref] = record
        return ref

    @staticmethod
    def _default(kind: str) -> Any:
        if kind == "int":
            return "0"
        if kind == "float":
            return 0.0
        if kind == "bool":
            return False
        if kind == "datetime":
            return xmlrpc.client.DateTime("19700101T00:00:00Z")
        if kind == "map":
            return {}
        if kind.startswith("refs:") or kind == "strs":
            return []
        if kind.startswith("ref:"):
            return NULL_REF
        if kind.startswith("enum:"):
            return kind[5:].split("|")[0]
        return ""

    def _populate(self, sr_name: str, network_name: str, sr_size: int) -> None:
        host = self._new(
            "host",
            name_label="xenserver-standin",
            hostname="xenserver-standin",
            address="127.0.0.1",
            enabled=True,
            API_version_major="2",
            API_version_minor="21",
            software_version={"product_brand": "XCP-ng", "product_version": "8.3.0", "xapi": "24.19"},
        )
        self._new("pool", master=host)
        sr = self._new(
            "SR",
            name_label=sr_name,
            type="ext",
            content_type="user",
            physical_size=str(sr_size),
        )
        self._sr_dir(sr).mkdir(parents=True, exist_ok=True)
        pool = next(iter(self._store["pool"]))
        self._store["pool"][pool]["default_SR"] = sr
        network = self._new("network", name_label=network_name, bridge="xenbr0", MTU="1500")
        pif = self._new(
            "PIF",
            device="eth0",
            network=network,
            host=host,
            MAC="52:54:00:12:34:56",
            MTU="1500",
            VLAN="-1",
            ip_configuration_mode="DHCP",
            management=True,
            currently_attached=True,
        )
        self._store["network"][network]["PIFs"] = [pif]
        self._store["host"][host]["PIFs"] = [pif]
        # A second network, so a lookup by name has to pick the right one.
        self._new("network", name_label="Host internal management network", bridge="xenapi", MTU="1500")
        dom0 = self._new(
            "VM",
            name_label="Control domain on host: xenserver-standin",
            is_control_domain=True,
            power_state="Running",
            domid="0",
            resident_on=host,
            memory_static_max=str(4096 * MIB),
            memory_dynamic_max=str(4096 * MIB),
            memory_dynamic_min=str(4096 * MIB),
            memory_static_min=str(4096 * MIB),
            VCPUs_max="2",
            VCPUs_at_startup="2",
        )
        self._store["host"][host]["resident_VMs"] = [dom0]
        provision = (
            '<provision><disk device="0" size="8589934592" sr="" bootable="true" type="system"/></provision>'
        )
        self._new(
            "VM",
            name_label=TEMPLATE_NAME,
            name_description="Template which allows VM installation from install media",
            is_a_template=True,
            is_default_template=True,
            power_state="Halted",
            domid="-1",
            user_version="1",
            memory_static_max=str(256 * MIB),
            memory_dynamic_max=str(256 * MIB),
            memory_dynamic_min=str(256 * MIB),
            memory_static_min=str(128 * MIB),
            VCPUs_max="1",
            VCPUs_at_startup="1",
            actions_after_shutdown="destroy",
            actions_after_reboot="restart",
            actions_after_crash="restart",
            HVM_boot_policy="BIOS order",
            HVM_boot_params={"order": "cd"},
            HVM_shadow_multiplier=1.0,
            platform={"nx": "true", "acpi": "1", "apic": "true", "pae": "true", "viridian": "true"},
            other_config={"default_template": "true", "install-methods": "cdrom", "disks": provision},
            recommendations='<restrictions><restriction field="memory-static-max" max="137438953472"/>'
            "</restrictions>",
        )
        # A second template with a similar name, so a lookup has to match exactly.
        self._new("VM", name_label="Other install media (legacy)", is_a_template=True, domid="-1")

    def _sr_dir(self, sr_ref: str) -> Path:
        return self.storage_dir / self._store["SR"][sr_ref]["uuid"]

    def _get(self, cls: str, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or ref not in self._store[cls]:
            raise XapiFailure("HANDLE_INVALID", cls, str(ref))
        return self._store[cls][ref]

    def _coerce(self, cls: str, field: str, value: Any) -> Any:
        """Check one incoming value against the field's kind, as XAPI's unmarshaller does."""
        kind = SCHEMA[cls][field]
        name = f"{cls}.{field}"
        if kind in ("int", "float", "bool"):
            return _coerce_scalar(name, kind, value)
        if kind in ("map", "strs"):
            return _coerce_collection(name, kind, value)
        if kind.startswith("ref:"):
            return self._coerce_ref(kind[4:], value)
        if kind.startswith("enum:"):
            return _coerce_enum(name, kind[5:].split("|"), value)
        if not isinstance(value, str):
            raise XapiFailure("FIELD_TYPE_ERROR", name)
        return value

    def _coerce_ref(self, target: str, value: Any) -> Any:
        """A reference: the null ref, or a live object of the target class (else HANDLE_INVALID)."""
        if value == NULL_REF:
            return value
        self._get(target, value)
        return value

    # ----------------------------------------------------------------- dispatch
    def _build_methods(self) -> None:
        m = self._methods
        for cls, fields in SCHEMA.items():
            if cls == "session":
                continue
            m[f"{cls}.get_all"] = (1, self._get_all(cls))
            m[f"{cls}.get_all_records"] = (1, self._get_all_records(cls))
            m[f"{cls}.get_record"] = (2, self._get_record(cls))
            m[f"{cls}.get_by_uuid"] = (2, self._get_by_uuid(cls))
            if cls in NAMED_CLASSES:
                m[f"{cls}.get_by_name_label"] = (2, self._get_by_name_label(cls))
            for field, kind in fields.items():
                m[f"{cls}.get_{field}"] = (2, self._getter(cls, field))
                if field in WRITABLE.get(cls, ()):
                    m[f"{cls}.set_{field}"] = (3, self._setter(cls, field))
                    if kind == "map":
                        m[f"{cls}.add_to_{field}"] = (4, self._map_add(cls, field))
                        m[f"{cls}.remove_from_{field}"] = (3, self._map_remove(cls, field))
        m["session.login_with_password"] = ((2, 3, 4), self._login)
        m["session.logout"] = (1, self._logout)
        m["session.get_this_host"] = (2, self._session_this_host)
        m["VDI.create"] = (2, self._create_vdi)
        m["VDI.destroy"] = (2, self._destroy_vdi)
        m["VBD.create"] = (2, self._create_vbd)
        m["VBD.destroy"] = (2, self._destroy_vbd)
        m["VIF.create"] = (2, self._create_vif)
        m["VIF.destroy"] = (2, self._destroy_vif)
        m["VM.clone"] = (3, self._vm_clone)
        m["VM.provision"] = (2, self._vm_provision)
        m["VM.start"] = (4, self._vm_start)
        m["VM.hard_shutdown"] = (2, self._vm_hard_shutdown)
        m["VM.clean_shutdown"] = (2, self._vm_hard_shutdown)
        m["VM.destroy"] = (2, self._vm_destroy)
        m["VM.set_memory_limits"] = (6, self._vm_set_memory_limits)
        m["task.create"] = (3, self._task_create)
        m["task.destroy"] = (2, self._task_destroy)
        m["task.cancel"] = (2, self._task_cancel)

    def dispatch(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        """One XML-RPC call -> the XAPI reply struct."""
        self.calls.append(method)
        try:
            entry = self._methods.get(method)
            if entry is None:
                raise XapiFailure("MESSAGE_METHOD_UNKNOWN", method)
            arity, func = entry
            allowed = arity if isinstance(arity, tuple) else (arity,)
            if len(params) not in allowed:
                raise XapiFailure(
                    "MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(max(allowed)), str(len(params))
                )
            with self._lock:
                if method == "session.login_with_password":
                    value = func(*params)
                else:
                    self._check_session(params[0])
                    value = func(*params[1:]) if method != "session.logout" else func(params[0])
            if value is None:
                value = ""
            _check_wire(value)
            return {"Status": "Success", "Value": value}
        except XapiFailure as failure:
            self.log.append(f"{method}: {' '.join(failure.description)}")
            return {"Status": "Failure", "ErrorDescription": failure.description}

    def _check_session(self, handle: Any) -> None:
        if not isinstance(handle, str) or handle not in self._store["session"]:
            raise XapiFailure("SESSION_INVALID", str(handle))

    def session_valid(self, handle: str) -> bool:
        with self._lock:
            return handle in self._store["session"]

    # ----------------------------------------------------------------- generic messages
    def _get_all(self, cls: str) -> Callable[[], list[str]]:
        return lambda: list(self._store[cls])

    def _get_all_records(self, cls: str) -> Callable[[], dict[str, Any]]:
        return lambda: {ref: dict(rec) for ref, rec in self._store[cls].items()}

    def _get_record(self, cls: str) -> Callable[[Any], dict[str, Any]]:
        return lambda ref: dict(self._get(cls, ref))

    def _get_by_uuid(self, cls: str) -> Callable[[Any], str]:
        def get_by_uuid(value: Any) -> str:
            for ref, rec in self._store[cls].items():
                if rec["uuid"] == value:
                    return ref
            raise XapiFailure("UUID_INVALID", cls, str(value))

        return get_by_uuid

    def _get_by_name_label(self, cls: str) -> Callable[[Any], list[str]]:
        def get_by_name_label(label: Any) -> list[str]:
            if not isinstance(label, str):
                raise XapiFailure("FIELD_TYPE_ERROR", "label")
            return [ref for ref, rec in self._store[cls].items() if rec.get("name_label") == label]

        return get_by_name_label

    def _getter(self, cls: str, field: str) -> Callable[[Any], Any]:
        return lambda ref: self._get(cls, ref)[field]

    def _setter(self, cls: str, field: str) -> Callable[[Any, Any], None]:
        def setter(ref: Any, value: Any) -> None:
            record = self._get(cls, ref)
            record[field] = self._coerce(cls, field, value)

        return setter

    def _map_add(self, cls: str, field: str) -> Callable[[Any, Any, Any], None]:
        def add(ref: Any, key: Any, value: Any) -> None:
            record = self._get(cls, ref)
            if not isinstance(key, str) or not isinstance(value, str):
                raise XapiFailure("FIELD_TYPE_ERROR", f"{cls}.{field}")
            if key in record[field]:
                raise XapiFailure("MAP_DUPLICATE_KEY", cls, field, record["uuid"], key)
            record[field][key] = value

        return add

    def _map_remove(self, cls: str, field: str) -> Callable[[Any, Any], None]:
        def remove(ref: Any, key: Any) -> None:
            record = self._get(cls, ref)
            if not isinstance(key, str):
                raise XapiFailure("FIELD_TYPE_ERROR", f"{cls}.{field}")
            record[field].pop(key, None)

        return remove

    def _record_from(self, cls: str, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise XapiFailure("FIELD_TYPE_ERROR", "args")
        required, optional = CREATE_FIELDS[cls]
        fields: dict[str, Any] = {}
        for field in required:
            if field not in given:
                raise XapiFailure("FIELD_TYPE_ERROR", f"{cls}.{field}")
            fields[field] = self._coerce(cls, field, given[field])
        for field in optional:
            if field in given:
                fields[field] = self._coerce(cls, field, given[field])
        return fields

    # ----------------------------------------------------------------- session
    def _login(self, user: Any, password: Any, *_version_originator: Any) -> str:
        if not isinstance(user, str) or not isinstance(password, str):
            raise XapiFailure("FIELD_TYPE_ERROR", "uname")
        if user != self.user or password != self.password:
            raise XapiFailure("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
        host = next(iter(self._store["host"]))
        return self._new("session", this_host=host, this_user=user, last_active=_now())

    def _logout(self, handle: str) -> None:
        self._store["session"].pop(handle, None)

    def _session_this_host(self, handle: Any) -> str:
        return self._get("session", handle)["this_host"]

    # ----------------------------------------------------------------- VDI / VBD / VIF
    def _create_vdi(self, given: Any) -> str:
        fields = self._record_from("VDI", given)
        size = int(fields["virtual_size"])
        if size < 0:
            raise XapiFailure("FIELD_TYPE_ERROR", "VDI.virtual_size")
        fields["virtual_size"] = str(-(-size // VHD_BLOCK) * VHD_BLOCK)
        sr = self._get("SR", fields["SR"])
        ref = self._new("VDI", managed=True, **fields)
        record = self._store["VDI"][ref]
        record["location"] = record["uuid"]
        sr["VDIs"].append(ref)
        sr["virtual_allocation"] = str(int(sr["virtual_allocation"]) + int(record["virtual_size"]))
        self.log.append(f"VDI.create {record['name_label']} virtual_size={record['virtual_size']}")
        return ref

    def _destroy_vdi(self, ref: Any) -> None:
        record = self._get("VDI", ref)
        for vbd in list(record["VBDs"]):
            if self._store["VBD"][vbd]["currently_attached"]:
                raise XapiFailure("VDI_IN_USE", ref, "destroy")
        for vbd in list(record["VBDs"]):
            self._destroy_vbd(vbd, force=True)
        sr = self._store["SR"][record["SR"]]
        sr["VDIs"].remove(ref)
        sr["virtual_allocation"] = str(int(sr["virtual_allocation"]) - int(record["virtual_size"]))
        sr["physical_utilisation"] = str(
            int(sr["physical_utilisation"]) - int(record["physical_utilisation"])
        )
        with contextlib.suppress(FileNotFoundError):
            (self._sr_dir(record["SR"]) / f"{record['uuid']}.vhd").unlink()
        del self._store["VDI"][ref]

    def _create_vbd(self, given: Any) -> str:
        fields = self._record_from("VBD", given)
        vm = self._get("VM", fields["VM"])
        if fields["VDI"] == NULL_REF and not fields["empty"]:
            raise XapiFailure("HANDLE_INVALID", "VDI", NULL_REF)
        for other in vm["VBDs"]:
            if self._store["VBD"][other]["userdevice"] == fields["userdevice"]:
                raise XapiFailure("DEVICE_ALREADY_EXISTS", fields["userdevice"])
        ref = self._new("VBD", **fields)
        vm["VBDs"].append(ref)
        if fields["VDI"] != NULL_REF:
            self._store["VDI"][fields["VDI"]]["VBDs"].append(ref)
        return ref

    def _destroy_vbd(self, ref: Any, force: bool = False) -> None:
        record = self._get("VBD", ref)
        if record["currently_attached"] and not force:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "VBD is currently attached")
        self._store["VM"][record["VM"]]["VBDs"].remove(ref)
        if record["VDI"] in self._store["VDI"]:
            self._store["VDI"][record["VDI"]]["VBDs"].remove(ref)
        del self._store["VBD"][ref]

    def _create_vif(self, given: Any) -> str:
        fields = self._record_from("VIF", given)
        vm = self._get("VM", fields["VM"])
        network = self._get("network", fields["network"])
        if not fields["device"].isdigit():
            raise XapiFailure("INVALID_DEVICE", fields["device"])
        for other in vm["VIFs"]:
            if self._store["VIF"][other]["device"] == fields["device"]:
                raise XapiFailure("DEVICE_ALREADY_EXISTS", fields["device"])
        autogenerated = fields["MAC"] == ""
        if autogenerated:
            raw = uuidlib.uuid4().bytes[:5]
            fields["MAC"] = ":".join(f"{b:02x}" for b in (0x02, *raw))
        ref = self._new("VIF", MAC_autogenerated=autogenerated, **fields)
        vm["VIFs"].append(ref)
        network["VIFs"].append(ref)
        return ref

    def _destroy_vif(self, ref: Any, force: bool = False) -> None:
        record = self._get("VIF", ref)
        if record["currently_attached"] and not force:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "VIF is currently attached")
        self._store["VM"][record["VM"]]["VIFs"].remove(ref)
        self._store["network"][record["network"]]["VIFs"].remove(ref)
        del self._store["VIF"][ref]

    # ----------------------------------------------------------------- VM
    def _vm_clone(self, ref: Any, new_name: Any) -> str:
        source = self._get("VM", ref)
        if not isinstance(new_name, str):
            raise XapiFailure("FIELD_TYPE_ERROR", "new_name")
        if source["is_control_domain"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "cannot clone a control domain")
        if source["power_state"] != "Halted":
            raise XapiFailure("VM_BAD_POWER_STATE", ref, "halted", source["power_state"].lower())
        copy = {k: (dict(v) if isinstance(v, dict) else v) for k, v in source.items()}
        copy.update(name_label=new_name, VBDs=[], VIFs=[], is_default_template=False, guest_metrics=NULL_REF)
        copy["other_config"].pop("default_template", None)
        copy.pop("uuid")
        if source["VBDs"] or source["VIFs"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "stand-in clones only VMs without devices")
        return self._new("VM", **copy)

    def _vm_provision(self, ref: Any) -> None:
        vm = self._get("VM", ref)
        if not vm["is_a_template"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "VM.provision applies to templates")
        if vm["is_default_template"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "clone the default template before provisioning")
        spec = vm["other_config"].get("disks", "")
        if spec:
            # Faithful enough: a provision spec creates one VDI + VBD per <disk>; this stand-in only needs
            # to show that a driver which forgets to clear it ends up with an extra disk.
            import xml.etree.ElementTree as ElementTree

            pool = next(iter(self._store["pool"].values()))
            for disk in ElementTree.fromstring(spec).iter("disk"):
                vdi = self._create_vdi(
                    {
                        "name_label": f"{vm['name_label']} {disk.get('device')}",
                        "name_description": "Created by template provisioner",
                        "SR": pool["default_SR"],
                        "virtual_size": disk.get("size", "0"),
                        "type": disk.get("type", "system"),
                        "sharable": False,
                        "read_only": False,
                        "other_config": {},
                    }
                )
                self._create_vbd(
                    {
                        "VM": ref,
                        "VDI": vdi,
                        "userdevice": disk.get("device", "0"),
                        "bootable": disk.get("bootable") == "true",
                        "mode": "RW",
                        "type": "Disk",
                        "unpluggable": False,
                        "empty": False,
                        "other_config": {},
                        "qos_algorithm_type": "",
                        "qos_algorithm_params": {},
                    }
                )
        vm["is_a_template"] = False

    def _vm_set_memory_limits(self, ref: Any, smin: Any, smax: Any, dmin: Any, dmax: Any) -> None:
        vm = self._get("VM", ref)
        values = [self._coerce("VM", "memory_static_min", v) for v in (smin, smax, dmin, dmax)]
        static_min, static_max, dynamic_min, dynamic_max = (int(v) for v in values)
        if not static_min <= dynamic_min <= dynamic_max <= static_max:
            raise XapiFailure(
                "MEMORY_CONSTRAINT_VIOLATION",
                "memory_static_min <= memory_dynamic_min <= memory_dynamic_max <= memory_static_max",
            )
        vm.update(
            memory_static_min=values[0],
            memory_static_max=values[1],
            memory_dynamic_min=values[2],
            memory_dynamic_max=values[3],
        )

    def _vm_start(self, ref: Any, start_paused: Any, force: Any) -> None:
        vm = self._get("VM", ref)
        if not isinstance(start_paused, bool) or not isinstance(force, bool):
            raise XapiFailure("FIELD_TYPE_ERROR", "start_paused")
        if vm["is_a_template"]:
            raise XapiFailure("VM_IS_TEMPLATE", ref)
        if vm["power_state"] != "Halted":
            raise XapiFailure("VM_BAD_POWER_STATE", ref, "halted", vm["power_state"].lower())
        if int(vm["VCPUs_at_startup"]) > int(vm["VCPUs_max"]) or int(vm["VCPUs_at_startup"]) < 1:
            raise XapiFailure(
                "VALUE_NOT_SUPPORTED", "VCPUs_at_startup", vm["VCPUs_at_startup"], "exceeds max"
            )
        if not vm["HVM_boot_policy"] and not vm["PV_bootloader"] and not vm["PV_kernel"]:
            raise XapiFailure("BOOTLOADER_FAILED", ref, "no HVM boot policy and no PV bootloader")
        for vbd in vm["VBDs"]:
            record = self._store["VBD"][vbd]
            if record["VDI"] != NULL_REF and self._store["VDI"][record["VDI"]]["missing"]:
                raise XapiFailure("VDI_MISSING", record["VDI"])
            record["currently_attached"] = True
            record["device"] = f"xvd{chr(ord('a') + int(record['userdevice']))}"
        for vif in vm["VIFs"]:
            self._store["VIF"][vif]["currently_attached"] = True
        host = next(iter(self._store["host"]))
        vm.update(
            power_state="Paused" if start_paused else "Running",
            domid=str(next(self._domids)),
            resident_on=host,
        )
        self._store["host"][host]["resident_VMs"].append(ref)

    def _vm_hard_shutdown(self, ref: Any) -> None:
        vm = self._get("VM", ref)
        if vm["is_control_domain"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "cannot shut down a control domain")
        if vm["power_state"] not in ("Running", "Paused"):
            raise XapiFailure("VM_BAD_POWER_STATE", ref, "running", vm["power_state"].lower())
        for vbd in vm["VBDs"]:
            self._store["VBD"][vbd]["currently_attached"] = False
        for vif in vm["VIFs"]:
            self._store["VIF"][vif]["currently_attached"] = False
        host = vm["resident_on"]
        if host in self._store["host"]:
            self._store["host"][host]["resident_VMs"].remove(ref)
        vm.update(power_state="Halted", domid="-1", resident_on=NULL_REF)

    def _vm_destroy(self, ref: Any) -> None:
        vm = self._get("VM", ref)
        if vm["is_control_domain"]:
            raise XapiFailure("OPERATION_NOT_ALLOWED", "cannot destroy a control domain")
        if vm["is_default_template"]:
            raise XapiFailure("VM_CANNOT_DELETE_DEFAULT_TEMPLATE", ref)
        if vm["power_state"] != "Halted":
            raise XapiFailure("VM_BAD_POWER_STATE", ref, "halted", vm["power_state"].lower())
        for vbd in list(vm["VBDs"]):
            self._destroy_vbd(vbd)
        for vif in list(vm["VIFs"]):
            self._destroy_vif(vif)
        self._store["VM_guest_metrics"].pop(vm["guest_metrics"], None)
        del self._store["VM"][ref]

    # ----------------------------------------------------------------- task
    def _task_create(self, label: Any, description: Any) -> str:
        if not isinstance(label, str) or not isinstance(description, str):
            raise XapiFailure("FIELD_TYPE_ERROR", "label")
        host = next(iter(self._store["host"]))
        return self._new(
            "task", name_label=label, name_description=description, created=_now(), resident_on=host
        )

    def _task_destroy(self, ref: Any) -> None:
        self._get("task", ref)
        del self._store["task"][ref]

    def _task_cancel(self, ref: Any) -> None:
        task = self._get("task", ref)
        if task["status"] != "pending":
            raise XapiFailure("OPERATION_NOT_ALLOWED", "task is not pending")
        task["status"] = "cancelling"

    def _finish_task(self, ref: str | None, *, result: str = "", error: list[str] | None = None) -> None:
        with self._lock:
            task = self._store["task"].get(ref or "")
            if task is None:
                return
            if error is None:
                task.update(status="success", progress=1.0, result=result)
            else:
                task.update(status="failure", error_info=list(error))
            task["finished"] = _now()

    def _task_progress(self, ref: str | None, progress: float) -> None:
        with self._lock:
            task = self._store["task"].get(ref or "")
            if task is not None and task["status"] == "pending":
                task["progress"] = round(progress, 2)

    # ----------------------------------------------------------------- import_raw_vdi
    def import_raw_vdi(self, handler: _XapiHttpHandler, query: dict[str, str]) -> None:
        """``PUT /import_raw_vdi``, following import_raw_vdi.ml (see the module docstring)."""
        found = self._import_target(handler, query)
        if found is None:
            return
        task_ref, vdi_ref = found
        fmt = query.get("format", "raw")
        failure = _import_refusal(fmt, query, handler.headers.get("Transfer-Encoding"))
        if failure is not None:
            self._finish_task(task_ref, error=failure)
            self.log.append(f"import_raw_vdi: {' '.join(failure)}: 404")
            handler.reply_plain(404, "Not Found", close=True)
            return
        self._answer_import_started(handler, task_ref)
        length_header = handler.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else 0
        received = self._receive_body(handler, length, task_ref)
        try:
            target = self._store_import(received, length, fmt, vdi_ref)
            self.imports.append({"vdi": vdi_ref, "format": fmt, "bytes": length, "path": target})
            self.log.append(f"import_raw_vdi: {vdi_ref} imported {length} bytes as {fmt}")
            self._finish_task(task_ref, result=f"<value>{vdi_ref}</value>")
        except _ImportRejected as exc:
            self.log.append(f"vhd-tool: {exc}")
            self._finish_task(task_ref, error=["VDI_IO_ERROR", "Device I/O errors"])
        finally:
            with contextlib.suppress(FileNotFoundError):
                received.unlink()

    def _import_target(self, handler: _XapiHttpHandler, query: dict[str, str]) -> tuple[str, str] | None:
        """The import's task (the given one, or a new one) and VDI; None when the request was refused
        (401 for a bad session, 400 for an unknown task or VDI: it is answered already)."""
        session = query.get("session_id", "")
        if not self.session_valid(session):
            self.log.append(f"import_raw_vdi: session {session!r} invalid: 401")
            handler.reply_plain(401, "Unauthorized")
            return None
        task_ref = query.get("task_id")
        with self._lock:
            if task_ref is not None and task_ref not in self._store["task"]:
                handler.reply_plain(400, "Bad Request")
                return None
            if task_ref is None:
                task_ref = self._task_create("VDI.import", "")
            vdi_ref = self._import_vdi(handler, query.get("vdi", ""), task_ref)
        return None if vdi_ref is None else (task_ref, vdi_ref)

    def _import_vdi(self, handler: _XapiHttpHandler, vdi_ref: str, task_ref: str) -> str | None:
        """The VDI named by ref or uuid; else the task fails (VDI_MISSING or HANDLE_INVALID), the request
        gets 400 and the answer is None. The caller holds the lock."""
        if vdi_ref in self._store["VDI"]:
            return vdi_ref
        by_uuid = [r for r, rec in self._store["VDI"].items() if rec["uuid"] == vdi_ref]
        if not by_uuid:
            error = ["VDI_MISSING"] if not vdi_ref else ["HANDLE_INVALID", "VDI", vdi_ref]
            self._finish_task(task_ref, error=error)
            self.log.append(f"import_raw_vdi: {' '.join(error)}: 400")
            handler.reply_plain(400, "Bad Request")
            return None
        return by_uuid[0]

    @staticmethod
    def _answer_import_started(handler: _XapiHttpHandler, task_ref: str) -> None:
        """200 with the task's id, before a byte of the body is read: the outcome is only in the task."""
        handler.send_response(200)
        handler.send_header("task-id", task_ref)
        handler.send_header("content-type", "application/octet-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True

    def _store_import(self, received: Path, length: int, fmt: str, vdi_ref: str) -> Path:
        """Check the received stream as vhd-tool would, put it in the SR as the VDI's VHD and account for
        the space it takes; return its path. A stream vhd-tool would refuse raises _ImportRejected."""
        with self._lock:
            vdi = self._store["VDI"].get(vdi_ref)
            if vdi is None:
                raise _ImportRejected("VDI disappeared during the import")
            target = self._sr_dir(vdi["SR"]) / f"{vdi['uuid']}.vhd"
            vdi_size = int(vdi["virtual_size"])
        if received.stat().st_size != length:
            raise _ImportRejected(f"stream ended after {received.stat().st_size} of {length} bytes")
        if fmt == "vhd":
            self._check_uploaded_vhd(received, vdi_size)
            os.replace(received, target)
        else:
            if length > vdi_size:
                raise _ImportRejected(f"raw stream of {length} bytes does not fit the VDI ({vdi_size})")
            self._raw_to_vhd(received, target, vdi_size)
        with self._lock:
            vdi = self._store["VDI"][vdi_ref]
            used = target.stat().st_size
            sr = self._store["SR"][vdi["SR"]]
            sr["physical_utilisation"] = str(
                int(sr["physical_utilisation"]) - int(vdi["physical_utilisation"]) + used
            )
            vdi["physical_utilisation"] = str(used)
        return target

    def _receive_body(self, handler: _XapiHttpHandler, length: int, task_ref: str) -> Path:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.storage_dir)
        done = 0
        with os.fdopen(fd, "wb") as out:
            while done < length:
                chunk = handler.rfile.read(min(4 * MIB, length - done))
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                self._task_progress(task_ref, done / length * 0.99)
        return Path(name)

    @staticmethod
    def _check_uploaded_vhd(path: Path, vdi_size: int) -> None:
        try:
            from systemvm.export.formats.vhd import VhdError, check_vhd
        except ImportError as exc:  # the project's checker is required: no lenient fallback
            raise _ImportRejected(f"VHD checker unavailable: {exc}") from None
        if path.stat().st_size < 512 * 3:
            raise _ImportRejected(f"{path.stat().st_size} bytes is too short for a VHD")
        try:
            check_vhd(path)
        except VhdError as exc:
            raise _ImportRejected(f"invalid VHD: {exc}") from None
        current_size, disk_type = read_vhd_footer(path)
        if disk_type != VHD_DISK_DYNAMIC:
            raise _ImportRejected(f"VHD disk type {disk_type} is not dynamic (3)")
        if current_size > vdi_size:
            raise _ImportRejected(f"VHD virtual size {current_size} does not fit the VDI ({vdi_size})")

    @staticmethod
    def _raw_to_vhd(raw: Path, target: Path, vdi_size: int) -> None:
        from systemvm.export.formats.vhd import write_dynamic_vhd

        with open(raw, "r+b") as handle:
            handle.truncate(vdi_size)
        write_dynamic_vhd(raw, target)


class _ImportRejected(Exception):
    """vhd-tool would exit non-zero; the message is what xensource.log would hold."""


class _XapiHttpHandler(http.server.BaseHTTPRequestHandler):
    xapi: XapiStandin
    protocol_version = "HTTP/1.1"
    server_version = "xapi"
    sys_version = ""

    disable_nagle_algorithm = True  # small XML-RPC replies must not wait for delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # the stand-in's own log records what matters

    def reply_plain(self, code: int, text: str, *, close: bool = True) -> None:
        body = f"<html><body><h1>HTTP {code} {text}</h1></body></html>".encode()
        self.send_response(code)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if urllib.parse.urlsplit(self.path).path not in ("/", "/RPC2"):
            self.reply_plain(404, "Not Found")
            return
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length)
        try:
            params, method = xmlrpc.client.loads(body, use_builtin_types=False)
        except Exception as exc:  # XAPI: HTTP 500 with an HTML page for unparsable XML-RPC
            self.reply_plain(500, f"internal server error: Xmlrpc.Parse_error {type(exc).__name__}")
            return
        if method is None:
            self.reply_plain(500, "internal server error: no methodName")
            return
        reply = self.xapi.dispatch(method, params)
        data = xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=False).encode()
        self.send_response(200)
        self.send_header("content-type", "text/xml")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        if split.path != "/import_raw_vdi":
            self.reply_plain(404, "Not Found")
            return
        self.xapi.import_raw_vdi(self, query)

    def do_GET(self) -> None:  # noqa: N802
        self.reply_plain(404, "Not Found")


def time_xenserver_import(vhd: Path, repeats: int = 1) -> list[tuple[str, str]]:
    """Rows for ``invoke bench``: import time of ``vhd`` (.vhd or .vhd.bz2) into the XAPI stand-in.

    Import = upload plus the stand-in's strict VHD check; define->started also includes decompression.
    """
    from systemvm.boot.hypervisors.base import BootRequest
    from systemvm.boot.hypervisors.xenserver import XenServerDriver
    from systemvm.contract import BootArgs

    rows: list[tuple[str, str]] = []
    for attempt in range(1, repeats + 1):
        with XapiStandin() as xapi:
            settings = {
                "url": xapi.url,
                "user": xapi.user,
                "password": xapi.password,
                "sr": DEFAULT_SR,
                "network": DEFAULT_NETWORK,
            }
            driver = XenServerDriver(settings, poll_interval=0.05)
            args = BootArgs(
                "secstorage", "s-1-VM", [("169.254.3.4", "255.255.0.0")], "ssh-ed25519 AAAA bench"
            )
            request = BootRequest(artifact=vhd, flavour="amd64", boot_args=args)
            try:
                driver.import_and_start(request)
            finally:
                driver.destroy()
            seconds = driver.timings["import"]
            size = xapi.imports[-1]["bytes"]  # the VHD as uploaded (after bzip2 decompression)
            rows.append(
                (
                    f"xenserver import (stand-in) #{attempt}",
                    f"{seconds:.2f} s, {size / 2**20 / seconds:.0f} MiB/s",
                )
            )
            rows.append(
                (f"xenserver define->started (stand-in) #{attempt}", f"{driver.timings['start']:.2f} s")
            )
    return rows
