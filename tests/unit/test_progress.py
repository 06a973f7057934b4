"""Progress on every long step (issue 26, item 8): the meter's rules with and without a terminal, the bytes
a converter reads counted without its help, diskimage-builder's bootstrap read from its output, the
exports and the matrix. Clocks are fake where the rules are about time: no test here waits for them."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from systemvm import naming, progress
from systemvm.build.dibprogress import DibProgress
from systemvm.check import matrix
from systemvm.export.release import load_manifests, plan_release, publish_release
from tests.unit.conftest import MIB, make_raw, pattern
from tests.unit.manifests import ORIGINS_NEW, PACKAGES_NEW, make_manifest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_line_per_tenth_or_per_15_s_and_none_in_the_first_10_s():
    clock, lines = Clock(), []
    meter = progress.Meter("amd64 qcow2", 100 * MIB, tty=False, write=lines.append, clock=clock)
    for second in range(200):  # 200 s, the first half at a crawl, then 1 MiB a second
        clock.now = 1000.0 + second
        meter.update(second * MIB // 4 if second < 100 else 25 * MIB + (second - 100) * MIB * 3 // 4)
    assert lines and all(line.endswith("\n") and "\r" not in line for line in lines)
    first = lines[0]
    assert first.startswith("    amd64 qcow2: 2.5 MiB of 100.0 MiB (2%), 10 s")
    assert len(lines) <= 200 // 15 + 10 + 1  # a tenth or 15 s, whichever comes first
    seconds = [int(line.rsplit(", ", 1)[1].removesuffix(" s\n")) for line in lines]
    assert all(b - a <= 15 for a, b in zip(seconds, seconds[1:], strict=False))


def test_on_a_terminal_one_line_rewritten_in_place():
    clock, out = Clock(), []
    meter = progress.Meter("copy t.ova", None, tty=True, write=out.append, clock=clock)
    for tick in range(100):
        clock.now = 1000.0 + 10 + tick * 0.1
        meter.advance(MIB)
    meter.close()
    assert all(text.startswith("\r") for text in out)
    assert 15 <= len(out) <= 22  # 10 s of updates, at most two a second, and the clearing at the end
    assert "MiB," in out[-2] and " of " not in out[-2]  # no total known: only what is done
    assert out[-1] == "\r\033[K"


def test_reading_counts_what_a_child_reads_with_or_without_pread(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.02)
    data = make_raw(tmp_path / "d.raw", 48 * MIB, [(0, pattern(24 * MIB))])
    with progress.reading("cat", data.stat().st_size) as meter:
        child = subprocess.Popen(["sh", "-c", f"cat {data} > /dev/null; exec sleep 0.5"])
        time.sleep(0.3)  # cat is done, its shell still runs: polled while it lives
        assert meter.done >= 48 * MIB  # holes read as zeros count too
        child.wait()
    # a process this thread started earlier, still running (as a build's package cache daemon is): what it
    # read before the block is not the block's
    earlier = subprocess.Popen(["sh", "-c", f"cat {data} > /dev/null; exec sleep 5"])
    try:
        time.sleep(0.3)
        with progress.reading("pread in this thread", 24 * MIB) as meter:
            fd = os.open(data, os.O_RDONLY)
            try:
                for offset in range(0, 24 * MIB, MIB):
                    os.pread(fd, MIB, offset)
            finally:
                os.close(fd)
    finally:
        earlier.kill()
        earlier.wait()
    assert 24 * MIB <= meter.done < 25 * MIB


def bootstrap_lines(essential: int = 69, rest: int = 393) -> list[tuple[float, str]]:
    """A cold bootstrap as diskimage-builder prints it (the lines of a real build log, its times)."""
    stamp = "2026-12-04 22:43:58.081 | "
    at, lines = 0.0, []

    def line(text: str, step: float = 0.0) -> None:
        nonlocal at
        at += step
        lines.append((at, stamp + text))

    line("dib-run-parts Running /tmp/systemvm-build-amd64-x/dib_build.y/hooks/root.d/08-debootstrap")
    line("mmdebstrap is installed; use it")
    line("I: running apt-get update...")
    line("Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]")
    line("I: downloading packages with apt...", 2)
    line(f"0 upgraded, {essential} newly installed, 0 to remove and 0 not upgraded.")
    for n in range(essential):
        line(f"Get:{n + 1} http://deb.debian.org/debian bookworm/main amd64 p{n} amd64 1.0 [37.6 kB]", 0.03)
    line("I: installing essential packages...", 2)
    for n in range(essential):
        line(f"Unpacking p{n}:amd64 (1.0) ...", 0.05)
    for n in range(essential):
        line(f"Setting up p{n}:amd64 (1.0) ...", 0.05)
    line("I: installing remaining packages inside the chroot...")
    line(f"0 upgraded, {rest} newly installed, 0 to remove and 0 not upgraded.", 1)
    for n in range(rest):
        line(f"Get:{n + 1} http://deb.debian.org/debian bookworm/main amd64 q{n} amd64 1.0 [1 kB]", 0.01)
    for n in range(rest):
        line(f"Unpacking q{n}:amd64 (1.0) ...", 0.1)
    for n in range(rest):
        line(f"Setting up q{n}:amd64 (1.0) ...", 0.08)
    line("I: success in 100.7517 seconds", 1)
    line("Caching debootstrap result in TARBALL")
    line("dib-run-parts Running /tmp/systemvm-build-amd64-x/dib_build.y/hooks/root.d/09-apt-keyring", 63)
    return lines


def test_the_cold_bootstrap_shows_packages_unpacked_of_n_then_the_caching(tmp_path):
    """The report's three minutes of silence between root.d and extra-data.d, replayed."""
    tarball = tmp_path / "debootstrap.tar.gz"
    clock, said = Clock(), []

    def meter(name: str, total: float | None, unit: str) -> progress.Meter:
        return progress.Meter(
            name, total, unit, tty=False, write=lambda t: said.append(t.rstrip()), clock=clock
        )

    dib = DibProgress("amd64: ", clock=clock, meter=meter, write=said.append)
    start = clock.now
    for at, text in bootstrap_lines():
        while clock.now < start + at:  # the ticker's seconds between the lines
            clock.now = min(start + at, clock.now + 1)
            if dib.tarball is not None:
                with open(tarball, "ab") as out:
                    out.write(bytes(4 * MIB))  # the tree being cached grows
            dib.tick()
        dib.feed(text.replace("TARBALL", str(tarball)) + "\n")
    dib.close()
    shown = [line for line in said if "bootstrap:" in line]
    assert said[0].endswith("amd64: diskimage-builder root.d")
    installing = [line for line in shown if " set up of " in line]
    assert installing, said
    assert any(" unpacked, " in line and " set up of 462 packages" in line for line in installing), installing
    assert any(" set up of 69 packages" in line for line in installing)  # the essential set first
    last = [line for line in installing if "of 462 packages" in line]
    shares = [int(line.split("bootstrap: ", 1)[1].split("%", 1)[0]) for line in last]
    assert shares == sorted(shares) and shares[-1] == 100, shares  # once all is known, it only grows
    caching = [line for line in shown if "caching the tree" in line]
    assert len(caching) >= 3 and caching[-1] != caching[0], shown  # it grows, a line per 15 s
    gaps = [b - a for a, b in zip(
        [float(line.rsplit(", ", 1)[1].removesuffix(" s")) for line in shown],
        [float(line.rsplit(", ", 1)[1].removesuffix(" s")) for line in shown][1:], strict=False,
    )]  # fmt: skip
    assert max(gaps) <= 16, gaps  # never more than 15 s without a word (the ticker beats each second)


