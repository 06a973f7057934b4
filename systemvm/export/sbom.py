"""A CycloneDX SBOM per flavour: ``systemvmtemplate-<version>-<arch>.cdx.json`` beside the artifacts.

Made from the flavour's build manifest (cyclonedx-python-lib builds and serialises it):

- ``metadata.component``: the template (name, version, architecture, Debian release, kernel);
- ``metadata.tools``: this project, with its version and the git commit the template was built from;
- one ``library`` component per installed Debian package: name, version, the purl
  ``pkg:deb/debian/<name>@<version>?arch=<arch>&distro=debian-12``, and properties for the architecture,
  the source package and version and the apt suites that offer that version; the kernel's package is
  marked ``systemvm:kernel``;
- one ``file`` component per published artifact the manifest lists, with its SHA-512.

Deterministic: bom-refs are the purls and file names, the timestamp is SOURCE_DATE_EPOCH, and the serial
number is a UUID5 of the document without it. So the same manifest and epoch give the same bytes, and a
changed package or artifact gives another serial number.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from systemvm import naming
from systemvm.atomic import atomic_path
from systemvm.errors import UserError

if TYPE_CHECKING:  # cyclonedx is imported where it is used: only an SBOM needs it
    from cyclonedx.model.bom import Bom

SPEC_VERSION = "1.6"
DISTRO = "debian-12"
PROPERTY = "systemvm"  # namespace of our property names
PROJECT = "systemvm-template"
# uuid5 namespace of the serial numbers (a fixed random UUID: the serial depends only on the content)
SERIAL_NAMESPACE = uuid.UUID("5b0c0f52-3b5e-4c5e-9f0e-7d2f6a8e1c41")


def sbom_name(version: str, flavour: str) -> str:
    return f"{naming.stem(version, flavour)}.cdx.json"


def package_purl(name: str, version: str, arch: str) -> str:
    from packageurl import PackageURL

    return PackageURL(
        type="deb",
        namespace="debian",
        name=name,
        version=version,
        qualifiers={"arch": arch, "distro": DISTRO},
    ).to_string()


def project_version() -> str:
    try:
        return importlib_metadata.version(PROJECT)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def package_records(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's package records; a manifest from before they were recorded gives what it can."""
    records = manifest.get("package_records")
    if records:
        return dict(records)
    packages = manifest.get("packages")
    if not isinstance(packages, dict) or not packages:
        raise UserError("the build manifest lists no packages: rebuild with 'invoke build'")
    return {
        name: {"version": v, "architecture": "", "source": name, "source_version": v, "suites": []}
        for name, v in packages.items()
    }


def kernel_package(manifest: dict[str, Any]) -> str:
    return f"linux-image-{manifest.get('kernel', '')}"


def make_bom(manifest: dict[str, Any], epoch: int) -> Bom:
    """The SBOM of one flavour's build ``manifest``, without its serial number."""
    from cyclonedx.model import (
        HashAlgorithm,
        HashType,
        Property,
    )
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.model.tool import ToolRepository
    from packageurl import PackageURL

    def props(**values: object) -> list[Property]:
        return [Property(name=f"{PROPERTY}:{k.replace('_', '-')}", value=str(v)) for k, v in values.items()]

    flavour = str(manifest["flavour"])
    version = str(manifest["version"])
    stem = naming.stem(version, flavour)
    kernel = kernel_package(manifest)
    debian = OrganizationalEntity(name="Debian")  # no URL: the schema check parses each IRI (slow)
    packages = []
    for name, record in sorted(package_records(manifest).items()):
        arch = record["architecture"] or flavour
        purl = package_purl(name, record["version"], arch)
        extra = {"kernel": "true"} if name == kernel else {}
        packages.append(
            Component(
                type=ComponentType.LIBRARY,
                name=name,
                version=record["version"],
                bom_ref=purl,
                purl=PackageURL.from_string(purl),
                supplier=debian,
                properties=props(
                    architecture=arch,
                    source_package=record["source"],
                    source_version=record["source_version"],
                    apt_suites=",".join(record["suites"]) or "unknown",
                    **extra,
                ),
            )
        )
    files = [
        Component(
            type=ComponentType.FILE,
            name=file_name,
            bom_ref=f"file:{file_name}",
            hashes=[HashType(alg=HashAlgorithm.SHA_512, content=str(info["sha512"]))],
            properties=props(format=info.get("format", ""), size_bytes=info.get("size", "")),
        )
        for file_name, info in sorted((manifest.get("artifacts") or {}).items())
    ]
    template = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name="systemvmtemplate",
        version=version,
        bom_ref=stem,
        description=f"Apache CloudStack System VM template, Debian {manifest.get('debian_release', '')}",
        properties=props(
            flavour=flavour,
            architecture=manifest.get("arch", ""),
            debian_release=manifest.get("debian_release", ""),
            kernel=manifest.get("kernel", ""),
            kernel_package=kernel,
            source_date_epoch=epoch,
        ),
    )
    project = Component(
        type=ComponentType.APPLICATION,
        name=PROJECT,
        version=project_version(),
        bom_ref=f"tool:{PROJECT}",
        properties=props(git_commit=manifest.get("git_commit", "unknown")),
    )
    bom = Bom(
        components=[*packages, *files],
        metadata=BomMetaData(
            component=template,
            tools=ToolRepository(components=[project]),
            timestamp=datetime.fromtimestamp(epoch, tz=UTC),
        ),
    )
    bom.dependencies.add(Dependency(template.bom_ref, dependencies=[Dependency(c.bom_ref) for c in packages]))
    for f in files:
        bom.dependencies.add(Dependency(f.bom_ref, dependencies=[Dependency(template.bom_ref)]))
    return bom


