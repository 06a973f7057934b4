"""What each phase needs on the host: the table is true (dpkg says which package ships each tool), complete
against host-packages.txt, and a host lacking a package is told so before anything starts."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from systemvm import hosttools
from systemvm.errors import UserError, first_error_line, tool_failed
from systemvm.tasks.doctor import report

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian host")


def test_first_error_line_names_the_cause_not_the_cleanup() -> None:
    # A real diskimage-builder log of an i386 build on a host without arch-test: its last line is clean-up.
    log = (DATA / "dib-arch-test.log").read_text()
    assert log.splitlines()[-1].endswith("State already cleaned - no way to do anything here")
    assert first_error_line(log) == "E: install arch-test for foreign architecture support"


def test_first_error_line_of_a_traceback_is_its_exception() -> None:
    log = (
        "2026-12-01 10:00:00.000 | INFO starting\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    raise ValueError('bad block device config')\n"
        "ValueError: bad block device config\n"
        "2026-12-01 10:00:01.000 | ERROR later line\n"
    )
    assert first_error_line(log) == "ValueError: bad block device config"


def test_first_error_line_skips_shell_traces_and_knows_qemu_img() -> None:
    assert first_error_line("+ echo ERROR\nqemu-img: Could not open 'x': No such file\n") == (
        "qemu-img: Could not open 'x': No such file"
    )
    assert first_error_line("all went well\n") is None


def test_tool_failed_quotes_the_cause_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "build-i386.log"
    error = tool_failed("diskimage-builder", 1, (DATA / "dib-arch-test.log").read_text(), log)
    message = str(error)
    assert "\n" not in message
    assert "E: install arch-test for foreign architecture support" in message
    assert str(log) in message
    assert "exit 1" in message


def test_a_foreign_flavour_needs_arch_test() -> None:
    assert [n.tool for n in hosttools.foreign_needs(["i386"], native="amd64")] == ["arch-test"]
    assert hosttools.foreign_needs(["amd64"], native="amd64") == []
    build_tools = {n.tool for n in hosttools.needs_for(["build"], ["amd64", "i386"])}
    assert "arch-test" in build_tools and "mmdebstrap" in build_tools


def test_arm64_adds_qemu_user_the_uefi_disk_tools_and_the_aarch64_emulator() -> None:
    build = {n.tool: n.package for n in hosttools.needs_for(["build"], ["arm64"])}
    assert build["qemu-aarch64-static"] == "qemu-user-static"
    assert {build["sgdisk"], build["mkfs.fat"], build["mcopy"]} == {"gdisk", "dosfstools", "mtools"}
    assert build["arch-test"] == "arch-test"
    boot = {n.tool: n.package for n in hosttools.needs_for(["boot"], ["arm64"])}
    assert boot["qemu-system-aarch64"] == "qemu-system-arm"
    assert boot[hosttools.AAVMF_CODE] == boot[hosttools.AAVMF_VARS] == "qemu-efi-aarch64"
    # the x86 flavours need none of it
    x86 = {n.tool for n in hosttools.needs_for(list(hosttools.PHASES), ["amd64", "i386"])}
    assert not x86 & {"qemu-aarch64-static", "sgdisk", "qemu-system-aarch64", hosttools.AAVMF_CODE}


def test_a_missing_firmware_file_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosttools, "present", lambda tool, path=None: tool != hosttools.AAVMF_CODE)
    with pytest.raises(
        UserError, match=r"'/usr/share/AAVMF/AAVMF_CODE.fd': .*apt-get install qemu-efi-aarch64"
    ):
        hosttools.require_tools(hosttools.AAVMF_VARS, hosttools.AAVMF_CODE)


def _binfmt_dir(tmp_path: Path, flags: str | None, enabled: bool = True, mounted: bool = True) -> Path:
    """A stand-in for /proc/sys/fs/binfmt_misc with a qemu-aarch64 entry as the kernel prints it."""
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    if mounted:
        (directory / "register").write_text("")
    interpreter = tmp_path / "aarch64-binfmt-P"
    interpreter.write_text("")
    if flags is not None:
        (directory / "qemu-aarch64").write_text(
            f"{'enabled' if enabled else 'disabled'}\ninterpreter {interpreter}\nflags: {flags}\noffset 0\n"
            "magic 7f454c460201010000000000000000000200b700\n"
        )
    return directory


@pytest.mark.parametrize(
    ("flags", "enabled", "mounted", "problem"),
    [
        ("POF", True, True, None),
        ("OCF", True, True, None),
        ("PO", True, True, "registered without the F flag (flags: PO)"),
        ("POF", False, True, "is disabled"),
        (None, True, True, "no qemu-aarch64 interpreter is registered"),
        (None, True, False, "binfmt_misc is not mounted"),
    ],
)
def test_binfmt_needs_qemu_aarch64_enabled_with_the_f_flag(
    tmp_path: Path, flags: str | None, enabled: bool, mounted: bool, problem: str | None
) -> None:
    """The F flag makes the kernel open qemu when it is registered: without it, arm64 programs run on the
    host but not in diskimage-builder's chroot, which has no qemu of its own."""
    directory = _binfmt_dir(tmp_path, flags, enabled, mounted)
    found = hosttools.binfmt_problem("arm64", directory)
    if problem is None:
        assert found is None
        hosttools.check_binfmt("arm64", directory)
    else:
        assert found is not None and problem in found
        with pytest.raises(UserError, match="invoke doctor --flavour arm64 --register-binfmt") as caught:
            hosttools.check_binfmt("arm64", directory)
        assert "\n" not in str(caught.value)


