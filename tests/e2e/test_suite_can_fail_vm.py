"""Each appliance check that needs a running system fails on a VM broken for it.

One secstorage VM (amd64) boots through the harness with the patch and the test agent (the e2e pool's
``canfail`` VM, booting in the background from the start of the session). The whole suite must pass on it
first; then each case breaks one thing over SSH (a listener on 22, policy ACCEPT, the agent stopped, a failed
unit...), runs the checks it targets, expects them to fail, and repairs the VM for the next case.
Its disk is the amd64 Hyper-V export read back (the -hyperv.vhd.zip's VHD through Python's zipfile and
``qemu-img -f vpc``), so the healthy run is also that export's boot proof (issue 16). As root the VM boots
inside the network lab (its public NIC on the lab's public bridge), so the secondary storage checks run in
the healthy run too, and the storage cases break what they need inside the VM: the NFS mount helper, the
export's or the download site's port, bzip2, apache, the public virtual host the boot writes. Artifacts under
``SYSTEMVM_ARTIFACTS``; skips when they are not there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from systemvm import naming
from systemvm.boot import payload
from systemvm.boot.testnet import TEST_MGMT_CIDR
from systemvm.check.suite import PACKAGES_DIR, check_node
from systemvm.defaults import DEFAULT_VERSION
from systemvm.lab import netlab
from tests.e2e import artifacts
from tests.e2e.vmpool import (
    SPECS,
    Shell,
    VmPool,
    assert_case_fails,
    assert_failed,
    check_results,
    healthy_run,
    overridden,
    pool_member,
)

pytestmark = [pytest.mark.e2e, pytest.mark.vm("canfail")]

FLAVOUR = SPECS["canfail"].flavour
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc9nVdpL2Tb5o0Xn5zWbq2S0bXyJ3mLh1Q9T1y0aZkK intruder@x"
LISTEN = "nohup setsid python3 -c 'import socket,time;s=socket.socket();s.bind((\"{addr}\",{port}));s.listen();time.sleep(3600)' >/dev/null 2>&1 & echo $! > /root/{name}.pid"  # noqa: E501
KILL = "kill $(cat /root/{name}.pid); rm -f /root/{name}.pid"
SSHD_HUP = "kill -HUP $(ss -Htlnp 'sport = :3922' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
SAVE_LIVE = "iptables-save > /root/live.rules"
RESTORE_LIVE = "iptables-restore < /root/live.rules"
# CloudStack's 3922 rule accepts NEW only: without the ESTABLISHED rules the harness's own SSH session would
# die with the VM's, so a stateless 3922 accept goes in first (it keeps the session; the cases' checks say
# nothing of it)
REMOVE_ESTABLISHED = (
    "iptables -I INPUT 1 -p tcp --dport 3922 -j ACCEPT && "
    "iptables -S INPUT | grep ESTABLISHED | sed 's/^-A /-D /' | while read -r r; do iptables $r; done"
)
PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-gmp.so"

S = check_node("test_ssh_access.py")
P = check_node("test_packages.py")
H = check_node("test_haproxy.py")
F = check_node("test_iptables.py")
I = check_node("test_ipsec.py")  # noqa: E741
A = check_node("test_agent.py")
B = check_node("test_boot_health.py")
R = check_node("test_role_contract.py")
C = check_node("test_cloudstack_state.py")
L = check_node("test_patch.py")
V = check_node("test_cloudstack_line.py")
T = check_node("test_storage_traffic.py")
SIG = "/var/cache/cloud/cloud-scripts-signature"
TV = "/opt/cloud/bin/get_template_version.sh"

# case -> (break, repair, params overrides, checks expected to fail). Cases run in this order on one VM.
CASES: dict[str, tuple[str, str, dict[str, Any], list[str]]] = {
    "something listens on 22": (
        LISTEN.format(addr="0.0.0.0", port=22, name="l22"),
        KILL.format(name="l22"),
        {},
        [S + "test_nothing_listens_on_port_22"],
    ),
    "3922 open beyond the control NIC": (
        LISTEN.format(addr="127.0.0.1", port=3922, name="l3922"),
        KILL.format(name="l3922"),
        {},
        [S + "test_sshd_listens_on_3922_on_the_control_interface_only"],
    ),
    "sshd offers passwords": (
        "printf 'PasswordAuthentication yes\\nKbdInteractiveAuthentication yes\\n'"
        f" > /etc/ssh/sshd_config.d/00-broken.conf && {SSHD_HUP}",
        f"rm -f /etc/ssh/sshd_config.d/00-broken.conf && {SSHD_HUP}",
        {},
        [S + "test_password_login_is_refused", S + "test_sshd_is_configured_for_3922_and_keys_only"],
    ),
    "root has a second key": (
        f"cp -p /root/.ssh/authorized_keys /root/ak.bak && echo '{OTHER_KEY}' >> /root/.ssh/authorized_keys",
        "cp -p /root/ak.bak /root/.ssh/authorized_keys",
        {},
        [S + "test_root_has_exactly_the_injected_key"],
    ),
    "injected key replaced": (
        f"cp -p /root/.ssh/authorized_keys /root/ak.bak && echo '{OTHER_KEY}' > /root/.ssh/authorized_keys",
        "cp -p /root/ak.bak /root/.ssh/authorized_keys",
        {},
        [S + "test_key_login_works"],  # the only check that runs without logging in
    ),
    "host keys from an old image": (
        "touch -d 2020-01-01 /etc/ssh/ssh_host_*_key",
        "true",
        {},
        [S + "test_host_keys_were_generated_on_this_boot"],
    ),
    "package removed": (
        "dpkg -r --force-depends tcpdump >/dev/null 2>&1",
        "true",
        {},
        [P + "test_every_listed_package_is_installed_at_the_recorded_version"],
    ),
    "kernel of the other flavour": (
        "true",
        "true",
        {"flavour": "i386"},
        [P + "test_running_kernel_is_the_flavours", P + "test_installed_kernel_is_the_flavours"],
    ),
    "haproxy started on a secstorage": (
        "systemctl start haproxy",
        "systemctl stop haproxy",
        {},
        [H + "test_haproxy_runs_only_on_router_roles", R + "test_role_services_are_in_their_state"],
    ),
    "policy ACCEPT": (
        f"{SAVE_LIVE} && iptables -P INPUT ACCEPT && iptables -P FORWARD ACCEPT",
        RESTORE_LIVE,
        {},
        [F + "test_input_and_forward_policies_are_drop"],
    ),
    "3922 accepted on every interface": (
        f"{SAVE_LIVE} && iptables -I INPUT 1 -p tcp --dport 3922 -j ACCEPT",
        RESTORE_LIVE,
        {},
        [F + "test_3922_is_accepted_on_the_control_interface_only"],
    ),
    "established traffic not accepted": (
        f"{SAVE_LIVE} && {REMOVE_ESTABLISHED}",
        RESTORE_LIVE,
        {},
        [F + "test_established_traffic_is_accepted", F + "test_the_rules_are_persisted_in_rules_v4"],
    ),
    "rules.v4 says ACCEPT": (
        "cp -p /etc/iptables/rules.v4 /root/rules.v4.bak && sed -i 's/^:INPUT DROP/:INPUT ACCEPT/' "
        "/etc/iptables/rules.v4",
        "cp -p /root/rules.v4.bak /etc/iptables/rules.v4",
        {},
        [F + "test_the_rules_are_persisted_in_rules_v4", R + "test_saved_rules_are_the_roles_contract"],
    ),
    "rules.v4 has an extra rule": (
        "cp -p /etc/iptables/rules.v4 /root/rules.v4.bak && echo '# edited' >> /etc/iptables/rules.v4",
        "cp -p /root/rules.v4.bak /etc/iptables/rules.v4",
        {},
        [R + "test_saved_rules_are_the_roles_contract"],
    ),
    "ipsec plugin missing": (
        f"mv {PLUGIN} /root/",
        f"mv /root/{Path(PLUGIN).name} {PLUGIN}",
        {},
        [I + "test_required_plugins_load", I + "test_required_plugin_libraries_are_installed"],
    ),
    "ipsec enabled on a secstorage": (  # the enable's link by hand, as for ssh.service below
        "ln -s /lib/systemd/system/strongswan-starter.service /etc/systemd/system/multi-user.target.wants/",
        "rm /etc/systemd/system/multi-user.target.wants/strongswan-starter.service",
        {},
        [I + "test_ipsec_service_is_enabled_only_where_the_role_needs_it"],
    ),
    "agent stopped": (
        "systemctl stop cloud",
        "systemctl start cloud",
        {},
        [A + "test_cloud_service_is_active"],
    ),
    "cloud.log lost": (
        "systemctl stop cloud && : > /var/log/cloud.log",  # stopped first: a starting agent logs again
        "systemctl start cloud",
        {},
        [A + "test_cloud_log_says_agent_started"],
    ),
    "listener heard nothing": (
        "true",
        "true",
        {"listener": {"messages": []}},
        [A + "test_management_listener_received_the_startup_message"],
    ),
    "listener heard another VM": (
        "true",
        "true",
        {"listener": {"messages": [{"type": "startup", "name": "v-9-VM", "role": "consoleproxy"}]}},
        [A + "test_management_listener_received_the_startup_message"],
    ),
    "a unit failed": (
        "systemd-run --unit=svmt-broken --no-block /bin/false && sleep 2",
        "systemctl reset-failed",
        {},
        [B + "test_no_failed_systemd_units"],
    ),
    "boot not finished": (
        "mv /var/cache/cloud/boot_up_done /root/",
        "mv /root/boot_up_done /var/cache/cloud/",
        {},
        [B + "test_boot_finished", B + "test_boot_time_and_uptime"],
    ),
    "command line not delivered": (
        "cp -p /var/cache/cloud/cmdline /root/cmdline.bak && echo 'template=domP type=secstorage' "
        "> /var/cache/cloud/cmdline",
        "cp -p /root/cmdline.bak /var/cache/cloud/cmdline",
        {},
        [B + "test_cmdline_is_the_one_the_harness_sent"],
    ),
    "hostname differs": (
        "hostname not-the-name",
        "hostname {name}",
        {},
        [B + "test_hostname_is_the_name_sent"],
    ),
    "enabled_svcs lists another role's services": (
        "cp -p /var/cache/cloud/enabled_svcs /root/es.bak && echo haproxy >/var/cache/cloud/enabled_svcs",
        "cp -p /root/es.bak /var/cache/cloud/enabled_svcs",
        {},
        [R + "test_service_lists_are_the_roles"],
    ),
    # the link `systemctl enable ssh` makes, made by hand: the enable itself runs Debian's sysv-install and a
    # daemon-reload, a minute of an emulated CPU, and is-enabled reads only the links
    "ssh.service enabled": (
        "ln -s /lib/systemd/system/ssh.service /etc/systemd/system/multi-user.target.wants/ssh.service",
        "rm /etc/systemd/system/multi-user.target.wants/ssh.service",
        {},
        [R + "test_role_services_are_in_their_state"],
    ),
    "patch not applied": (
        f"mv /{payload.SCRIPTS_MARKER} /root/marker.bak",
        f"mv /root/marker.bak /{payload.SCRIPTS_MARKER}",
        {},
        [R + "test_the_delivered_patch_was_applied"],
    ),
    "agent configured for another port": (
        "true",
        "true",
        {"mgmt_port": 1},
        [R + "test_agent_runs_with_the_boot_command_line"],
    ),
    "machine-id never made": (
        "cp -p /etc/machine-id /root/machine-id.bak && echo uninitialized > /etc/machine-id",
        "cp -p /root/machine-id.bak /etc/machine-id",
        {},
        [R + "test_machine_id_is_this_clones"],
    ),
    "sshd refuses ssh-rsa signatures": (
        f"echo 'PubkeyAcceptedAlgorithms -ssh-rsa' > /etc/ssh/sshd_config.d/00-broken.conf && {SSHD_HUP}",
        f"rm -f /etc/ssh/sshd_config.d/00-broken.conf && {SSHD_HUP}",
        {},
        [
            S + "test_rsa_key_login_with_sha1_signatures",
            S + "test_sshd_accepts_what_cloudstacks_java_client_sends",
        ],
    ),
    "a program CloudStack's scripts call is missing": (
        "mv /usr/bin/zip /root/zip.bak",
        "mv /root/zip.bak /usr/bin/zip",
        {},
        [P + "test_programs_cloudstack_scripts_run_are_present"],
    ),
    "cmd_line.json lost": (
        "mv /var/cache/cloud/cmd_line.json /root/cmd_line.json.bak",
        "mv /root/cmd_line.json.bak /var/cache/cloud/cmd_line.json",
        {},
        [C + "test_cmd_line_json_holds_the_command_line_in_cloudstacks_shape"],
    ),
    "/etc/cloudstack missing": (
        "mv /etc/cloudstack /root/etc-cloudstack.bak",
        "mv /root/etc-cloudstack.bak /etc/cloudstack",
        {},
        [C + "test_cloudstack_config_directory_exists"],
    ),
    "the public resolver first": (
        "cp -p /etc/resolv.conf /root/resolv.conf.bak && printf 'nameserver 127.0.0.1\\n' > /etc/resolv.conf",
        "cp -p /root/resolv.conf.bak /etc/resolv.conf",
        {},
        [C + "test_internal_dns_is_the_first_resolver"],
    ),
    "management network not routed": (
        f"ip route show {TEST_MGMT_CIDR} > /root/mgmt.route && ip route del {TEST_MGMT_CIDR}",
        "ip route add $(cat /root/mgmt.route)",
        {},
        [C + "test_management_network_is_routed_via_localgw"],
    ),
    "a secstorage forwards packets": (
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv4.ip_forward=0",
        {},
        [C + "test_routers_forward_and_other_roles_do_not"],
    ),
    "release names another version": (
        "cp -p /etc/cloudstack-release /root/release.bak && "
        "echo 'Cloudstack Release 0.0.1' > /etc/cloudstack-release",
        "cp -p /root/release.bak /etc/cloudstack-release",
        {},
        [B + "test_release_file_names_our_version"],
    ),
    "signature is not the scripts' digest": (
        f"cp -p {SIG} /root/sig.bak && echo 0123456789abcdef0123456789abcdef > {SIG}",
        f"cp -p /root/sig.bak {SIG}",
        {},
        [L + "test_scripts_signature_is_the_digest_of_the_kept_scripts"],
    ),
    "handshake line without its signature": (
        f"cp -p {TV} /root/tv.bak && printf '#!/bin/sh\\ncat /etc/cloudstack-release\\n' > {TV}",
        f"cp -p /root/tv.bak {TV}",
        {},
        [L + "test_handshake_answers_release_and_signature"],
    ),
    "handshake line with a third part": (
        f"cp -p {TV} /root/tv.bak && "
        f"printf '#!/bin/sh\\necho \"$(cat /etc/cloudstack-release)&a&b\"\\n' > {TV}",
        f"cp -p /root/tv.bak {TV}",
        {},
        [L + "test_handshake_answers_release_and_signature"],
    ),
    "patched.sh missing": (
        "mv /opt/cloud/bin/patched.sh /root/patched.sh.bak",
        "mv /root/patched.sh.bak /opt/cloud/bin/patched.sh",
        {},
        [L + "test_patched_probe_passes_once_the_scripts_are_in"],
    ),
    "patch after the boot gave no version": (
        "true",
        "true",
        {"boot_patch.version": ""},
        [L + "test_patch_run_after_the_copy_gives_exactly_the_version"],
    ),
    "live patch exited 1": (
        "true",
        "true",
        {"live_patch.exit_status": 1},
        [L + "test_live_patch_exits_0_with_the_version_cloudstack_reads"],
    ),
}


NFS = [T + "test_secondary_storage_mounts_over_nfs_v3", T + "test_secondary_storage_mounts_over_nfs_v4"]
DOWNLOAD = [T + "test_a_downloaded_template_unpacks_to_its_virtual_size"]
APACHE = [T + "test_apache_serves_a_download_on_the_public_address"]
SERVER = netlab.LabPlan().server_ip  # the lab's public server: the NFS export and the download site


def reject_to(port: int) -> tuple[str, str]:
    """Break and repair: the VM's own firewall resets its connections to the public server's ``port``."""
    rule = f"OUTPUT -d {SERVER} -p tcp --dport {port} -j REJECT --reject-with tcp-reset"
    return f"iptables -I {rule}", f"iptables -D {rule}"


def moved_away(program: str) -> tuple[str, str]:
    """Break and repair: ``program`` moved out of the PATH (and back where it was)."""
    keep = f"/root/{program}.path"
    return (
        f"command -v {program} > {keep} && mv $(cat {keep}) /root/{program}.bak",
        f"mv /root/{program}.bak $(cat {keep}) && rm -f {keep}",
    )


# The storage cases (as root, on the VM in its lab): case -> (break, repair, checks expected to fail)
STORAGE_CASES: dict[str, tuple[str, str, list[str]]] = {
    "the NFS mount helper is missing": (*moved_away("mount.nfs"), NFS),
    "the export is unreachable": (*reject_to(2049), NFS),
    "the download site is unreachable": (*reject_to(80), DOWNLOAD),
    "bzip2 is missing": (*moved_away("bzip2"), DOWNLOAD),
    "apache2 cannot start": (
        moved_away("apache2")[0],
        f"{moved_away('apache2')[1]} && systemctl restart apache2",
        APACHE,
    ),
    # the template's share: the virtual host the boot writes on the public address (secstorage.sh's)
    "no virtual host on the public address": (
        "mkdir -p /root/svmt-vhost && mv /etc/apache2/sites-enabled/vhost-*.conf /root/svmt-vhost/",
        "mv /root/svmt-vhost/* /etc/apache2/sites-enabled/ && rmdir /root/svmt-vhost"
        " && systemctl restart apache2",
        APACHE,
    ),
}


@pytest.fixture(scope="module")
def vm(vm_pool: VmPool) -> Iterator[tuple[Any, dict[str, Any], Shell]]:
    """The pool's KVM secstorage VM (booted in the background since the session started), then stopped."""
    member = pool_member(vm_pool, "canfail")
    try:
        booted = member.ready()
        version_dir = artifacts.version_dir()
        version = version_dir.name if version_dir else DEFAULT_VERSION
        manifest = naming.manifest(version_dir.parent, version, FLAVOUR) if version_dir else None
        try:
            booted.listener.wait_for_startup(booted.name, timeout=180)
        except TimeoutError:
            pass  # the healthy run's agent check reports it
        params = {
            **booted.suite_params(),
            "version": version,
            "manifest": str(manifest) if manifest else None,
            "packages_dir": str(PACKAGES_DIR),
        }
        shell = Shell(booted.target.host, booted.target.port, booted.key_file)
        try:
            yield booted, params, shell
        finally:
            shell.close()
    finally:
        vm_pool.release("canfail")


