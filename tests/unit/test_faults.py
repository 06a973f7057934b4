"""Bad input and damaged files at every entry point, as a new user meets them (issue 26): each case runs the
real command in a process of its own and asserts one line, the exit status of the project's rule (2 = the
user's input, 1 = a check found a defect or a tool failed) and that nothing was written or lost (the tree
before and after). The README's fault-injection table lists these cases."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemvm import diskdigest, naming
from systemvm.defaults import DEFAULT_VERSION
from systemvm.errors import EXIT_FAILED, EXIT_INPUT, DefectFound, ToolFailed, UserError, tool_failed
from tests.unit.conftest import MIB, make_raw, pattern
from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, make_manifest
from tests.unit.test_seed_support import ArtifactServer, make_ova, snapshot

REPO = Path(__file__).resolve().parents[2]
VERSION = "4.20.0"


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run("-m", "invoke", *args, env=env)


def one_line(done: subprocess.CompletedProcess, status: int) -> str:
    """The one line that says what went wrong (stderr's last; the lines before it may only be progress
    lines, ``==> phase`` and indented), the command having exited with ``status``; no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, f"exit {done.returncode}, not {status}: {done.stderr[-1500:]}"
    assert lines and "Traceback" not in done.stderr, done.stderr[-1500:]
    progress = [line for line in lines[:-1] if not line.startswith(("==> ", "    "))]
    assert not progress, f"more than one line says what went wrong: {done.stderr[-1500:]}"
    return lines[-1]


def built(root: Path, flavour: str = "amd64") -> Path:
    """What a build leaves: a raw disk and a manifest recording its size and content digest."""
    naming.version_dir(root, VERSION).mkdir(parents=True, exist_ok=True)
    raw = make_raw(naming.raw_disk(root, VERSION, flavour), 9 * MIB, [(0, pattern(MIB, 1)), (5 * MIB, b"x")])
    manifest = make_manifest(PACKAGES_NEW, ORIGINS_NEW, version=VERSION, flavour=flavour)
    manifest["raw_disk"] = {
        "size": raw.stat().st_size,
        "digest": diskdigest.content_digest(raw),
        "method": "x",
    }
    naming.manifest(root, VERSION, flavour).write_text(json.dumps(manifest))
    return raw


# ------------------------------------------------------------------------------------ 1: damaged raw disk


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_export_refuses_a_raw_disk_that_is_not_the_builds(tmp_path, damage):
    raw = built(tmp_path)
    if damage == "truncated":  # truncate -s 4M, as the report did with 64M of a 5 GiB disk
        os.truncate(raw, 4 * MIB)
    else:  # the same size, other bytes
        with open(raw, "r+b") as handle:
            handle.seek(5 * MIB)
            handle.write(b"y")
    before = snapshot(tmp_path)
    line = one_line(
        invoke("export", "--version", VERSION, "--flavour", "amd64", "--formats", "qcow2,vhd",
               "--artifacts", str(tmp_path)),
        EXIT_INPUT,
    )  # fmt: skip
    expected = (
        "is 4,194,304 bytes, but its build recorded 9,437,184" if damage == "truncated" else "other data"
    )
    assert expected in line and "rebuild it with 'invoke build --flavour amd64 --version 4.20.0'" in line
    assert snapshot(tmp_path) == before  # no export, no checksum list, no metadata.ini, manifest as it was


def test_the_content_digest_ignores_how_the_disk_is_stored(tmp_path):
    """Sparse or written out, the same bytes give the same digest; one changed byte another."""
    sparse = make_raw(tmp_path / "a.raw", 3 * MIB, [(100, b"a"), (70_000, b"b"), (2 * MIB, pattern(5000))])
    dense = tmp_path / "b.raw"
    shutil.copyfile(sparse, dense)  # no holes
    with open(dense, "r+b") as handle:  # and written zeros where the sparse file has holes
        handle.seek(MIB)
        handle.write(bytes(MIB))
    assert dense.stat().st_blocks > sparse.stat().st_blocks
    assert diskdigest.content_digest(sparse) == diskdigest.content_digest(dense)
    with open(dense, "r+b") as handle:
        handle.seek(MIB + 7)
        handle.write(b"\1")
    assert diskdigest.content_digest(sparse) != diskdigest.content_digest(dense)
    os.truncate(sparse, 4 * MIB)  # only zeros added: the size is in the digest
    assert diskdigest.content_digest(sparse) != diskdigest.content_digest(
        tmp_path / "a.raw.none" if False else dense
    )


# -------------------------------------------------------------------------- 4: inputs before any write


@pytest.mark.parametrize("mirror", ["ftp://mirror.example.org/debian", "closed-port"])
def test_a_bad_mirror_leaves_the_last_build_log_as_it_was(tmp_path, mirror):
    logs = naming.version_dir(tmp_path, VERSION) / "logs"
    logs.mkdir(parents=True)
    (logs / "build-amd64.log").write_text("the last build's log\n")
    if mirror == "closed-port":
        mirror = f"http://127.0.0.1:{closed_port()}/debian"
    before = snapshot(tmp_path)
    line = one_line(
        invoke("build", "--flavour", "amd64", "--mirror", mirror, "--artifacts", str(tmp_path)), EXIT_INPUT
    )
    assert "mirror" in line and ("not an http(s) URL" in line or "missing bookworm index" in line)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- 5: no tracebacks


def test_a_size_that_is_not_a_number(tmp_path):
    line = one_line(invoke("build", "--size-gib", "abc", "--artifacts", str(tmp_path / "a")), EXIT_INPUT)
    assert line == "error: --size-gib abc is not a whole number of GiB from 2 to 64: pass e.g. --size-gib 5"
    assert not (tmp_path / "a").exists()