def test_registering_refuses_a_registration_line_without_the_f_flag(tmp_path: Path) -> None:
    conf = tmp_path / "binfmt.d"
    conf.mkdir()
    (conf / "qemu-aarch64.conf").write_text(":qemu-aarch64:M::\\x7fELF:\\xff:/usr/bin/qemu-aarch64:OP\n")
    directory = _binfmt_dir(tmp_path, None)
    if os.geteuid() != 0:
        pytest.skip("registering is root's")
    with pytest.raises(UserError, match="does not register with the F flag"):
        hosttools.register_binfmt("arm64", directory, conf)
    (conf / "qemu-aarch64.conf").unlink()
    with pytest.raises(UserError, match="apt-get install qemu-user-static"):
        hosttools.register_binfmt("arm64", directory, conf)


def test_registering_what_is_registered_changes_nothing(tmp_path: Path) -> None:
    directory = _binfmt_dir(tmp_path, "POF")
    before = sorted(p.name for p in directory.iterdir())
    assert hosttools.register_binfmt("arm64", directory, tmp_path / "absent") == (
        "arm64: qemu-aarch64 already registered with the F flag"
    )
    assert sorted(p.name for p in directory.iterdir()) == before


def test_unknown_phase_is_one_line() -> None:
    with pytest.raises(UserError, match="unknown phase 'bulid'"):
        hosttools.needs_for(["bulid"])


def test_check_phase_lists_every_package_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a host with nothing on PATH
    with pytest.raises(UserError) as caught:
        hosttools.check_phase("build", ["amd64"])
    message = str(caught.value)
    assert "apt-get install" in message
    for package in ("mmdebstrap", "apt-cacher-ng", "qemu-utils", "e2fsprogs", "pip install -e ."):
        assert package in message


@functools.cache
def _installed_depends() -> dict[str, list[list[str]]]:
    """Each installed package's Pre-Depends and Depends, as lists of alternatives."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Pre-Depends}, ${Depends}\n"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    table: dict[str, list[list[str]]] = {}
    for line in done.stdout.splitlines():
        name, status, depends = line.split("\t")
        if status.startswith("ii"):
            groups = [g for g in depends.split(",") if g.strip()]
            table[name] = [[a.split()[0].split(":")[0] for a in g.split("|") if a.strip()] for g in groups]
    return table


def _closure(packages: list[str], table: dict[str, list[list[str]]]) -> set[str]:
    """The packages and everything installed they depend on (as apt would bring on a fresh host)."""
    seen: set[str] = set()
    todo = [p for p in packages if p in table]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for alternatives in table[name]:
            todo.extend(next(([a] for a in alternatives if a in table), []))
    return seen


@functools.cache
def _files_of(package: str) -> frozenset[str]:
    """The commands in dpkg's file list of an installed package (read directly: dpkg-query is slow)."""
    info = Path("/var/lib/dpkg/info")
    lists = [info / f"{package}.list", *info.glob(f"{package}:*.list")]
    lines = [line for path in lists if path.is_file() for line in path.read_text().splitlines()]
    return frozenset(os.path.realpath(p) for p in lines if Path(p).parent.name in ("bin", "sbin"))