def _serialise(bom: Bom) -> str:
    from cyclonedx.output.json import JsonV1Dot6

    return JsonV1Dot6(bom).output_as_string(indent=1) + "\n"


def render_sbom(manifest: dict[str, Any], epoch: int) -> str:
    """The SBOM's JSON text: the same for the same manifest content and epoch."""
    bom = make_bom(manifest, epoch)
    bom.serial_number = SERIAL_NAMESPACE  # a placeholder, so the digest covers the final layout
    digest = hashlib.sha256(_serialise(bom).encode()).hexdigest()
    bom.serial_number = uuid.uuid5(SERIAL_NAMESPACE, digest)
    return _serialise(bom)


def schema_errors(text: str) -> list[str]:
    """What CycloneDX's JSON schema (of SPEC_VERSION) finds wrong in ``text``; empty when valid."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    found = JsonStrictValidator(SchemaVersion.from_version(SPEC_VERSION)).validate_str(text, all_errors=True)
    if found is None:
        return []
    errors = [found] if not isinstance(found, list | tuple) and not hasattr(found, "__iter__") else found
    return [str(getattr(e, "data", e)).splitlines()[0] for e in errors]


def content_errors(text: str, manifest: dict[str, Any]) -> list[str]:
    """What the schema cannot check: every package of ``manifest`` present once, with its purl."""
    from packageurl import PackageURL

    doc = json.loads(text)
    errors = []
    by_name: dict[str, list[dict]] = {}
    for component in doc.get("components", []):
        by_name.setdefault(component["name"], []).append(component)
    for name, record in package_records(manifest).items():
        found = [c for c in by_name.get(name, []) if c.get("type") == "library"]
        if len(found) != 1:
            errors.append(f"package {name}: {len(found)} components, not one")
            continue
        component = found[0]
        arch = record["architecture"] or str(manifest["flavour"])
        try:
            purl = PackageURL.from_string(component.get("purl", ""))
        except ValueError as exc:
            errors.append(f"package {name}: purl {component.get('purl')!r} does not parse ({exc})")
            continue
        want = {"type": "deb", "namespace": "debian", "name": name, "version": record["version"],
                "qualifiers": {"arch": arch, "distro": DISTRO}}  # fmt: skip
        got = {k: purl.to_dict()[k] for k in want}
        if got != want or component.get("version") != record["version"]:
            expected = package_purl(name, record["version"], arch)
            errors.append(f"package {name}: purl {component.get('purl')} is not {expected}")
    for file_name, info in (manifest.get("artifacts") or {}).items():
        hashes = [c.get("hashes", []) for c in by_name.get(file_name, []) if c.get("type") == "file"]
        if hashes != [[{"alg": "SHA-512", "content": info["sha512"]}]]:
            errors.append(f"artifact {file_name}: not listed once with its SHA-512")
    return errors


def check_sbom(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Schema errors, then content errors, of the SBOM at ``path``; empty when it is right."""
    text = Path(path).read_text()
    return schema_errors(text) or content_errors(text, manifest)


def write_sbom(out_dir: Path, manifest_path: Path, epoch: int) -> Path:
    """Write the SBOM of the build manifest at ``manifest_path`` into ``out_dir``; return its path.

    The document is validated against CycloneDX's schema before it is written, so a published SBOM
    always validates.
    """
    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except FileNotFoundError:
        raise UserError(f"no build manifest {manifest_path}: run 'invoke build' first") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"manifest {manifest_path} is not valid JSON ({exc.msg}): rebuild or fix it"
        ) from None
    text = render_sbom(manifest, epoch)
    problems = schema_errors(text) or content_errors(text, manifest)
    if problems:
        raise UserError(f"the SBOM of {manifest_path.name} does not validate: {problems[0]}; report this")
    target = Path(out_dir) / sbom_name(str(manifest["version"]), str(manifest["flavour"]))
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target


__all__ = ["check_sbom", "package_purl", "render_sbom", "sbom_name", "schema_errors", "write_sbom"]
