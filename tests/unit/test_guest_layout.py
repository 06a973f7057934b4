"""The guest package as the image holds it: the element systemvm-guest's own copy step, then every program
of the elements imports its modules from that copy with the standard library only (python3 -I -S: no
site-packages, no repository on the path)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from systemvm import profile

REPO = Path(__file__).resolve().parents[2]
ELEMENTS = REPO / "elements"
COPY_STEP = ELEMENTS / "systemvm-guest/extra-data.d/50-copy-guest-package"
# Where the elements' programs and install steps import the guest package from.
IMPORT = re.compile(r"^\s*from systemvm\.guest import ([\w, ]+)", re.M)


@pytest.fixture(scope="module")
def image_lib(tmp_path_factory) -> Path:
    """Run the element's copy step as diskimage-builder does; the lib tree it leaves is /opt/cloud/lib."""
    hooks = tmp_path_factory.mktemp("hooks")
    env = {**os.environ, "TMP_HOOKS_PATH": str(hooks), "SYSTEMVM_SRC": str(REPO), "SYSTEMVM_VERSION": "9.9.9",
           **profile.profile_for("4.22.0").build_environment()}  # fmt: skip
    subprocess.run(["bash", str(COPY_STEP)], env=env, check=True, capture_output=True, text=True)
    return hooks / "systemvm-guest/lib"


def test_the_image_gets_the_guest_package_and_the_contract_only(image_lib):
    files = sorted(str(p.relative_to(image_lib)) for p in image_lib.rglob("*") if p.is_file())
    guest = sorted(f"systemvm/guest/{p.name}" for p in (REPO / "systemvm/guest").glob("*.py"))
    top = ["VERSION", "CLOUDSTACK_LINE", "SCRIPTS_DIGEST"]
    assert files == sorted([*top, "systemvm/__init__.py", "systemvm/contract.py", *guest])
    assert (image_lib / "VERSION").read_text() == "9.9.9\n"
    assert (image_lib / "CLOUDSTACK_LINE").read_text() == "4.22\n"
    assert (image_lib / "SCRIPTS_DIGEST").read_text() == "sha512\n"
    # the harness's test agent arrives with the patch; it is not part of the image
    assert not any("testagent" in f for f in files)


def programs() -> dict[str, set[str]]:
    """Element file -> the systemvm.guest modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(ELEMENTS.rglob("*")):
        if path.is_file() and path.suffix not in (".rst", ".md", ".txt", ".yaml"):
            text = path.read_text(errors="replace")
            names = {n.strip() for m in IMPORT.findall(text) for n in m.split(",")}
            if names:
                found[str(path.relative_to(ELEMENTS))] = names
    return found


def test_the_boot_programs_import_the_guest_package():
    found = programs()
    assert found["systemvm-boot/static/opt/cloud/bin/cloud-early-config"] == {"early_config"}
    assert found["systemvm-boot/static/opt/cloud/bin/systemvm-postinit"] == {"postinit"}
    assert found["systemvm-firewall/install.d/60-install-default-rules"] == {"firewall", "system"}


@pytest.mark.parametrize("element_file", sorted(programs()))
def test_each_program_imports_from_the_image_copy_with_the_standard_library_only(image_lib, element_file):
    modules = sorted(programs()[element_file])
    code = (
        f"import sys; sys.path.insert(0, {str(image_lib)!r})\n"
        f"from systemvm.guest import {', '.join(modules)}\n"
        "import systemvm, systemvm.contract\n"
        # every module loaded is the standard library's or the copy's
        "stdlib = set(sys.stdlib_module_names)\n"
        "other = sorted(n for n, m in sys.modules.items() if n.split('.')[0] not in stdlib and\n"
        f"    not (getattr(m, '__file__', None) or '').startswith({str(image_lib)!r}) and n != '__main__')\n"
        "print(systemvm.__file__); print(other)\n"
    )
    # -I: no user site, no PYTHON* variables, no script directory; -S: no site-packages at all
    argv = [sys.executable, "-I", "-S", "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=image_lib)
    assert out.returncode == 0, out.stderr
    where, other = out.stdout.splitlines()
    assert where == str(image_lib / "systemvm/__init__.py")
    assert other == "[]"


def test_the_image_disables_the_contracts_units_read_from_its_own_copy(image_lib, tmp_path):
    """elements/systemvm-packages reads the units to leave off from the contract the image holds; a fake
    systemctl on PATH records what it disables."""
    from systemvm import contract

    step = ELEMENTS / "systemvm-packages/install.d/30-disable-role-services"
    text = step.read_text().replace("/opt/cloud/lib", str(image_lib))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "disabled"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$2" >> {record}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["bash", "-c", text], env=env, check=True, capture_output=True, text=True)
    assert record.read_text().split() == list(contract.IMAGE_DISABLED_UNITS)
    assert set(contract.ROLE_SERVICE_POOL) <= set(contract.IMAGE_DISABLED_UNITS)
