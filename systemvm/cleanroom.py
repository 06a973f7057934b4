"""The clean-room check of host-packages.txt: does a fresh Debian 12 host with exactly that list work?

CI runs on a machine where packages were once installed by hand, so a package missing from the list is
invisible there. This check makes what a new user has: a Debian 12 root (mmdebstrap, variant ``apt``:
essential packages and apt, nothing else) with exactly host-packages.txt installed, runs the project's
own ``./setup.sh`` inside it, then ``invoke doctor`` and a real bootstrap trial for each flavour's
architecture (a minimal mmdebstrap, which is where a missing ``arch-test`` shows).

Two stages are cached as tarballs, each keyed by everything that makes it: the Debian root by the package
list, the apt sources and the SHA256 of each suite's package index; the root after ``setup.sh`` by that and
setup.sh and pyproject.toml. A changed list (or a mirror update) makes a fresh root; an unchanged one is
only unpacked. The root inherits how this host reaches the network (resolver, CA bundle), nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from systemvm import defaults, hosttools
from systemvm.build import aptcache, mirror
from systemvm.errors import UserError, tool_failed
from systemvm.progress import phase, say

REPO = Path(__file__).resolve().parent.parent
RELEASE = "bookworm"
ROOTS_KEPT = 2  # of each stage: the current root and the one before
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
HOST_CA_NAME = "host-ca-bundle.crt"
# What a clean-room run needs of the project's tree (the rest of the repository stays out of the root).
SOURCE_PARTS = ("setup.sh", "host-packages.txt", "pyproject.toml", "tasks.py", "systemvm", "elements")


@dataclass
class CleanRoomResult:
    """What the check found; ``ok`` only when doctor passed and every bootstrap trial went through."""

    packages: int
    root_reused: bool
    doctor_output: str
    doctor_rc: int
    trials: dict[str, str] = field(default_factory=dict)  # arch -> "ok" or the error line
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.doctor_rc == 0 and all(v == "ok" for v in self.trials.values())


def base_key(packages: list[str], sources: str, indexes: dict[str, str]) -> str:
    """What the Debian root depends on: the package list and the mirror's state."""
    parts = {"packages": sorted(set(packages)), "sources": sources, "indexes": indexes, "recommends": False}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def setup_key(base: str) -> str:
    """What the root after setup.sh depends on: the Debian root, setup.sh and the Python requirements."""
    parts = {
        "base": base,
        "installs": "the list under test",  # setup.sh installs the list given, not the repository's
        "setup.sh": hashlib.sha256((REPO / "setup.sh").read_bytes()).hexdigest(),
        "pyproject.toml": hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _run(args: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n+ {' '.join(args)}\n".encode())
        out.flush()
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise tool_failed(what, done.returncode, log.read_text(errors="replace").split("\n+ ")[-1], log)


def _sources_lines(sources: str) -> list[str]:
    """diskimage-builder's ``name:deb URL suite main`` lines -> plain apt lines."""
    return [line.split(":", 1)[1] for line in sources.splitlines() if ":" in line]


@contextlib.contextmanager
def _mounted(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the root for the commands run there; always unmounted again. The
    kernel's binfmt_misc too when the host has it mounted: the arm64 flavour's qemu-user registration is
    the kernel's (setup.sh makes it), and a fresh /proc does not show it."""
    mounts: list[Path] = []
    binfmt = [("binfmt_misc", root / "proc/sys/fs/binfmt_misc", ["-t", "binfmt_misc"])]
    try:
        for source, target, args in (
            ("proc", root / "proc", ["-t", "proc"]),
            *(binfmt if (hosttools.BINFMT_MISC / "register").exists() else []),
            ("/sys", root / "sys", ["--rbind"]),
            ("/dev", root / "dev", ["--rbind"]),
        ):
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *args, source, str(target)], check=True, capture_output=True)
            mounts.append(target)
        yield
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False, capture_output=True)


