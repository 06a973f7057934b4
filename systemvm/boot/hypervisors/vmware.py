"""VMware vSphere driver (pyvmomi): import the OVA, deliver the command line in ``machine.id``, power on.

Flow, as vSphere's OVF import works (vSphere Web Services API: ``OvfManager``, ``ResourcePool.ImportVApp``,
``HttpNfcLease``): read the OVF descriptor from the OVA; ``OvfManager.CreateImportSpec`` (errors fail the run,
warnings are shown and kept in :attr:`VmwareDriver.warnings`); ``ResourcePool.ImportVApp``; wait for the
lease to be ready; POST each file item to its device URL (the streamOptimized VMDK with
``Content-Type: application/x-vnd.vmware-streamVmdk`` and a Content-Length), reporting
``HttpNfcLeaseProgress``; ``HttpNfcLeaseComplete`` (or ``HttpNfcLeaseAbort`` on failure). Then reconfigure:
the boot command line goes into the VMX option ``machine.id`` (``extraConfig``), which CloudStack's VMware
resource uses and the appliance reads with ``vmtoolsd --cmd 'machineID.get'``; one vmxnet3 NIC per NIC of the
role on the configured network. Power on; the address is the control NIC's IP from the command line.

Settings (``[vmware]`` in the config file or ``SYSTEMVM_VMWARE_*``): ``url`` (``https://vc.example.org/sdk``
or a host name), ``user``, ``password``, ``datacenter`` (optional when there is one), ``cluster`` or ``host``,
``datastore``, ``network``, ``verify_tls`` (default true), ``ca_file`` (a PEM bundle to trust).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import tarfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import requests
import urllib3
from lxml import etree
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from systemvm.boot import sshwait
from systemvm.boot.hypervisors import settings as settings_mod
from systemvm.boot.hypervisors.base import RUN_PREFIX_BASE, BootRequest, Driver, SshTarget
from systemvm.contract import SSH_PORT, control_nic, nic_count
from systemvm.errors import UserError
from systemvm.export import detect
from systemvm.export.formats.ova import member_file
from systemvm.progress import phase, say

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
STREAM_VMDK_TYPE = "application/x-vnd.vmware-streamVmdk"
LEASE_TIMEOUT = 300.0
TASK_TIMEOUT = 600.0
CONNECT_TIMEOUT = 30


def _fault_text(exc: BaseException | vmodl.MethodFault | None) -> str:
    msg = (
        getattr(exc, "msg", None) or getattr(exc, "localizedMessage", None) or str(exc) or type(exc).__name__
    )
    return " ".join(str(msg).split())


def nics_for(request: BootRequest) -> int:
    """NICs the VM gets on VMware: the role's layout there, and one per address on the command line."""
    return max(nic_count(request.boot_args.role, "vmware"), len(request.boot_args.nics))


def control_address(request: BootRequest) -> str:
    index = int(control_nic(request.boot_args.role, "vmware")[3:])
    if index >= len(request.boot_args.nics):
        raise UserError(
            f"the command line has no address for eth{index}, the control NIC of a {request.boot_args.role} "
            "on VMware: give one IP per NIC"
        )
    return request.boot_args.nics[index][0]


def read_ova_descriptor(path: Path) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """The OVF descriptor text and the archive's members; a wrong format gives one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist: export it with 'invoke export --formats ova'")
    if detect.kind_of(path) == "bz2":
        raise UserError(f"artifact {path} is bzip2-compressed: VMware takes the -vmware.ova file as exported")
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            if not members or not members[0].name.endswith(".ovf"):
                raise UserError(
                    f"artifact {path} has no OVF descriptor as its first member: give an .ova file"
                )
            descriptor = member_file(tar, members[0]).read().decode("utf-8")
    except (tarfile.TarError, UnicodeDecodeError) as exc:
        raise UserError(
            f"artifact {path} is not an OVA (an uncompressed tar with an OVF first): {exc}"
        ) from None
    return descriptor, {m.name: m for m in members}


def ovf_networks(descriptor: str) -> list[str]:
    """Names of the logical networks the OVF's NetworkSection declares (each is mapped to ``network``)."""
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False)
    try:
        root = etree.fromstring(descriptor.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise UserError(f"the OVA's OVF descriptor is not well-formed XML ({exc}): export it again") from None
    return [name for n in root.iter(f"{{{OVF_NS}}}Network") if (name := n.get(f"{{{OVF_NS}}}name"))]


class _UploadReader:
    """A file-like view of one archive member that reports lease progress while requests reads it."""

    def __init__(self, f: BinaryIO, size: int, report: Callable[[int], None]) -> None:
        self.f, self.size, self.report, self.sent = f, size, report, 0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n and n > 0 else 1 << 20)
        self.sent += len(data)
        self.report(self.sent)
        return data