@pytest.fixture(scope="module")
def healthy(vm: tuple[Any, dict[str, Any], Shell], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return healthy_run(vm, tmp_path_factory, None)


def test_the_healthy_vm_passes_every_check(healthy: dict[str, tuple[str, str]]) -> None:
    bad = {name: message for name, (result, message) in healthy.items() if result in ("failed", "error")}
    assert not bad, f"the healthy VM fails: {bad}"
    assert sum(result == "passed" for result, _ in healthy.values()) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_vm_fails_the_check(
    case: str, vm: tuple[Any, dict[str, Any], Shell], healthy: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """The targeted checks fail because of the break: they passed on the healthy VM, or fail now with
    another message."""
    booted, params, shell = vm
    break_it, repair, overrides, expected = CASES[case]
    shell.run(break_it)
    try:
        results = check_results(overridden(params, overrides), tmp_path, case, expected)
    finally:
        shell.run(repair.format(name=booted.name))
    for name in assert_failed(case, results, expected, tmp_path):
        assert healthy[name][0] == "passed" or healthy[name][1] != results[name][1], (
            f"{case}: {name} fails the same way on the healthy VM: {results[name][1]}"
        )


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the network lab needs root")
@pytest.mark.parametrize("case", list(STORAGE_CASES))
def test_a_broken_storage_vm_fails_the_storage_check(
    case: str, vm: tuple[Any, dict[str, Any], Shell], healthy: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """Each storage check fails on the VM in its lab broken for it, and passed on the healthy one."""
    booted, params, shell = vm
    assert booted.lab is not None, "the pool's secstorage was booted without its lab"
    break_it, repair, expected = STORAGE_CASES[case]
    shell.run(break_it)
    try:
        results = check_results(params, tmp_path, case, expected)
    finally:
        shell.run(repair)
    assert_case_fails(case, results, expected, healthy, tmp_path, "VM")