def test_a_long_script_says_it_still_runs():
    clock, said = Clock(), []
    dib = DibProgress("i386: ", clock=clock, write=said.append)
    dib.feed("2026-12-04 | dib-run-parts Running /tmp/x/dib_build.y/hooks/post-install.d/85-make-initramfs\n")
    for _ in range(40):
        clock.now += 1
        dib.tick()
    beats = [line for line in said if "85-make-initramfs for" in line]
    assert [line.rsplit(" for ", 1)[1] for line in beats] == ["15 s", "30 s"]


def test_the_export_shows_bytes_of_n_per_step(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    out = naming.version_dir(tmp_path, "4.20.0")
    out.mkdir(parents=True)
    make_raw(naming.raw_disk(tmp_path, "4.20.0", "amd64"), 32 * MIB, [(0, pattern(8 * MIB))])
    manifest = make_manifest(PACKAGES_NEW, ORIGINS_NEW)
    naming.manifest(tmp_path, "4.20.0", "amd64").write_text(json.dumps(manifest))
    publish_release(load_manifests(out, "4.20.0", ["amd64"]), out, plan_release("qcow2,vhd"))
    err = capfd.readouterr().err
    for step in ("amd64 qcow2: qemu-img: ", "amd64 qcow2: bzip2: ", "amd64 vhd: VHD: ", "amd64 vhd: bzip2: "):
        lines = [line for line in err.splitlines() if line.strip().startswith(step.strip())]
        assert lines and " of " in lines[-1] and "(100%)" in lines[-1], (step, err[-3000:])


def test_the_matrix_says_cells_done_of_n_with_each_cells_time(tmp_path, capfd):
    cells = matrix.plan_matrix("kvm", "amd64,i386", "router")
    gate = threading.Event()

    def run_cell(cell: matrix.Cell, version: str, artifacts: Path) -> matrix.CellResult:
        if cell.flavour == "i386":
            gate.wait(5)
            time.sleep(0.3)  # ends after the amd64 cell
        else:
            gate.set()
        return matrix.CellResult(cell=cell, status="PASS", seconds=12.0 if cell.flavour == "amd64" else 31.0)

    matrix.run_matrix(cells, "4.20.0", tmp_path, 2, run_cell=run_cell)
    lines = [line.strip() for line in capfd.readouterr().err.splitlines() if "kvm-" in line]
    assert lines == ["[1/2] kvm-amd64-router: PASS (12 s)", "[2/2] kvm-i386-router: PASS (31 s)"]


@pytest.mark.parametrize("quiet", [True, False])
def test_the_seed_meter_follows_quiet(tmp_path, quiet, capfd, monkeypatch):
    from systemvm.seed.install import SeedRequest, seed
    from tests.unit.test_seed_support import make_qcow2

    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    image = make_qcow2(tmp_path)
    (tmp_path / "m").mkdir()
    seed(SeedRequest(mount=tmp_path / "m", hypervisor="kvm", file=str(image), template_id=3, use_db=False,
                     verify=False, progress=not quiet))  # fmt: skip
    copied = [line for line in capfd.readouterr().err.splitlines() if "copy disk.qcow2: " in line]
    assert bool(copied) is not quiet
    if copied:
        assert (
            copied[-1].strip().startswith(f"copy disk.qcow2: {progress.human_bytes(image.stat().st_size)} of")
        )