def _chroot(root: Path, command: str, log: Path, what: str, proxy: str) -> None:
    """A login-like clean environment: nothing of this host's Python, pip or PATH set-up leaks in."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "http_proxy": proxy,
        "SYSTEMVM_CACHE": "/root/.cache/systemvm",
        "PIP_CERT": f"/etc/ssl/{HOST_CA_NAME}",
    }
    _run(["chroot", str(root), "/bin/sh", "-c", command], log, what, env=env)


def _copy_source(root: Path) -> None:
    """The project's tree as a user's clone has it, at /src in the root."""
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for part in SOURCE_PARTS:
        path = REPO / part
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(path, src / part, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(path, src / part)


def _pack(root: Path, tarball: Path, log: Path) -> None:
    partial = tarball.with_suffix(".partial")
    _run(["tar", "-C", str(root), "--one-file-system", "-cf", str(partial), "."], log, "tar")
    os.replace(partial, tarball)  # only a finished root is ever reused


def _make_base(tarball: Path, packages: list[str], sources: str, proxy: str, log: Path) -> None:
    """mmdebstrap a Debian 12 root (essential packages, apt) with exactly the list installed."""
    work = Path(tempfile.mkdtemp(prefix="base-", dir=tarball.parent))
    try:
        # No Recommends, as setup.sh installs the list: mmdebstrap's apt would otherwise bring arch-test
        # along with debootstrap and hide that the list lacks it.
        args = ["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(packages)}",
                "--aptopt=APT::Install-Recommends \"false\"",
                f"--aptopt=Acquire::http::Proxy \"{proxy}\"", RELEASE, str(work)]  # fmt: skip
        _run([*args, *_sources_lines(sources)], log, "mmdebstrap (clean root)")
        _pack(work, tarball, log)
    finally:
        _remove_root(work)


def _make_setup(tarball: Path, base: Path, packages: list[str], proxy: str, log: Path) -> None:
    """The Debian root after the project's own ./setup.sh, as a new user runs it."""
    work = Path(tempfile.mkdtemp(prefix="setup-", dir=tarball.parent))
    try:
        _run(["tar", "-C", str(work), "-xf", str(base)], log, "tar")
        _prepare(work, proxy, packages)
        with _mounted(work):
            _chroot(work, "cd /src && ./setup.sh", log, "setup.sh in the clean root", proxy)
        _pack(work, tarball, log)
    finally:
        _remove_root(work)


def _prepare(root: Path, proxy: str, packages: list[str]) -> None:
    """The tree under test at /src, and how this host reaches the network (its resolver and the CA bundle
    its TLS connections need); no package or file of the host's software goes in."""
    _copy_source(root)
    # the list under test is the one setup.sh installs (it may be a trial list, not the repository's)
    (root / "src" / "host-packages.txt").write_text("\n".join(packages) + "\n")
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    shutil.copy2(HOST_CA_BUNDLE, root / "etc" / "ssl" / HOST_CA_NAME)
    (root / "etc/apt/apt.conf.d/99mmdebstrap").write_text(f'Acquire::http::Proxy "{proxy}";\n')


def _mounts_at_or_below(path: Path) -> list[str]:
    """Mount points at ``path`` or inside it, from the kernel's mount table."""
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [m for m in mounted if m == str(path) or m.startswith(f"{path}/")]


def _remove_root(root: Path) -> None:
    """Remove a root only once nothing is mounted below it: never delete through an rbind of /dev."""
    inside = _mounts_at_or_below(root)
    if inside:
        raise UserError(f"{inside[0]} is still mounted: run umount -R {inside[0]}, then remove {root}")
    shutil.rmtree(root, ignore_errors=True)


def _memory_root(root: Path, need_gib: int = 8) -> bool:
    """Unpack into tmpfs when the host has the memory: the root is thrown away after the run, and writing
    and deleting 2 GB on disk was a third of a warm run."""
    meminfo = Path("/proc/meminfo").read_text()
    available_kib = int(
        next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable"))
    )
    if available_kib < need_gib * 2**20:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g,mode=0755", "tmpfs", str(root)],
                          check=False, capture_output=True)  # fmt: skip
    return done.returncode == 0


@contextlib.contextmanager
def _exclusive(cache: Path) -> Iterator[None]:
    """One clean-room run at a time per cache (a second one waits): they share the roots and leftovers."""
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_leftovers(cache: Path) -> None:
    """Work trees of a run that was killed (SIGKILL, power loss): unmount what is left inside, remove them."""
    for leftover in [*cache.glob("run-*"), *cache.glob("base-*"), *cache.glob("setup-*")]:
        if leftover.is_dir():
            for target in sorted(_mounts_at_or_below(leftover), reverse=True):
                subprocess.run(["umount", "-R", "-l", target], check=False, capture_output=True)
            _remove_root(leftover)
        elif leftover.suffix == ".partial":
            leftover.unlink(missing_ok=True)


