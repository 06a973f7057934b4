"""XenServer / XCP-ng through XenAPI, the way CloudStack's Xen resource boots a system VM.

Flow: login -> SR and network by name -> ``VDI.create`` (the VHD's virtual size) -> ``task.create`` -> HTTP(S)
``PUT /import_raw_vdi?format=vhd&vdi=..&session_id=..&task_id=..`` with a Content-Length (never chunked:
XAPI refuses a chunked VHD) -> poll the task -> ``VM.clone`` of "Other install media", drop
``other_config:disks``, ``VM.provision`` -> memory, vCPUs, HVM boot order (disk first) -> ``VBD.create`` ->
one ``VIF.create`` per NIC of the role -> the command line in ``xenstore_data["vm-data/cloudstack/init"]``
with '%' for spaces -> ``VM.start``. The SSH address is the control NIC's from guest metrics when the guest
reports it, else the one the harness put on the command line. Teardown: ``VM.hard_shutdown``, ``VM.destroy``,
``VDI.destroy`` (also after a failed step or Ctrl-C). Every object's name starts with the run prefix.

Settings (``[xenserver]`` in the config file or ``SYSTEMVM_XENSERVER_*``): url, user, password, sr, network,
verify_tls (on unless set to false).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import time
import urllib.parse
import xmlrpc.client
from pathlib import Path
from typing import Any

import XenAPI

from systemvm import contract
from systemvm.boot import sshwait
from systemvm.boot.hypervisors.base import RUN_PREFIX_BASE, BootRequest, Driver, SshTarget
from systemvm.boot.hypervisors.settings import load_settings, require, verify_tls
from systemvm.errors import UserError
from systemvm.export import detect
from systemvm.export.decompress import unpacked_copy
from systemvm.progress import human_bytes, phase, say

TEMPLATE = "Other install media"
CMDLINE_KEY = "vm-data/cloudstack/init"
NULL_REF = "OpaqueRef:NULL"
UPLOAD_CHUNK = 1 << 20


class XenApiError(UserError):
    """A XAPI failure turned into one line."""


def describe_failure(exc: BaseException) -> str:
    """``XenAPI.Failure(['CODE', 'p1', ...])`` -> ``CODE: p1, ...``."""
    details = getattr(exc, "details", None)
    if isinstance(details, list) and details:
        return (
            f"{details[0]}: {', '.join(str(d) for d in details[1:])}" if len(details) > 1 else str(details[0])
        )
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------------------------ artifacts


def artifact_kind(path: Path) -> str:
    """``vhd`` or ``vhd.bz2``; anything else is the wrong format for this hypervisor (one clear line)."""
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist: run 'invoke export --formats vhd' first")
    with open(path, "rb") as handle:
        head = handle.read(detect.HEAD_BYTES)
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - detect.HEAD_BYTES))
        tail = handle.read(detect.HEAD_BYTES) if size >= detect.HEAD_BYTES else b""
    if detect.kind_of_bytes(head) == "bz2":
        return "vhd.bz2"
    if detect.kind_of_bytes(b"", tail) == "vhd":  # the footer: a dynamic VHD's header copy is not enough
        return "vhd"
    raise UserError(
        f"artifact {path} is not a VHD (no 'conectix' footer) nor a bzip2 file: give the -xen.vhd.bz2 export"
    )


def unpacked_vhd(artifact: Path, cache: Path | None = None) -> Path:
    """The ``.vhd`` to upload: the artifact itself, or its copy in the one cache of unpacked artifacts
    (:func:`systemvm.export.decompress.unpacked_copy`), shared by every run that uploads the same file."""
    if artifact_kind(artifact) == "vhd":
        return artifact
    return unpacked_copy(
        artifact,
        "vhd",
        lambda p: artifact_kind(p) == "vhd",
        f"{artifact} does not hold a VHD: give the -xen.vhd.bz2 export (re-download or re-export it)",
        cache,
    )


def vhd_size(path: Path) -> int:
    """The disk's virtual size, from the VHD footer (the project's reader)."""
    from systemvm.export.formats.vhd import vhd_virtual_size

    return vhd_virtual_size(path)


# ------------------------------------------------------------------------------------------ upload


def put_import_raw_vdi(
    url: str,
    session_ref: str,
    vdi_ref: str,
    task_ref: str,
    vhd: Path,
    *,
    verify: bool = True,
    chunked: bool = False,
    timeout: float = 60.0,
) -> int:
    """Stream ``vhd`` to ``PUT /import_raw_vdi`` with a Content-Length; return the HTTP status.

    XAPI answers 200 before it has read the body, so the result of the import is in the task, not here.
    ``chunked=True`` exists only to show that XAPI refuses a chunked VHD upload.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode(
        {"format": "vhd", "vdi": vdi_ref, "session_id": session_ref, "task_id": task_ref}
    )
    host = parts.hostname or ""
    if parts.scheme == "https":
        context = ssl.create_default_context() if verify else ssl._create_unverified_context()
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port or 443, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    size = vhd.stat().st_size
    try:
        conn.putrequest("PUT", f"/import_raw_vdi?{query}", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(size))
        conn.endheaders()
        sent = 0
        next_report = 0.25
        with contextlib.suppress(ConnectionError):  # XAPI may close early on a refused upload
            with open(vhd, "rb") as source:
                while chunk := source.read(UPLOAD_CHUNK):
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                    sent += len(chunk)
                    if size and sent / size >= next_report:
                        say(f"    uploaded {human_bytes(sent)} of {human_bytes(size)}")
                        while sent / size >= next_report:
                            next_report += 0.25
            if chunked:
                conn.send(b"0\r\n\r\n")
        try:
            response = conn.getresponse()
            response.read()
            return response.status
        except (ConnectionError, http.client.HTTPException):
            return 0
    except OSError as exc:
        raise UserError(
            f"XenServer at {url}: upload failed ({exc}); check the host and the network"
        ) from None
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ driver


