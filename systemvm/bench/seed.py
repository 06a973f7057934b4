"""Bench section ``seed``: a template seeded from a file and over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from systemvm.hosttools import require_tools
from systemvm.progress import human_bytes
from systemvm.seed.install import SeedRequest, seed


def bench_seed(size_mib: int = 64) -> list[tuple[str, str]]:
    """Seed a ``size_mib`` MiB qcow2.bz2 from a file and over HTTP on 127.0.0.1; rows of (what, number)."""
    import bz2
    import functools
    import hashlib
    import http.server
    import threading

    require_tools("qemu-img")
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        work = Path(tmp)
        raw = work / "disk.raw"
        with open(raw, "wb") as handle:  # half random, half zeros: a realistic mix for bzip2
            block = os.urandom(1 << 20)
            for index in range(size_mib):
                handle.write(block if index % 2 else bytes(1 << 20))
        qcow2 = work / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
        artifact = work / "pub" / "bench-kvm.qcow2.bz2"
        artifact.parent.mkdir()
        artifact.write_bytes(bz2.compress(qcow2.read_bytes(), 9))
        digest = hashlib.sha512(artifact.read_bytes()).hexdigest()
        (artifact.parent / "sha512sum.txt").write_text(f"{digest}  {artifact.name}\n")
        rows.append(
            ("seed bench artifact", f"{human_bytes(artifact.stat().st_size)} qcow2.bz2 of {size_mib} MiB raw")
        )

        def timed(label: str, file: str | None = None, url: str | None = None) -> None:
            mount = work / f"mnt-{label.split()[-1]}"
            mount.mkdir()
            start = time.monotonic()
            seed(
                SeedRequest(
                    mount=mount,
                    hypervisor="kvm",
                    file=file,
                    url=url,
                    template_id=1,
                    use_db=False,
                    progress=False,
                )
            )
            seconds = time.monotonic() - start
            rows.append(
                (
                    f"seed {label}",
                    f"{seconds:.2f} s ({artifact.stat().st_size / 2**20 / seconds:.1f} MiB/s in)",
                )
            )

        timed("from file", file=str(artifact))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(artifact.parent))
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            timed("over http", url=f"http://127.0.0.1:{server.server_port}/{artifact.name}")
        finally:
            server.shutdown()
            server.server_close()
    return rows
