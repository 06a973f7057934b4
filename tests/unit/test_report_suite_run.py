"""The suite's plumbing end to end on this host (testinfra's local backend, image mode): the guard lets
the suite in when a target is given, every check is named for a release engineer, checks that need a
running VM skip, and the JUnit XML becomes a report. Pass/fail of the checks depends on this host and is
not asserted here (tests/e2e/test_suite_can_fail_* do that on real targets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from systemvm.check.report import parse_junit, write_report
from systemvm.check.suite import PACKAGES_DIR, REPO, SUITE_DIR, run_checks

LIVE_ONLY = {
    "test_sshd_listens_on_3922_on_the_control_interface_only",
    "test_nothing_listens_on_port_22",
    "test_key_login_works",
    "test_password_login_is_refused",
    "test_root_has_exactly_the_injected_key",
    "test_host_keys_were_generated_on_this_boot",
    "test_running_kernel_is_the_flavours",
    "test_haproxy_runs_only_on_router_roles",
    "test_input_and_forward_policies_are_drop",
    "test_3922_is_accepted_on_the_control_interface_only",
    "test_established_traffic_is_accepted",
    "test_the_roles_ports_are_open",
    "test_the_rules_are_persisted_in_rules_v4",
    "test_required_plugins_load",
    "test_cloud_service_is_active",
    "test_cloud_log_says_agent_started",
    "test_management_listener_received_the_startup_message",
    "test_no_failed_systemd_units",
    "test_boot_finished",
    "test_cmdline_is_the_one_the_harness_sent",
    "test_hostname_is_the_name_sent",
    "test_release_file_names_our_version",
    "test_boot_time_and_uptime",
    "test_service_lists_are_the_roles",
    "test_role_services_are_in_their_state",
    "test_saved_rules_are_the_roles_contract",
    "test_the_delivered_patch_was_applied",
    "test_agent_runs_with_the_boot_command_line",
    "test_machine_id_is_this_clones",
    "test_rsa_key_login_with_sha1_signatures",
    "test_legacy_scp_copy_works",
    "test_cmd_line_json_holds_the_command_line_in_cloudstacks_shape",
    "test_internal_dns_is_the_first_resolver",
    "test_routers_forward_and_other_roles_do_not",
    "test_management_network_is_routed_via_localgw",
    "test_patch_run_after_the_copy_gives_exactly_the_version",
    "test_handshake_answers_release_and_signature",
    "test_live_patch_exits_0_with_the_version_cloudstack_reads",
    "test_scripts_signature_is_the_digest_of_the_kept_scripts",
    "test_scripts_of_the_live_patch_are_unpacked_over_root",
    "test_agent_is_fresh_from_agent_zip_on_agent_roles",
    "test_live_patch_logged_its_result",
    "test_patched_probe_passes_once_the_scripts_are_in",
    "test_kernel_runs_with_cloudstacks_sysctl_settings",
    "test_conntrack_helpers_are_loaded",
    "test_nics_carry_the_macs_nic_macs_lists",
    "test_nics_have_their_ipv6_addresses",
    "test_default_ipv6_route_is_ip6gateway",
    "test_timesyncd_uses_the_ntp_servers_sent",
    "test_root_password_is_vmpassword_and_kept_hashed_only",
    "test_command_line_copies_are_roots_only",
    "test_guest_traffic_leaves_with_the_routers_public_address",
    "test_port_forward_reaches_the_guest_backend",
    "test_egress_rule_blocks_its_destination_only",
    "test_connection_tracking_holds_the_guests_flow",
    "test_load_balancer_takes_turns_over_the_backends",
    "test_load_balancer_stops_sending_to_a_dead_backend",
    "test_dnsmasq_leases_the_guest_its_address_with_the_router_as_gateway",
    "test_dnsmasq_answers_a_guest_vms_name",
    "test_apache_serves_the_routers_guest_address",
    "test_every_boot_rule_can_be_rewritten_by_cloudstack",
    "test_site_to_site_vpn_carries_guest_traffic_to_the_peers_network[ikev2]",
    "test_site_to_site_vpn_carries_guest_traffic_to_the_peers_network[ikev1]",
    "test_secondary_storage_mounts_over_nfs_v3",
    "test_secondary_storage_mounts_over_nfs_v4",
    "test_a_downloaded_template_unpacks_to_its_virtual_size",
    "test_apache_serves_a_download_on_the_public_address",
    "test_the_public_ports_accept_connections_from_the_public_network",
    "test_other_ports_are_dropped_on_the_public_address",
}
SECTIONS = {
    "3922 access",
    "Packages",
    "HAProxy",
    "iptables",
    "IPsec",
    "Agent start",
    "Boot health",
    "Role contract",
    "CloudStack state",
    "Patch and version handshake",
    "Kernel and system settings",
    "Router traffic",
    "Router site-to-site VPN",
    "Boot command line keys",
    "Secondary storage traffic",
    "Console proxy ports",
    "CloudStack line",
}


def test_plain_pytest_does_not_collect_the_appliance_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(SUITE_DIR)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SYSTEMVM_APPLIANCE_PARAMS"},
    )
    assert "no tests collected" in proc.stdout, proc.stdout[-500:]


def test_suite_runs_against_a_target_and_reports(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"packages": {"bash": "5.2.15-2+b2"}}))
    params = {
        "target": "local://",
        "kind": "image",
        "role": "secstorage",
        "flavour": "amd64",
        "version": "4.20.0",
        "manifest": str(manifest),
        "packages_dir": str(PACKAGES_DIR),
    }
    junit = run_checks(params, tmp_path, "local")
    summary = parse_junit(junit)
    names = {c.name for c in summary.checks}
    assert LIVE_ONLY < names
    assert len(names) == len(summary.checks) >= len(LIVE_ONLY) + 10
    for check in summary.checks:
        assert check.properties.get("check"), f"{check.name} has no release-engineer name (docstring)"
        assert check.section in SECTIONS, f"{check.name}: section {check.section!r}"
        if check.name in LIVE_ONLY:
            assert check.result == "skipped", f"{check.name} ran without a VM"
        else:
            assert check.result in ("passed", "failed"), f"{check.name}: {check.result} {check.message}"
    assert json.loads((tmp_path / "local.params.json").read_text())["target"] == "local://"
    out = tmp_path / "local.md"
    write_report(junit, out, "local")
    rows = [
        line for line in out.read_text().splitlines() if line.startswith("| ") and "| Section |" not in line
    ]
    assert len(rows) == len(summary.checks)