def test_ova_check_of_an_ova_cut_mid_member(tmp_path):
    ova = make_ova(tmp_path)
    cut = tmp_path / "cut.ova"
    cut.write_bytes(ova.read_bytes()[: ova.stat().st_size * 2 // 3])
    line = one_line(run("-m", "systemvm.cli", "ova", "check", str(cut)), EXIT_FAILED)
    assert line.startswith(f"{cut} is cut short or damaged (tar: ")
    line = one_line(run("-m", "systemvm.cli", "ova", "check", str(tmp_path / "none.ova")), EXIT_INPUT)
    assert "is not a file" in line


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that takes each connection and closes it without a word."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                connection, _ = server.accept()
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


@pytest.mark.parametrize("server", ["closed", "404", "silent"])
def test_an_unreachable_seed_url_says_why_in_whole_words(tmp_path, server):
    mount = tmp_path / "secondary"
    (mount / "template").mkdir(parents=True)
    before = snapshot(mount)
    seed = ["-m", "systemvm.seed.cli", "-m", str(mount), "-h", "kvm", "-t", "5", "--no-db", "--retries", "0"]
    with contextlib.ExitStack() as stack:
        if server == "closed":
            url, reason = f"http://127.0.0.1:{closed_port()}/t.qcow2.bz2", "Connection refused"
        elif server == "404":
            base = stack.enter_context(ArtifactServer(tmp_path / "empty"))
            url, reason = f"{base}/t.qcow2.bz2", "answered HTTP 404"
        else:
            port = stack.enter_context(silent_server())
            url, reason = (
                f"http://127.0.0.1:{port}/t.qcow2.bz2",
                "Remote end closed connection without response",
            )
        line = one_line(run(*seed, "-u", url), EXIT_INPUT)
    if server == "silent":  # the close may reach the client as a reset
        line = line.replace("Connection reset by peer", reason)
    assert reason in line and url in line
    assert line.endswith(f"{reason}; check the URL and the network") or "answered HTTP 404" in line
    assert snapshot(mount) == before


def test_hypervisors_ini_with_a_bad_line_names_it(tmp_path):
    config = tmp_path / "hypervisors.ini"
    config.write_text("[xenserver]\nurl = https://xen.example.org\nthis line is bad\n")
    line = one_line(
        invoke("matrix", "--hypervisors", "xenserver", "--flavours", "amd64", "--roles", "secstorage",
               env={"SYSTEMVM_CONFIG": str(config)}),
        EXIT_INPUT,
    )  # fmt: skip
    assert (
        line
        == f"error: {config}: line 3 is not 'key = value' or '[section]': 'this line is bad': fix that line"
    )


def test_a_truncated_ova_given_to_the_seed_is_named_as_given(tmp_path):
    ova = make_ova(tmp_path)
    cut = tmp_path / "my-template.ova"
    cut.write_bytes(ova.read_bytes()[: ova.stat().st_size * 2 // 3])
    mount = tmp_path / "secondary"
    mount.mkdir()
    before = snapshot(mount)
    line = one_line(
        run("-m", "systemvm.seed.cli", "-m", str(mount), "-h", "vmware", "-f", str(cut), "-t", "5", "--no-db",
            "--no-checksum", "--quiet"),
        EXIT_INPUT,
    )  # fmt: skip
    assert "my-template.ova is cut short" in line
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", line), f"names the staged copy: {line}"
    leftovers = {k: v for k, v in snapshot(mount).items() if k not in before}
    assert set(leftovers) <= {"template", "template/tmpl", "template/tmpl/1"}  # parents go with the run
    assert snapshot(mount) == before


def test_export_takes_a_version_never_a_path(tmp_path):
    line = one_line(invoke("export", "--version", "../x", "--artifacts", str(tmp_path)), EXIT_INPUT)
    assert line == f"error: version '../x' is not X.Y.Z: pass e.g. --version {DEFAULT_VERSION}"


def test_invoke_seed_names_its_own_options(tmp_path):
    artifact = tmp_path / "t.qcow2"
    artifact.write_bytes(b"QFI\xfb")
    line = one_line(
        invoke("seed", "--mount", str(tmp_path), "--hypervisor", "kvm", "--file", str(artifact), "--no-db"),
        EXIT_INPUT,
    )
    assert line == "error: without the database the template id is unknown: give --template-id ID"
    line = one_line(
        invoke("seed", "--mount", str(tmp_path), "--hypervisor", "kvmx", "--file", "x"), EXIT_INPUT
    )
    assert "use --hypervisor with one of kvm" in line and " -h " not in line


# ----------------------------------------------------------------------------- 6: one exit-status rule


def test_the_users_input_exits_2_everywhere(tmp_path):
    """What used to exit 1 (--cloudstack-scripts, diff, --previous, the checkers) exits 2 as the rest."""
    missing = str(tmp_path / "missing")
    for argv in (
        ["-m", "invoke", "diff", "--old", missing, "--new", str(tmp_path)],
        ["-m", "invoke", "export", "--version", VERSION, "--previous", missing, "--artifacts", str(tmp_path)],
        ["-m", "invoke", "build", "--cloudstack-scripts", missing, "--artifacts", str(tmp_path / "a")],
        ["-m", "systemvm.cli", "vhd", "check", missing],
    ):
        one_line(run(*argv), EXIT_INPUT)
    assert not (tmp_path / "a").exists()


def test_a_defect_or_a_failed_tool_exits_1():
    assert DefectFound("x").exit_code == ToolFailed("x").exit_code == EXIT_FAILED == 1
    assert tool_failed("qemu-img", 1, "qemu-img: error\n", "log").exit_code == 1
    assert UserError("x").exit_code == EXIT_INPUT == 2
