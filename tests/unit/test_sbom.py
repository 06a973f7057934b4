"""The CycloneDX SBOM: valid by CycloneDX's own schema, every package with its purl, deterministic."""

from __future__ import annotations

import json

import pytest

from systemvm.errors import UserError
from systemvm.export import sbom
from tests.unit.manifests import EPOCH, ORIGINS_NEW, PACKAGES_NEW, make_manifest, write_manifest

ARTIFACT = "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
SHA512 = "ab" * 64


def manifest():
    return make_manifest(
        PACKAGES_NEW, ORIGINS_NEW, artifacts={ARTIFACT: {"format": "qcow2", "size": 123, "sha512": SHA512}}
    )


def components(text: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(text)["components"]}


def test_sbom_validates_and_lists_every_package_kernel_project_and_artifact():
    m = manifest()
    text = sbom.render_sbom(m, EPOCH)
    assert sbom.schema_errors(text) == []
    assert sbom.content_errors(text, m) == []
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"  # SOURCE_DATE_EPOCH
    by_name = components(text)
    assert set(by_name) == set(m["packages"]) | {ARTIFACT}
    libc = by_name["libc6"]
    assert libc["version"] == "2.36-9+deb12u10"
    assert libc["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12"
    props = {p["name"]: p["value"] for p in libc["properties"]}
    assert props == {
        "systemvm:architecture": "amd64",
        "systemvm:source-package": "glibc",
        "systemvm:source-version": "2.36-9+deb12u10",
        "systemvm:apt-suites": "bookworm-updates",
    }
    assert by_name["tzdata"]["purl"].endswith("?arch=all&distro=debian-12")
    kernel = {p["name"]: p["value"] for p in by_name["linux-image-6.1.0-57-amd64"]["properties"]}
    assert kernel["systemvm:kernel"] == "true"
    template = doc["metadata"]["component"]
    assert (template["name"], template["version"]) == ("systemvmtemplate", "4.20.0")
    assert {"name": "systemvm:kernel", "value": "6.1.0-57-amd64"} in template["properties"]
    (tool,) = doc["metadata"]["tools"]["components"]
    assert tool["name"] == "systemvm-template" and tool["version"]
    assert {"name": "systemvm:git-commit", "value": m["git_commit"]} in tool["properties"]
    assert by_name[ARTIFACT]["hashes"] == [{"alg": "SHA-512", "content": SHA512}]


def test_sbom_is_deterministic_and_its_serial_follows_the_content():
    first, second = sbom.render_sbom(manifest(), EPOCH), sbom.render_sbom(manifest(), EPOCH)
    assert first == second
    changed = manifest()
    changed["package_records"]["bash"]["version"] = "5.2.15-2+b3"
    other = sbom.render_sbom(changed, EPOCH)
    assert json.loads(other)["serialNumber"] != json.loads(first)["serialNumber"]
    assert (
        json.loads(sbom.render_sbom(manifest(), EPOCH + 1))["serialNumber"]
        != json.loads(first)["serialNumber"]
    )


def test_a_bad_hash_fails_cyclonedx_schema_validation():
    text = sbom.render_sbom(manifest(), EPOCH).replace(SHA512, SHA512[:20])
    errors = sbom.schema_errors(text)
    assert errors and "does not match" in errors[0]


def test_a_wrong_purl_fails_the_content_check():
    text = sbom.render_sbom(manifest(), EPOCH)
    assert sbom.content_errors(text, manifest()) == []
    wrong = text.replace("libc6@2.36-9%2Bdeb12u10?arch=amd64", "libc6@2.36-9%2Bdeb12u10?arch=i386")
    assert wrong != text
    assert sbom.schema_errors(wrong) == []  # the schema does not look into purls: our check does
    assert sbom.content_errors(wrong, manifest()) == [
        "package libc6: purl pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=i386&distro=debian-12 is not "
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12"
    ]


def test_a_dropped_package_fails_the_content_check():
    doc = json.loads(sbom.render_sbom(manifest(), EPOCH))
    doc["components"] = [c for c in doc["components"] if c["name"] != "zstd"]
    assert sbom.content_errors(json.dumps(doc), manifest()) == ["package zstd: 0 components, not one"]


def test_write_sbom_names_the_file_by_version_and_arch(tmp_path):
    out = tmp_path / "4.20.0"
    path = write_manifest(out, manifest())
    written = sbom.write_sbom(out, path, EPOCH)
    assert written == out / "systemvmtemplate-4.20.0-x86_64.cdx.json"
    assert sbom.check_sbom(written, manifest()) == []


def test_write_sbom_without_a_manifest_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="run 'invoke build' first"):
        sbom.write_sbom(tmp_path, tmp_path / "systemvmtemplate-4.20.0-x86_64.manifest.json", EPOCH)
    assert list(tmp_path.iterdir()) == []
