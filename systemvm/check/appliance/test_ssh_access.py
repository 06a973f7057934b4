"""3922 access.

sshd answers on port 3922 on the role's control interface only, with the injected key only.
"""

from __future__ import annotations

import base64
import socket

import paramiko
import pytest

from systemvm.check.appliance.target import boot_epoch, key_identity, parse_listeners, run_ok
from systemvm.contract import SSH_PORT


def _tcp_listeners(host) -> list[tuple[str, int, str]]:
    return parse_listeners(run_ok(host, "ss -Htlnp"))


@pytest.mark.live
def test_sshd_listens_on_3922_on_the_control_interface_only(host, params) -> None:
    """sshd listens on 3922 on the control interface only"""
    on_3922 = [entry for entry in _tcp_listeners(host) if entry[1] == SSH_PORT]
    assert on_3922, "nothing listens on TCP 3922"
    wrong = [addr for addr, _, _ in on_3922 if addr != params.control_ip]
    assert not wrong, (
        f"3922 is also open on {', '.join(wrong)}; expected only {params.control_ip} ({params.control_nic})"
    )
    not_sshd = [proc for _, _, proc in on_3922 if "sshd" not in proc]
    assert not not_sshd, f"a process other than sshd holds 3922: {not_sshd}"


@pytest.mark.live
def test_nothing_listens_on_port_22(host) -> None:
    """Nothing listens on port 22"""
    on_22 = [f"{addr}:{port} {proc}" for addr, port, proc in _tcp_listeners(host) if port == 22]
    assert not on_22, f"port 22 is open: {on_22}"


@pytest.mark.live
def test_key_login_works(params) -> None:
    """Key login as root on 3922 works"""
    ssh = params["ssh"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            ssh["host"],
            port=int(ssh["port"]),
            username="root",
            key_filename=ssh["key_file"],
            allow_agent=False,
            look_for_keys=False,
            timeout=20,
            banner_timeout=20,
            auth_timeout=20,
        )
        _, stdout, _ = client.exec_command("id -un", timeout=30)
        assert stdout.read().decode().strip() == "root"
    except paramiko.AuthenticationException as exc:
        pytest.fail(f"the injected key was refused: {exc}")
    finally:
        client.close()


@pytest.mark.live
def test_password_login_is_refused(params) -> None:
    """Password login is refused"""
    ssh = params["ssh"]
    sock = socket.create_connection((ssh["host"], int(ssh["port"])), timeout=20)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=20)
        try:
            transport.auth_none("root")
            pytest.fail("root logged in without any credential")
        except paramiko.BadAuthenticationType as exc:
            allowed = set(exc.allowed_types)
        offered = allowed & {"password", "keyboard-interactive"}
        assert not offered, (
            f"sshd offers {', '.join(sorted(offered))} authentication (allowed: {sorted(allowed)})"
        )
        assert "publickey" in allowed, f"sshd does not offer publickey authentication: {sorted(allowed)}"
    finally:
        transport.close()


def _expected_key(params) -> tuple[str, str]:
    encoded = params.cmdline_args.get("authorized_key", "")
    assert encoded, "the command line the harness sent has no authorized_key="
    identity = key_identity(base64.b64decode(encoded).decode())
    assert identity, "authorized_key= on the command line is not an OpenSSH public key"
    return identity


@pytest.mark.live
def test_root_has_exactly_the_injected_key(host, params) -> None:
    """root's authorized_keys holds exactly the injected key"""
    keys_file = host.file("/root/.ssh/authorized_keys")
    assert keys_file.exists, "/root/.ssh/authorized_keys is missing"
    assert keys_file.mode & 0o077 == 0, (
        f"/root/.ssh/authorized_keys has mode {keys_file.mode:o}; expected 600"
    )
    found = [key_identity(line) for line in keys_file.content_string.splitlines()]
    found = [k for k in found if k]
    expected = _expected_key(params)
    assert found == [expected], (
        f"root has {len(found)} key(s) ({', '.join(t + ' ' + b[-12:] for t, b in found)}); "
        f"expected only the injected {expected[0]} ...{expected[1][-12:]}"
    )


@pytest.mark.live
def test_host_keys_were_generated_on_this_boot(host) -> None:
    """SSH host keys were generated on this boot"""
    boot = boot_epoch(host)
    listing = run_ok(host, "stat -c '%Y %n' /etc/ssh/ssh_host_*_key 2>/dev/null || true")
    keys = [line.split(" ", 1) for line in listing.splitlines() if line.strip()]
    assert keys, "no SSH host keys in /etc/ssh"
    # 2 s slack: the clock may step while the guest boots
    old = [name for mtime, name in keys if int(mtime) < boot - 2]
    assert not old, f"host keys older than this boot (baked into the image?): {', '.join(old)}"


def _configured_sshd(host, params) -> dict[str, list[str]]:
    """sshd's effective settings: ``sshd -T`` on a VM; the config files (first value wins) in an image."""
    settings: dict[str, list[str]] = {}
    if params["kind"] == "vm":
        for line in run_ok(host, "sshd -T").splitlines():
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key.lower(), []).append(value.strip())
        return settings
    text = run_ok(host, "cat /etc/ssh/sshd_config.d/*.conf /etc/ssh/sshd_config 2>/dev/null || true")
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or words[0].lower() == "match":
            if words and words[0].lower() == "match":
                break
            continue
        key = words[0].lower()
        if key == "port" or key not in settings:
            settings.setdefault(key, []).append(words[1])
    return settings


def test_sshd_is_configured_for_3922_and_keys_only(host, params) -> None:
    """sshd is configured for port 3922 and keys only"""
    settings = _configured_sshd(host, params)
    assert settings.get("port") == [str(SSH_PORT)], f"sshd ports: {settings.get('port')}; expected only 3922"
    assert settings.get("passwordauthentication") == ["no"], "sshd allows password authentication"
    kbd = settings.get("kbdinteractiveauthentication") or settings.get("challengeresponseauthentication")
    assert kbd == ["no"], f"sshd keyboard-interactive authentication: {kbd}; expected no"
