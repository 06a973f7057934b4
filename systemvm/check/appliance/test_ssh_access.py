"""3922 access.

sshd answers on port 3922 on the role's control interface only, with the injected key only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

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


def test_sshd_accepts_what_cloudstacks_java_client_sends(host, params) -> None:
    """sshd accepts ssh-rsa (SHA-1) RSA signatures and as many sessions as CloudStack opens"""
    settings = _configured_sshd(host, params)
    accepted = ",".join(settings.get("pubkeyacceptedalgorithms", []))
    if params["kind"] == "vm":  # sshd -T expands '+ssh-rsa' into the full list
        assert "ssh-rsa" in accepted.split(","), (
            f"sshd's PubkeyAcceptedAlgorithms lacks ssh-rsa: {accepted or 'OpenSSH defaults'}"
        )
    else:
        assert accepted.lstrip("+").split(",").count("ssh-rsa") == 1, (
            f"PubkeyAcceptedAlgorithms is {accepted or 'unset'}; expected +ssh-rsa"
        )
    # sshd -T prints MaxStartups as start:rate:full
    startups = (settings.get("maxstartups") or ["10:30:100"])[0].split(":")[0]
    assert startups == "1000", f"MaxStartups {settings.get('maxstartups')}; CloudStack's template sets 1000"
    assert settings.get("maxsessions") == ["1000"], (
        f"MaxSessions {settings.get('maxsessions')}; CloudStack's template sets 1000"
    )


def test_scp_binary_is_present(host) -> None:
    """The scp binary CloudStack's legacy SCP copy runs on the guest is there"""
    assert host.exists("scp"), "no scp on the guest: CloudStack's patch file copy (legacy SCP) would fail"


# What CloudStack's Java SSH client (trilead-ssh2) can verify: ECDSA P-256 and SHA-1 RSA host keys.
JAVA_CLIENT_HOST_KEYS = "ecdsa-sha2-nistp256,ssh-rsa"


def _openssh_options(ssh: dict[str, Any], key: Path) -> list[str]:
    return [
        "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=20",
    ]  # fmt: skip


@pytest.fixture()
def rsa_key(host, tmp_path: Path):
    """A fresh RSA key, added to root's authorized_keys for one check and removed after it."""
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no OpenSSH client on the test runner")
    key = tmp_path / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "cloudstack-like",
                    "-f", str(key)], check=True)  # fmt: skip
    public = key.with_suffix(".pub").read_text().strip()
    keys_file = "/root/.ssh/authorized_keys"
    saved = run_ok(host, f"base64 -w0 {keys_file}").strip()
    run_ok(host, f"echo {shlex.quote(public)} >> {keys_file}")
    try:
        yield key
    finally:
        run_ok(host, f"echo {saved} | base64 -d > {keys_file}.restore && chmod 600 {keys_file}.restore"
                     f" && mv {keys_file}.restore {keys_file}")  # fmt: skip


@pytest.mark.live
def test_rsa_key_login_with_sha1_signatures(params, rsa_key: Path) -> None:
    """An RSA key signing with ssh-rsa (SHA-1) logs in, as CloudStack's Java client does"""
    ssh = params["ssh"]
    run = subprocess.run(
        ["ssh", "-p", str(ssh["port"]), *_openssh_options(ssh, rsa_key),
         "-o", "PubkeyAcceptedAlgorithms=ssh-rsa", "-o", f"HostKeyAlgorithms={JAVA_CLIENT_HOST_KEYS}",
         f"root@{ssh['host']}", "id -un"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "root", (
        f"ssh-rsa signed login refused (exit {run.returncode}): {run.stderr.strip()[-300:]}; "
        "CloudStack's management server could not run any command on this VM"
    )


@pytest.mark.live
def test_legacy_scp_copy_works(host, params, tmp_path: Path) -> None:
    """A file copied with legacy SCP (scp -O) arrives intact in /var/cache/cloud"""
    ssh = params["ssh"]
    payload = tmp_path / "scp-probe.bin"
    payload.write_bytes(os.urandom(64 * 1024))
    target = "/var/cache/cloud/scp-probe.bin"
    try:
        run = subprocess.run(
            ["scp", "-O", "-P", str(ssh["port"]), *_openssh_options(ssh, Path(ssh["key_file"])),
             str(payload), f"root@{ssh['host']}:{target}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, f"scp -O failed (exit {run.returncode}): {run.stderr.strip()[-300:]}"
        remote = run_ok(host, f"sha256sum {target}").split()[0]
        assert remote == hashlib.sha256(payload.read_bytes()).hexdigest(), "the copied file differs"
    finally:
        host.run(f"rm -f {target}")