def _prune(cache: Path, prefix: str, keep: Path) -> None:
    roots = sorted(cache.glob(f"{prefix}*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [r for r in roots if r != keep][ROOTS_KEPT - 1 :]:
        old.unlink(missing_ok=True)


def _doctor_inside(
    root: Path, flavours: list[str], proxy: str, logs: Path, seconds: dict[str, float]
) -> tuple[int, str]:
    """``invoke doctor`` as a new user runs it after setup.sh: its exit code and what it printed."""
    t0 = time.monotonic()
    log = logs / "doctor.log"
    log.write_bytes(b"")
    flavour = "all" if len(flavours) > 1 else flavours[0]
    try:
        _chroot(root, f"cd /src && invoke doctor --flavour {flavour}", log, "doctor (clean room)", proxy)
        rc = 0
    except UserError:
        rc = 1
    seconds["doctor"] = round(time.monotonic() - t0, 1)
    return rc, log.read_text(errors="replace")


def _trial_inside(
    root: Path, arch: str, sources: str, proxy: str, logs: Path, seconds: dict[str, float]
) -> str:
    """A minimal real bootstrap of ``arch`` (output discarded): "ok", or the one-line error."""
    t0 = time.monotonic()
    log = logs / f"trial-{arch}.log"
    log.write_bytes(b"")
    suite = repr(_sources_lines(sources)[0])
    command = f"mmdebstrap --variant=essential --architectures={arch} {RELEASE} /dev/null {suite}"
    with phase(f"clean room: bootstrap trial for {arch}"):
        try:
            _chroot(root, command, log, f"mmdebstrap for {arch} (clean room)", proxy)
            outcome = "ok"
        except UserError as exc:
            outcome = str(exc)
    seconds[f"trial_{arch}"] = round(time.monotonic() - t0, 1)
    return outcome


def check_host_packages(
    flavours: list[str], *, packages_file: Path | None = None, mirror_url: str | None = None
) -> CleanRoomResult:
    """Make (or reuse) the clean root, then run doctor and one bootstrap trial per flavour inside it."""
    hosttools.require_tools("mmdebstrap", "chroot", "tar")
    packages = hosttools.read_host_packages(packages_file or hosttools.host_packages_file())
    debian = mirror.debian_mirror(mirror_url)
    native = hosttools.host_arch()
    cache = defaults.cache_root() / "clean-room"
    cache.mkdir(parents=True, exist_ok=True)
    logs = cache / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / "clean-room.log"
    log.write_bytes(b"")
    seconds: dict[str, float] = {}
    start = time.monotonic()
    with _exclusive(cache), aptcache.apt_proxy() as proxy:
        _remove_leftovers(cache)
        indexes: dict[str, str] = {}
        sources, _skipped = mirror.apt_sources(debian, RELEASE, native, proxy, indexes)
        base_id = base_key(packages, sources, indexes)
        base = cache / f"base-{base_id}.tar"
        tarball = cache / f"setup-{setup_key(base_id)}.tar"
        reused = tarball.exists()
        if not reused and not base.exists():
            with phase(f"clean room: Debian 12 root with the {len(packages)} packages of host-packages.txt"):
                _make_base(base, packages, sources, proxy, log)
        if not reused:
            with phase("clean room: ./setup.sh in it"):
                _make_setup(tarball, base, packages, proxy, log)
        seconds["root"] = round(time.monotonic() - start, 1)
        _prune(cache, "base-", base)
        _prune(cache, "setup-", tarball)
        root = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
        try:
            in_memory = _memory_root(root)
            with phase(f"clean room: unpack the root{' (tmpfs)' if in_memory else ''}"):
                _run(["tar", "-C", str(root), "-xf", str(tarball)], log, "tar")
            _prepare(root, proxy, packages)  # the tree under test, which may be newer than the cached root's
            with _mounted(root):
                doctor_rc, doctor_output = _doctor_inside(root, flavours, proxy, logs, seconds)
                trials = {arch: _trial_inside(root, arch, sources, proxy, logs, seconds) for arch in flavours}
        finally:
            subprocess.run(["umount", "-R", str(root)], check=False, capture_output=True)
            _remove_root(root)
    seconds["total"] = round(time.monotonic() - start, 1)
    result = CleanRoomResult(len(packages), reused, doctor_output, doctor_rc, trials, seconds)
    say(f"    clean room: {'PASS' if result.ok else 'FAIL'} ({seconds['total']:.0f} s, root "
        f"{'reused' if reused else 'made'}); logs in {logs}")  # fmt: skip
    return result