class VmwareDriver(Driver):
    name = "vmware"

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = dict(settings) if settings is not None else settings_mod.load_settings("vmware")
        self.si: vim.ServiceInstance | None = None
        self.vm: vim.VirtualMachine | None = None
        self.lease: vim.HttpNfcLease | None = None
        self.warnings: list[str] = []
        self.vm_name: str | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ connection

    def _endpoint(self) -> tuple[str, int, str]:
        url = self.settings.get("url", "")
        parsed = urlparse(url if "://" in url else f"https://{url}")
        if parsed.scheme != "https" or not parsed.hostname:
            raise UserError(f"vmware: url {url!r} is not https://HOST[:PORT][/sdk]: fix SYSTEMVM_VMWARE_URL")
        return parsed.hostname, parsed.port or 443, parsed.path or "/sdk"

    def _ssl_context(self) -> ssl.SSLContext:
        if not settings_mod.verify_tls(self.settings):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.settings.get("ca_file") or None)

    def connect(self) -> vim.ServiceInstance:
        if self.si is not None:
            return self.si
        settings_mod.require(self.settings, "vmware", "url", "user", "password")
        host, port, path = self._endpoint()
        where = f"{host}:{port}"
        try:
            self.si = SmartConnect(
                host=host,
                port=port,
                path=path,
                user=self.settings["user"],
                pwd=self.settings["password"],
                sslContext=self._ssl_context(),
                httpConnectionTimeout=CONNECT_TIMEOUT,
            )
        except vim.fault.InvalidLogin:
            raise UserError(
                f"vmware: login to {where} as '{self.settings['user']}' failed (wrong user or password): "
                "fix SYSTEMVM_VMWARE_USER / SYSTEMVM_VMWARE_PASSWORD"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UserError(
                f"vmware: TLS certificate of {where} is not trusted ({exc.verify_message}): "
                "set ca_file to its CA bundle, or verify_tls = false to opt out"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise UserError(
                f"vmware: cannot reach {where} ({_fault_text(exc)}): check the url setting"
            ) from None
        except vmodl.MethodFault as exc:
            raise UserError(f"vmware: connecting to {where} failed: {_fault_text(exc)}") from None
        return self.si

    def disconnect(self) -> None:
        if self.si is not None:
            with contextlib.suppress(Exception):
                Disconnect(self.si)
            self.si = None

    # ------------------------------------------------------------------------------------ inventory

    def _datacenter(self) -> vim.Datacenter:
        content = self.connect().RetrieveContent()
        datacenters = [e for e in content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        wanted = self.settings.get("datacenter")
        if wanted:
            for dc in datacenters:
                if dc.name == wanted:
                    return dc
            names = ", ".join(dc.name for dc in datacenters) or "none"
            raise UserError(
                f"vmware: datacenter '{wanted}' not found (available: {names}): fix the datacenter setting"
            )
        if len(datacenters) != 1:
            names = ", ".join(dc.name for dc in datacenters) or "none"
            raise UserError(f"vmware: {len(datacenters)} datacenters ({names}): set the datacenter setting")
        return datacenters[0]

    @staticmethod
    def _walk(folder: vim.Folder, kind: type) -> list:
        found = []
        for child in folder.childEntity:
            if isinstance(child, kind):
                found.append(child)
            elif isinstance(child, vim.Folder):
                found.extend(VmwareDriver._walk(child, kind))
        return found

    def _placement(self, dc: vim.Datacenter) -> tuple[vim.ResourcePool, vim.HostSystem | None]:
        computes = self._walk(dc.hostFolder, vim.ComputeResource)
        cluster, host = self.settings.get("cluster"), self.settings.get("host")
        if cluster:
            for compute in computes:
                if compute.name == cluster and isinstance(compute, vim.ClusterComputeResource):
                    chosen = None
                    if host:
                        chosen = next((h for h in compute.host if h.name == host), None)
                        if chosen is None:
                            names = ", ".join(h.name for h in compute.host)
                            raise UserError(
                                f"vmware: host '{host}' is not in cluster '{cluster}' (hosts: {names}): "
                                "fix the host setting"
                            )
                    if compute.resourcePool is None:
                        raise UserError(f"vmware: cluster '{cluster}' has no resource pool: check vCenter")
                    return compute.resourcePool, chosen
            names = ", ".join(c.name for c in computes if isinstance(c, vim.ClusterComputeResource)) or "none"
            raise UserError(
                f"vmware: cluster '{cluster}' not found in '{dc.name}' (clusters: {names}): "
                "fix the cluster setting"
            )
        if host:
            for compute in computes:
                for candidate in compute.host:
                    if candidate.name == host:
                        return compute.resourcePool, candidate
            names = ", ".join(h.name for c in computes for h in c.host) or "none"
            raise UserError(
                f"vmware: host '{host}' not found in '{dc.name}' (hosts: {names}): fix the host setting"
            )
        raise UserError(
            "vmware: neither cluster nor host is set: set SYSTEMVM_VMWARE_CLUSTER or SYSTEMVM_VMWARE_HOST"
        )

    def _datastore(self, dc: vim.Datacenter) -> vim.Datastore:
        settings_mod.require(self.settings, "vmware", "datastore")
        wanted = self.settings["datastore"]
        for ds in dc.datastore:
            if ds.name == wanted:
                return ds
        names = ", ".join(ds.name for ds in dc.datastore) or "none"
        raise UserError(
            f"vmware: datastore '{wanted}' not found in datacenter '{dc.name}' (available: {names}): "
            "fix the datastore setting"
        )

    def _network(self, dc: vim.Datacenter) -> vim.Network:
        settings_mod.require(self.settings, "vmware", "network")
        wanted = self.settings["network"]
        for network in dc.network:
            if network.name == wanted:
                return network
        names = ", ".join(sorted({n.name for n in dc.network})) or "none"
        raise UserError(
            f"vmware: network '{wanted}' not found in datacenter '{dc.name}' (available: {names}): "
            "fix the network setting"
        )

    # ------------------------------------------------------------------------------------ tasks

    def _wait(self, task: vim.Task, what: str, timeout: float = TASK_TIMEOUT) -> object:
        deadline = time.monotonic() + timeout
        while task.info.state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
            if time.monotonic() > deadline:
                raise UserError(
                    f"vmware: {what} did not finish within {timeout:.0f} s: check the vCenter tasks"
                )
            time.sleep(0.2)
        if task.info.state == vim.TaskInfo.State.error:
            raise UserError(f"vmware: {what} failed: {_fault_text(task.info.error)}")
        return task.info.result

    # ------------------------------------------------------------------------------------ import

    def _import_spec(
        self,
        descriptor: str,
        pool: vim.ResourcePool,
        datastore: vim.Datastore,
        network: vim.Network,
        name: str,
    ) -> vim.OvfManager.CreateImportSpecResult:
        manager = self.connect().content.ovfManager
        if manager is None:
            raise UserError("vmware: the endpoint has no OVF manager: connect to vCenter or ESXi")
        mapping = [vim.OvfManager.NetworkMapping(name=n, network=network) for n in ovf_networks(descriptor)]
        params = vim.OvfManager.CreateImportSpecParams(
            entityName=name, diskProvisioning="thin", networkMapping=mapping
        )
        result = manager.CreateImportSpec(descriptor, pool, datastore, params)
        for warning in result.warning or []:
            text = _fault_text(warning)
            self.warnings.append(text)
            say(f"    warning: vmware import: {text}")
        if result.error:
            raise UserError(
                f"vmware: the OVF cannot be imported: {'; '.join(_fault_text(e) for e in result.error)}"
            )
        return result

    def _wait_lease(self, lease: vim.HttpNfcLease) -> None:
        deadline = time.monotonic() + LEASE_TIMEOUT
        while lease.state == vim.HttpNfcLease.State.initializing:
            if time.monotonic() > deadline:
                raise UserError(f"vmware: import lease not ready within {LEASE_TIMEOUT:.0f} s: check vCenter")
            time.sleep(0.2)
        if lease.state == vim.HttpNfcLease.State.error:
            raise UserError(f"vmware: import lease failed: {_fault_text(lease.error)}")
        if lease.state != vim.HttpNfcLease.State.ready:
            raise UserError(f"vmware: import lease is '{lease.state}', expected 'ready'")

    def _upload(
        self,
        artifact: Path,
        members: dict[str, tarfile.TarInfo],
        result: vim.OvfManager.CreateImportSpecResult,
        lease: vim.HttpNfcLease,
    ) -> None:
        host, port, _ = self._endpoint()
        netloc = host if port == 443 else f"{host}:{port}"
        items = {item.deviceId: item for item in result.fileItem or []}
        total = sum(members[item.path].size for item in items.values() if item.path in members) or 1
        done = 0
        last_percent = -1

        def report(sent_in_item: int) -> None:
            nonlocal last_percent
            percent = min(99, int(100 * (done + sent_in_item) / total))
            if percent >= last_percent + 5:
                last_percent = percent
                lease.HttpNfcLeaseProgress(percent)

        verify: bool | str = settings_mod.verify_tls(self.settings)
        if verify and self.settings.get("ca_file"):
            verify = self.settings["ca_file"]
        cookie = self.connect()._stub.cookie
        with tarfile.open(artifact, "r:") as tar:
            info = lease.info  # set once the lease is ready (HttpNfcLease.info)
            if info is None:
                raise UserError(
                    "vmware: the import lease is ready but lists no device URLs: see vCenter tasks"
                )
            for device_url in info.deviceUrl:
                item = items.get(device_url.importKey)
                if item is None:
                    continue
                if item.path not in members:
                    raise UserError(
                        f"vmware: the OVA has no file {item.path} that the OVF references: export again"
                    )
                member = members[item.path]
                # "*" stands for the server the client connected to (HttpNfcLeaseDeviceUrl)
                url = device_url.url.replace("://*/", f"://{netloc}/", 1).replace("*", host)
                content_type = STREAM_VMDK_TYPE if item.path.endswith(".vmdk") else "application/octet-stream"
                f = member_file(tar, member)
                if content_type == STREAM_VMDK_TYPE:
                    if f.read(4) != b"KDMV":
                        raise UserError(
                            f"vmware: {item.path} in {artifact.name} is not a sparse VMDK: export again"
                        )
                    f.seek(0)
                say(f"    uploading {item.path} ({member.size} bytes)")
                try:
                    with warnings.catch_warnings():
                        # verify_tls = false was chosen explicitly: no urllib3 warning per request
                        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                        response = requests.post(
                            url,
                            data=_UploadReader(f, member.size, report),
                            headers={
                                "Content-Type": content_type,
                                "Content-Length": str(member.size),
                                "Cookie": cookie,
                            },
                            verify=verify,
                            timeout=(CONNECT_TIMEOUT, 600),
                        )
                except requests.RequestException as exc:
                    raise UserError(
                        f"vmware: upload of {item.path} to {url} failed: {_fault_text(exc)}"
                    ) from None
                if response.status_code not in (200, 201):
                    raise UserError(
                        f"vmware: upload of {item.path} refused: "
                        f"HTTP {response.status_code} {response.reason}"
                    )
                done += member.size
        lease.HttpNfcLeaseProgress(100)

    def import_vm(self, request: BootRequest) -> vim.VirtualMachine:
        """Import the OVA as a VM named ``<run_prefix>-<name>``; return it (powered off, no NIC yet)."""
        artifact = Path(request.artifact)
        descriptor, members = read_ova_descriptor(artifact)
        self.connect()
        dc = self._datacenter()
        pool, host = self._placement(dc)
        datastore = self._datastore(dc)
        network = self._network(dc)
        self.vm_name = f"{request.run_prefix}-{request.boot_args.name}"
        result = self._import_spec(descriptor, pool, datastore, network, self.vm_name)
        if result.importSpec is None:  # CreateImportSpec named no error, yet made no spec
            raise UserError("vmware: vCenter made no import spec for the OVF and named no error: see vCenter")
        self.lease = pool.ImportVApp(result.importSpec, dc.vmFolder, host)
        try:
            self._wait_lease(self.lease)
            self._upload(artifact, members, result, self.lease)
            if self.lease.info is None:
                raise UserError("vmware: the import lease has no info after the upload: see vCenter tasks")
            entity = self.lease.info.entity
            self.lease.HttpNfcLeaseComplete()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                fault = vmodl.fault.SystemError(reason=_fault_text(exc)[:200] or "aborted")
                self.lease.HttpNfcLeaseAbort(fault)
            raise
        finally:
            self.lease = None
        if not isinstance(entity, vim.VirtualMachine):
            raise UserError(f"vmware: the import made a {type(entity).__name__}, not a VM: check the OVA")
        self.vm = entity
        return entity

    def configure_vm(self, request: BootRequest) -> None:
        """Put the command line in ``machine.id`` and add the role's NICs on the configured network."""
        network = self._network(self._datacenter())
        changes = []
        for index in range(nics_for(request)):
            nic = vim.vm.device.VirtualVmxnet3()
            nic.key = -100 - index
            backing: vim.vm.device.VirtualDevice.BackingInfo
            if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
                switch = network.config.distributedVirtualSwitch
                if switch is None:
                    raise UserError(f"vmware: port group '{network.name}' has no switch: fix the network")
                backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo()
                backing.port = vim.dvs.PortConnection(portgroupKey=network.key, switchUuid=switch.uuid)
            else:
                backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name)
                backing.network = network
            nic.backing = backing
            nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, allowGuestControl=True
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
        spec = vim.vm.ConfigSpec(
            deviceChange=changes,
            extraConfig=[vim.option.OptionValue(key="machine.id", value=request.boot_args.to_cmdline())],
        )
        self._wait(self._imported().ReconfigVM_Task(spec), f"reconfiguring {self.vm_name}")

    def _imported(self) -> vim.VirtualMachine:
        if self.vm is None:
            raise UserError("vmware: no VM imported yet: import_vm() comes first")
        return self.vm

    def import_and_start(self, request: BootRequest) -> SshTarget:
        """Import, configure, power on; return where SSH will answer (no SSH wait: see wait_for_ssh)."""
        try:
            with phase(f"vmware: import {Path(request.artifact).name}"):
                self.import_vm(request)
            with phase(f"vmware: configure and power on {self.vm_name}"):
                self.configure_vm(request)
                self._wait(self._imported().PowerOnVM_Task(), f"powering on {self.vm_name}")
            return SshTarget(host=control_address(request), port=SSH_PORT)
        except BaseException:
            self.destroy()
            raise

    @staticmethod
    def wait_for_ssh(host: str, port: int = SSH_PORT, timeout: float = 300.0) -> None:
        """Wait until an SSH server answers at host:port (its banner starts with ``SSH-``)."""
        try:
            sshwait.wait_for_banner(host, port, timeout)
        except TimeoutError as exc:
            raise UserError(f"vmware: {exc}") from None

    def create(self, request: BootRequest) -> SshTarget:
        target = self.import_and_start(request)
        host = target.host
        try:
            with phase(f"vmware: wait for SSH on {host}:{SSH_PORT}"):
                self.wait_for_ssh(host, SSH_PORT, request.ssh_timeout)
        except BaseException:
            self.destroy()
            raise
        return target

    # ------------------------------------------------------------------------------------ teardown

    def _power_off_and_destroy(self, vm: vim.VirtualMachine) -> None:
        name = vm.name
        if vm.runtime.powerState != vim.VirtualMachine.PowerState.poweredOff:
            self._wait(vm.PowerOffVM_Task(), f"powering off {name}")
        self._wait(vm.Destroy_Task(), f"destroying {name}")

    def destroy(self) -> None:
        try:
            if self.lease is not None:
                with contextlib.suppress(Exception):
                    self.lease.HttpNfcLeaseAbort(vmodl.fault.SystemError(reason="destroyed"))
                self.lease = None
            if self.vm is not None:
                try:
                    self._power_off_and_destroy(self.vm)
                except vmodl.fault.ManagedObjectNotFound:
                    pass
                self.vm = None
        finally:
            self.disconnect()

    @classmethod
    def cleanup_leftovers(
        cls, prefix: str = RUN_PREFIX_BASE, settings: dict[str, str] | None = None
    ) -> list[str]:
        driver = cls(settings)
        removed = []
        try:
            leftovers = [vm for vm in all_vms(driver.connect()) if vm.name.startswith(prefix)]
            for vm in leftovers:
                name = vm.name
                driver._power_off_and_destroy(vm)
                removed.append(name)
        finally:
            driver.disconnect()
        return removed


def find_vm(si: vim.ServiceInstance, name: str) -> vim.VirtualMachine | None:
    """The VM called ``name`` anywhere in the inventory, or None."""
    return next((vm for vm in all_vms(si) if vm.name == name), None)


def all_vms(si: vim.ServiceInstance) -> list[vim.VirtualMachine]:
    """Every VM in the inventory."""
    content = si.RetrieveContent()
    if content.viewManager is None:
        raise UserError("vmware: the endpoint has no view manager: connect to vCenter or ESXi")
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return [vm for vm in view.view if isinstance(vm, vim.VirtualMachine)]
    finally:
        view.Destroy()