class XenServerDriver(Driver):
    """``XenServerDriver().create(request)`` -> ``SshTarget``; ``destroy()`` always.

    ``import_and_start(request)`` does everything up to ``VM.start``; ``wait_for_ssh(target, timeout)`` is
    the separate readiness step (``create()`` = both), so the flow can run against the XAPI stand-in where no
    guest boots.
    """

    name = "xenserver"

    def __init__(
        self,
        settings: dict[str, str] | None = None,
        *,
        key_file: Path | None = None,
        poll_interval: float = 0.5,
        import_timeout: float = 3600.0,
        connect_timeout: float = 120.0,
    ) -> None:
        self.settings = dict(settings) if settings is not None else load_settings("xenserver")
        require(self.settings, "xenserver", "url", "user", "password", "sr", "network")
        self.url = self.settings["url"].rstrip("/")
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise UserError(f"xenserver: url '{self.url}' must start with https:// (or http://)")
        self.verify = verify_tls(self.settings)
        self.key_file = key_file
        self.poll_interval = poll_interval
        self.import_timeout = import_timeout
        self.connect_timeout = connect_timeout
        self.session: Any = None
        self.vm_ref: str | None = None
        self.vdi_ref: str | None = None
        self.vm_name = ""
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------- session
    def connect(self) -> Any:
        """Log in once; a wrong password or an unreachable host is one clear line."""
        if self.session is not None:
            return self.session
        session = XenAPI.Session(self.url, ignore_ssl=not self.verify)
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.connect_timeout)
        try:
            session.xenapi.login_with_password(
                self.settings["user"], self.settings["password"], "2.21", "systemvm-template"
            )
        except XenAPI.Failure as exc:
            if exc.details and exc.details[0] == "SESSION_AUTHENTICATION_FAILED":
                raise UserError(
                    f"XenServer at {self.url} refused user '{self.settings['user']}' "
                    "(SESSION_AUTHENTICATION_FAILED): check SYSTEMVM_XENSERVER_USER / _PASSWORD"
                ) from None
            raise XenApiError(f"XenServer at {self.url}: login failed ({describe_failure(exc)})") from None
        except ssl.SSLError as exc:
            raise UserError(
                f"XenServer at {self.url}: TLS verification failed ({exc.reason}): install the host's "
                "certificate or set verify_tls = false explicitly"
            ) from None
        except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
            raise UserError(
                f"XenServer at {self.url} is unreachable ({describe_failure(exc)}): check the url setting "
                "and that the host is up"
            ) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
        self.session = session
        return session

    @property
    def api(self) -> Any:
        return self.connect().xenapi

    def _call(self, what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except XenAPI.Failure as exc:
            raise XenApiError(f"XenServer: {what} failed ({describe_failure(exc)})") from None
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise UserError(f"XenServer at {self.url}: connection lost during {what} ({exc})") from None

    def find_sr(self, name: str) -> str:
        refs = self._call("SR lookup", self.api.SR.get_by_name_label, name)
        if not refs:
            known = sorted(
                r["name_label"] for r in self._call("SR list", self.api.SR.get_all_records).values()
            )
            raise UserError(
                f"XenServer has no SR named '{name}' (known: {', '.join(known) or 'none'}): "
                "set SYSTEMVM_XENSERVER_SR to one of them"
            )
        if len(refs) > 1:
            raise UserError(f"XenServer has {len(refs)} SRs named '{name}': rename one or use a unique name")
        return refs[0]

    def find_network(self, name: str) -> str:
        refs = self._call("network lookup", self.api.network.get_by_name_label, name)
        if not refs:
            known = sorted(
                r["name_label"] for r in self._call("network list", self.api.network.get_all_records).values()
            )
            raise UserError(
                f"XenServer has no network named '{name}' (known: {', '.join(known) or 'none'}): "
                "set SYSTEMVM_XENSERVER_NETWORK to one of them"
            )
        return refs[0]

    def find_template(self) -> str:
        refs = [
            ref
            for ref in self._call("template lookup", self.api.VM.get_by_name_label, TEMPLATE)
            if self._call("template lookup", self.api.VM.get_is_a_template, ref)
        ]
        if not refs:
            raise UserError(
                f"XenServer has no template '{TEMPLATE}': this pool is missing its default templates"
            )
        return refs[0]

    # ----------------------------------------------------------------------------- import
    def import_vhd(self, vhd: Path, sr: str, name: str) -> str:
        """Create a VDI of the VHD's virtual size and upload the VHD into it; return the VDI ref."""
        size = vhd_size(vhd)
        self.vdi_ref = self._call(
            "VDI.create",
            self.api.VDI.create,
            {
                "name_label": name,
                "name_description": "CloudStack system VM template (systemvm-template harness)",
                "SR": sr,
                "virtual_size": str(size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
                "xenstore_data": {},
                "sm_config": {},
                "tags": [],
            },
        )
        self.upload(vhd, self.vdi_ref, name)
        return self.vdi_ref

    def upload(self, vhd: Path, vdi: str, name: str, *, chunked: bool = False) -> None:
        """One ``PUT /import_raw_vdi`` under a task of ours; raise with XAPI's error when the task fails."""
        task = self._call("task.create", self.api.task.create, f"{name} import", "import_raw_vdi")
        try:
            status = put_import_raw_vdi(
                self.url, self.session.handle, vdi, task, vhd, verify=self.verify, chunked=chunked
            )
            self.wait_task(task, "VHD import")
            if status not in (200, 0):
                raise UserError(f"XenServer refused the VHD upload with HTTP {status}")
        finally:
            with contextlib.suppress(Exception):
                self.api.task.destroy(task)

    def wait_task(self, task: str, what: str) -> str:
        """Poll ``task`` until it ends; report progress; return its result or raise with its error_info."""
        started = time.monotonic()
        last_reported = -1.0
        while True:
            status = self._call("task.get_status", self.api.task.get_status, task)
            if status != "pending":
                break
            progress = float(self._call("task.get_progress", self.api.task.get_progress, task))
            if progress - last_reported >= 0.25:
                say(f"    {what}: {progress * 100:.0f}%")
                last_reported = progress
            if time.monotonic() - started > self.import_timeout:
                with contextlib.suppress(Exception):
                    self.api.task.cancel(task)
                raise UserError(f"XenServer {what} did not finish within {self.import_timeout:.0f} s")
            time.sleep(self.poll_interval)
        if status == "success":
            return self._call("task.get_result", self.api.task.get_result, task)
        error = self._call("task.get_error_info", self.api.task.get_error_info, task)
        code = error[0] if error else status
        hint = {
            "VDI_IO_ERROR": "the host could not read the VHD; check it with 'vhd check' and re-export it",
            "INTERNAL_ERROR": "the host refused the upload",
        }.get(code, "see the host's xensource.log")
        detail = ", ".join(error[1:]) if len(error) > 1 else ""
        raise XenApiError(f"XenServer {what} {status} ({code}{': ' + detail if detail else ''}): {hint}")

    # ----------------------------------------------------------------------------- VM
    def build_vm(self, request: BootRequest, vdi: str, network: str) -> str:
        api = self.api
        template = self.find_template()
        self.vm_ref = vm = self._call("VM.clone", api.VM.clone, template, self.vm_name)
        self._call("VM.remove_from_other_config", api.VM.remove_from_other_config, vm, "disks")
        self._call("VM.provision", api.VM.provision, vm)
        self._call(
            "VM.set_name_description", api.VM.set_name_description, vm, "CloudStack system VM (test run)"
        )
        memory = str(request.memory_mib * 2**20)
        self._call("VM.set_memory_limits", api.VM.set_memory_limits, vm, memory, memory, memory, memory)
        cpus = str(request.cpus)
        self._call("VM.set_VCPUs_max", api.VM.set_VCPUs_max, vm, cpus)
        self._call("VM.set_VCPUs_at_startup", api.VM.set_VCPUs_at_startup, vm, cpus)
        self._call("VM.set_PV_bootloader", api.VM.set_PV_bootloader, vm, "")
        self._call("VM.set_HVM_boot_policy", api.VM.set_HVM_boot_policy, vm, "BIOS order")
        self._call("VM.set_HVM_boot_params", api.VM.set_HVM_boot_params, vm, {"order": "dc"})
        self._call(
            "VBD.create",
            api.VBD.create,
            {
                "VM": vm,
                "VDI": vdi,
                "userdevice": "0",
                "bootable": True,
                "mode": "RW",
                "type": "Disk",
                "unpluggable": False,
                "empty": False,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )
        mtu = self._call("network.get_MTU", api.network.get_MTU, network)
        for index in range(contract.nic_count(request.boot_args.role)):
            self._call(
                "VIF.create",
                api.VIF.create,
                {
                    "device": str(index),
                    "network": network,
                    "VM": vm,
                    "MAC": "",
                    "MTU": mtu,
                    "other_config": {},
                    "qos_algorithm_type": "",
                    "qos_algorithm_params": {},
                },
            )
        value = contract.xenstore_value(request.boot_args.to_cmdline())
        self._call("VM.add_to_xenstore_data", api.VM.add_to_xenstore_data, vm, CMDLINE_KEY, value)
        return vm

    def import_and_start(self, request: BootRequest) -> SshTarget:
        """Everything up to a started VM; return where SSH on 3922 should answer."""
        self.vm_name = f"{request.run_prefix}-{request.boot_args.role}-{request.flavour}"
        started = time.monotonic()
        with phase(f"connect to XenServer at {self.url}"):
            self.connect()
            sr = self.find_sr(self.settings["sr"])
            network = self.find_network(self.settings["network"])
        vhd = unpacked_vhd(request.artifact)
        with phase(f"import {request.artifact.name} into SR '{self.settings['sr']}'"):
            t0 = time.monotonic()
            vdi = self.import_vhd(vhd, sr, f"{self.vm_name}-root")
            self.timings["import"] = time.monotonic() - t0
        with phase(f"create VM {self.vm_name}"):
            vm = self.build_vm(request, vdi, network)
        with phase(f"start VM {self.vm_name}"):
            self._call("VM.start", self.api.VM.start, vm, False, False)
        self.timings["start"] = time.monotonic() - started
        key_file = self.key_file or request.ssh_key_file
        return SshTarget(host=self.address(request), port=contract.SSH_PORT, key_file=key_file)

    def address(self, request: BootRequest) -> str:
        """The control NIC's address: the guest's own report when there is one, else the command line's."""
        nic = contract.control_nic(request.boot_args.role, "xenserver")
        index = int(nic[3:])
        if self.vm_ref is not None:
            metrics = self._call("VM.get_guest_metrics", self.api.VM.get_guest_metrics, self.vm_ref)
            if metrics != NULL_REF:
                networks = self._call(
                    "VM_guest_metrics.get_networks", self.api.VM_guest_metrics.get_networks, metrics
                )
                if networks.get(f"{index}/ip"):
                    return networks[f"{index}/ip"]
        assigned = contract.parse_cmdline(request.boot_args.to_cmdline()).get(f"{nic}ip")
        if not assigned:
            raise UserError(f"the command line gives no address for {nic}: set it in BootArgs.nics")
        return assigned

    def _alive(self) -> bool:
        if self.vm_ref is None:
            return False
        try:
            return self.api.VM.get_power_state(self.vm_ref) == "Running"
        except Exception:
            return False

    def wait_for_ssh(self, target: SshTarget, timeout: float) -> float:
        """Wait until SSH on ``target`` answers (with the key when there is one); return the seconds taken."""
        with phase(f"wait for SSH on {target.host}:{target.port}"):
            try:
                if target.key_file is not None:
                    seconds = sshwait.wait_for_ssh(
                        target.host, target.port, Path(target.key_file), timeout, alive=self._alive
                    )
                else:
                    seconds = sshwait.wait_for_banner(target.host, target.port, timeout, self._alive)
            except TimeoutError as exc:
                raise UserError(
                    f"{self.vm_name}: {exc}; look at the VM's console in XenCenter / 'xl console'"
                ) from None
        self.timings["ssh"] = seconds
        return seconds

    def create(self, request: BootRequest) -> SshTarget:
        try:
            target = self.import_and_start(request)
            self.wait_for_ssh(target, request.ssh_timeout)
            return target
        except BaseException:
            self.destroy()
            raise

    # ----------------------------------------------------------------------------- teardown
    def destroy(self) -> None:
        """Shut down and remove the VM (its VBDs and VIFs go with it) and the VDI. Safe to call twice."""
        if self.session is None:
            return
        api = self.session.xenapi
        if self.vm_ref is not None:
            remove_vm(api, self.vm_ref)
            self.vm_ref = None
        if self.vdi_ref is not None:
            with contextlib.suppress(XenAPI.Failure):
                api.VDI.destroy(self.vdi_ref)
            self.vdi_ref = None
        with contextlib.suppress(Exception):
            self.session.xenapi.session.logout()
        self.session = None

    @classmethod
    def cleanup_leftovers(
        cls, prefix: str = RUN_PREFIX_BASE, settings: dict[str, str] | None = None
    ) -> list[str]:
        """Remove VMs (not templates) and VDIs whose names start with ``prefix``; return their names."""
        driver = cls(settings)
        removed: list[str] = []
        try:
            api = driver.api
            for ref, record in api.VM.get_all_records().items():
                name = record["name_label"]
                if (
                    name.startswith(prefix)
                    and not record["is_control_domain"]
                    and not record["is_a_template"]
                ):
                    remove_vm(api, ref)
                    removed.append(f"VM {name}")
            for ref, record in api.VDI.get_all_records().items():
                if record["name_label"].startswith(prefix):
                    with contextlib.suppress(XenAPI.Failure):
                        api.VDI.destroy(ref)
                        removed.append(f"VDI {record['name_label']}")
        finally:
            driver.destroy()
        return removed


def remove_vm(api: Any, vm: str) -> None:
    """Hard-shut-down (when running) and destroy ``vm``; its VBDs and VIFs go with it, its VDIs stay."""
    try:
        state = api.VM.get_power_state(vm)
    except XenAPI.Failure:
        return  # already gone
    if state in ("Running", "Paused"):
        with contextlib.suppress(XenAPI.Failure):
            api.VM.hard_shutdown(vm)
    with contextlib.suppress(XenAPI.Failure):
        api.VM.destroy(vm)
