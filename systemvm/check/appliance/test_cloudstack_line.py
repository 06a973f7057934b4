"""CloudStack line.

What the CloudStack line the image was built for (its build manifest's profile, systemvm/profile.py) asks of
it: the release line names the image's version, the scripts signature is one digest in the line's algorithm
(MD5 for 4.20, SHA-512 for 4.22: PR 11134) of the scripts the image keeps, cloud-init is installed and left
disabled as CloudStack's template build leaves it. (The handshake's two parts: test_patch.py.)
"""

from __future__ import annotations

import re

from systemvm import contract
from systemvm.check.appliance.target import run_ok
from systemvm.profile import line_of

HEX = re.compile(r"^[0-9a-f]+$")
# cloud-init's stages: CloudStack disables cloud-init.service; none of them may start at boot.
CLOUD_INIT_UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service",
                    "cloud-final.service")  # fmt: skip
CLOUD_INIT_CFG = "/etc/cloud/cloud.cfg.d/cloudstack.cfg"
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"


def test_release_line_names_the_images_version_of_its_cloudstack_line(host, params) -> None:
    """/etc/cloudstack-release names the version the image was built as, a version of its CloudStack line"""
    profile = params.cloudstack_profile()
    version = params.manifest().get("version") or params.get("version")
    release = host.file(contract.RELEASE_PATH)
    assert release.exists, f"{contract.RELEASE_PATH} is missing"
    words = release.content_string.split()
    named = words[2] if len(words) > 2 and words[:2] == ["Cloudstack", "Release"] else None
    assert named == version, f"{contract.RELEASE_PATH} names {named!r}; the image was built as {version}"
    assert line_of(named or "") == profile.line, (
        f"the release names {named}, not a version of CloudStack {profile.line} the image was built for"
    )


def test_scripts_signature_is_one_digest_of_the_kept_scripts_in_the_lines_algorithm(host, params) -> None:
    """cloud-scripts-signature is one digest in the line's algorithm, of /usr/share/cloud/cloud-scripts.tgz

    One line, the hex digest alone, 32 (4.20, MD5) or 128 (4.22, SHA-512) digits."""
    profile = params.cloudstack_profile()
    signature = host.file(contract.SCRIPTS_SIGNATURE_PATH)
    assert signature.exists, f"{contract.SCRIPTS_SIGNATURE_PATH} is missing: the handshake reports no scripts"
    text = signature.content_string
    assert text.endswith("\n") and text.count("\n") == 1, f"the signature is not one line: {text[:200]!r}"
    digest = text.strip()
    assert HEX.match(digest) and len(digest) == profile.scripts_digest_length, (
        f"the signature {digest[:140]!r} is not one {profile.scripts_digest} digest "
        f"({profile.scripts_digest_length} hex digits), what CloudStack {profile.line} compares"
    )
    assert host.file(contract.SCRIPTS_COPY_PATH).exists, f"{contract.SCRIPTS_COPY_PATH} is missing"
    actual = run_ok(host, f"{profile.scripts_digest_command} {contract.SCRIPTS_COPY_PATH}").split()[0]
    assert digest == actual, (
        f"the signature {digest[:16]}... is not the {profile.scripts_digest} {actual[:16]}... of "
        f"{contract.SCRIPTS_COPY_PATH}"
    )


def test_cloud_init_is_installed_and_disabled_as_cloudstack_leaves_it(host, params) -> None:
    """cloud-init is installed and disabled as CloudStack leaves it

    Units disabled, /etc/cloud/cloud-init.disabled present, CloudStack's datasource configuration."""
    profile = params.cloudstack_profile()
    assert host.package("cloud-init").is_installed, "cloud-init is not installed"
    assert host.file(CLOUD_INIT_DISABLED).exists, f"{CLOUD_INIT_DISABLED} is missing: cloud-init runs at boot"
    # systemctl reads the unit files itself, on a running VM and in an image chroot alike
    states = {unit: host.run(f"systemctl is-enabled {unit}").stdout.strip() for unit in CLOUD_INIT_UNITS}
    enabled = [f"{unit} ({state})" for unit, state in states.items() if state != "disabled"]
    assert not enabled, f"cloud-init units not disabled: {', '.join(enabled)}"
    config = host.file(CLOUD_INIT_CFG)
    assert config.exists, f"{CLOUD_INIT_CFG} is missing"
    text = config.content_string
    if "userdata" in params.cmdline_args and profile.userdata:
        # the boot ran the command line's user data: it rewrote the file for the NoCloud source
        assert "datasource_list: ['NoCloud']" in text, f"{CLOUD_INIT_CFG} after user data: {text!r}"
        return
    listed = ", ".join(f"'{name}'" for name in profile.cloud_init_datasources)
    assert f"datasource_list: [{listed}]" in text, (
        f"{CLOUD_INIT_CFG} does not list [{listed}] as CloudStack's build writes it: {text!r}"
    )
