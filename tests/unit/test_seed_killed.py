"""A seed killed with SIGKILL in the middle of its download leaves its staging directory on secondary
storage; the next seed removes it before it starts, and never another seed's that still runs, nor one of
another management server that may still be writing, nor anything that is not a seed's staging."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from systemvm import runs
from tests.unit.test_seed_support import make_qcow2, snapshot

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def stalling_server(first: bytes, length: int) -> Iterator[str]:
    """An HTTP server that announces ``length`` bytes, sends ``first`` and then nothing."""

    class Stall(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            found = self.path.endswith("/systemvm.qcow2")  # no sha512sum.txt or metadata.ini beside it
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(length if found else 0))
            self.end_headers()

        def do_GET(self) -> None:
            self.do_HEAD()
            if not self.path.endswith("/systemvm.qcow2"):
                return
            self.wfile.write(first)
            self.wfile.flush()
            time.sleep(120)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/systemvm.qcow2"
    finally:
        server.shutdown()
        server.server_close()


def seed_command(mount: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "systemvm.seed.cli", "-m", str(mount), "-h", "kvm", "--no-db",
            "--no-checksum", "--quiet", *args]  # fmt: skip


def test_the_next_seed_removes_what_a_killed_seed_left_and_only_that(tmp_path: Path) -> None:
    mount = tmp_path / "secondary"
    slots = mount / "template" / "tmpl" / "1"
    mount.mkdir()
    image = make_qcow2(tmp_path, 64 * 2**20)  # 4 MiB: its first half is more than one read of the seed
    data = image.read_bytes()
    with stalling_server(data[: len(data) // 2], len(data)) as url:
        seed = subprocess.Popen(seed_command(mount, "-t", "5", "-u", url), cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 60
        while not [p for p in slots.glob(".5.seed-*/image.part") if p.stat().st_size]:
            assert seed.poll() is None and time.monotonic() < deadline, "the seed never started writing"
            time.sleep(0.05)
        os.kill(seed.pid, signal.SIGKILL)  # mid-download, as a lost management server ends it
        seed.wait()
    (stale,) = slots.glob(".5.seed-*")
    assert (stale / "image.part").stat().st_size > 0 and runs.read_owner(stale) is not None

    # beside it: a live seed's staging (its owner runs), another server's fresh one, a file not ours
    keeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        live = slots / ".6.seed-livelive"
        live.mkdir()
        runs.write_owner(live, keeper.pid)
        remote = slots / ".7.seed-remote00"
        remote.mkdir()
        (remote / "owner.json").write_text('{"host": "another-ms", "pid": 1, "start": 1}\n')
        (slots / ".8.seed-notadir0").write_text("not a directory\n")
        (slots / "notes.seed-00000000").mkdir()
        others = {k: v for k, v in snapshot(slots).items() if not k.startswith(stale.name)}

        done = subprocess.run(
            seed_command(mount, "-t", "5", "-f", str(image)), cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "removed" in line]
        assert len(said) == 1 and str(stale) in said[0] and f"pid {seed.pid} on" in said[0], done.stderr
        assert not stale.exists()
        after = snapshot(slots)
        assert {k: v for k, v in after.items() if not k.startswith("5")} == others  # the rest untouched
        assert {p.name for p in (slots / "5").iterdir()} == {"template.properties", *[
            p.name for p in (slots / "5").iterdir() if p.suffix == ".qcow2"
        ]}  # fmt: skip
    finally:
        keeper.kill()