def _listed_files(package: str) -> set[str]:
    """Every path in dpkg's file list of an installed package."""
    info = Path("/var/lib/dpkg/info")
    return {line for path in [info / f"{package}.list", *info.glob(f"{package}:*.list")] if path.is_file()
            for line in path.read_text().splitlines()}  # fmt: skip


def _shipped(packages: list[str]) -> set[str]:
    """Real paths of every file the packages and their dependencies ship."""
    table = _installed_depends()
    return set().union(*(_files_of(p) for p in _closure(packages, table)))


def _fake_host(tmp_path: Path, packages: list[str]) -> str:
    """A PATH holding exactly the commands these packages (with their dependencies) bring, by dpkg's lists.

    Alternatives and the merged /usr are followed: a command counts when its real file is one the closure
    ships.
    """
    shipped = _shipped(packages)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for entry in sorted(Path(directory).iterdir()):
            link = bin_dir / entry.name
            if os.path.realpath(entry) in shipped and not link.exists():
                link.symlink_to(entry)
    pip_tool = shutil.which("disk-image-create")  # the pip-installed side: setup.sh's pip step brings it
    if pip_tool:
        (bin_dir / "disk-image-create").symlink_to(pip_tool)
    return str(bin_dir)


@needs_dpkg
def test_the_table_is_true_and_host_packages_covers_it() -> None:
    listed = set(hosttools.read_host_packages(hosttools.host_packages_file()))
    needs = [
        *hosttools.NEEDS,
        *hosttools.foreign_needs(["i386"], native="amd64"),
        *hosttools.flavour_needs(hosttools.FLAVOUR_NEEDS),
    ]
    for need in needs:
        if need.package == hosttools.PIP_PACKAGE:
            continue
        assert need.package in listed, f"{need.tool}: its package {need.package} is not in host-packages.txt"
        if os.path.isabs(need.tool):  # a data file (firmware): in its package's own file list
            assert Path(need.tool).is_file(), f"{need.tool} is not installed here: ./setup.sh installs it"
            assert need.tool in _listed_files(need.package), f"{need.package} does not bring {need.tool}"
            continue
        found = shutil.which(need.tool)
        assert found, f"{need.tool} is not installed here: ./setup.sh installs host-packages.txt"
        real = os.path.realpath(found)
        brought = _closure([need.package], _installed_depends())
        assert any(real in _files_of(p) for p in brought), f"{need.package} does not bring {need.tool}"


@needs_dpkg
def test_doctor_passes_with_the_list_and_fails_when_one_package_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = hosttools.read_host_packages(hosttools.host_packages_file())
    full = _fake_host(tmp_path / "full", listed)
    assert report(list(hosttools.PHASES), ["amd64", "i386"], path=full) == 0, capsys.readouterr().out
    capsys.readouterr()
    dropped = _fake_host(tmp_path / "dropped", [p for p in listed if p != "arch-test"])
    assert report(list(hosttools.PHASES), ["amd64", "i386"], path=dropped) == 1
    out = capsys.readouterr().out
    assert "build   MISSING arch-test (arch-test)" in out
    assert "to fix: apt-get install arch-test" in out


@needs_dpkg
def test_doctor_for_arm64_names_qemu_user_static_when_it_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = hosttools.read_host_packages(hosttools.host_packages_file())
    dropped = _fake_host(tmp_path / "dropped", [p for p in listed if p != "qemu-user-static"])
    assert report(["build", "boot"], ["arm64"], path=dropped) == 1
    out = capsys.readouterr().out
    assert "build   MISSING qemu-aarch64-static (qemu-user-static)" in out
    assert "boot    ok" in out
    assert "to fix: apt-get install qemu-user-static" in out


def test_build_on_a_host_missing_tools_fails_at_once_and_writes_nothing(tmp_path: Path) -> None:
    """The build checks the host before it starts anything: one line with the packages, exit 2, no files."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--flavour", "all", "--artifacts", str(artifacts)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this host lacks what 'build' needs"), done.stderr
    assert "arch-test" in lines[0] and "mmdebstrap" in lines[0]
    assert not artifacts.exists()
