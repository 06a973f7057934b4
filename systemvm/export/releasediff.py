"""What changed between two releases: ``release-diff.md`` and ``release-diff.json`` in the new release.

Read from the build manifests of both release directories, per flavour (matched by flavour, so releases
of different versions compare): the CloudStack line each was built for and what that changes of the contract
(:mod:`systemvm.profile`: metadata.ini's checksum algorithm, the scripts signature's digest, ...), packages
added, removed, upgraded and downgraded (ordered as dpkg orders versions), which upgrades came from the
security suite, the kernel change, and each artifact's size change (artifacts matched by kind:
``kvm.qcow2.bz2``, ``xen.vhd.bz2``, ``vmware.ova``, ``hyperv.vhd.zip``).

Where a package came from is what the new build recorded (``package_records[*].suites``, see
``APT_ORIGIN_METHOD`` in :mod:`systemvm.build.image`): an upgrade is a security update when the new
version is listed in a ``*-security`` suite's index. A manifest from before that record says
``unknown``. Both reports are written only after both directories are read, and then listed in the new
directory's checksum files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from systemvm import naming
from systemvm.atomic import atomic_path
from systemvm.errors import UserError
from systemvm.export import debversion, publish
from systemvm.profile import manifest_profile

MARKDOWN = "release-diff.md"
JSON = "release-diff.json"
_MANIFEST = re.compile(r"^systemvmtemplate-(?P<version>.+)-(?P<arch>[a-z0-9_]+)\.manifest\.json$")
UNKNOWN_ORIGIN = (
    "unknown: the new build's manifest records no apt suites per package (built before they were recorded)"
)


class DiffInputError(UserError):
    """A release directory that cannot be compared: exit status 2 (the user's input), nothing written."""


def load_release(directory: Path, role: str) -> dict[str, dict[str, Any]]:
    """{flavour: manifest} of the release in ``directory``; ``role`` ("old"/"new") names it in errors."""
    directory = Path(directory)
    option = f"--{role}"
    if not directory.is_dir():
        raise DiffInputError(
            f"{role} release directory {directory} does not exist: pass {option} the directory that "
            "'invoke build' wrote (artifacts/<version>/)"
        )
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(directory.iterdir()):
        match = _MANIFEST.match(path.name)
        if not match or not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DiffInputError(
                f"{path} is not valid JSON ({exc}): rebuild that release or fix the file"
            ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("packages"), dict):
            raise DiffInputError(
                f"{path} lists no packages: it is not a build manifest; rebuild that release"
            )
        flavour = str(manifest.get("flavour") or _flavour_of_arch(match.group("arch")) or "")
        if not flavour:
            continue  # neither named nor an architecture we know: not one of our manifests
        if flavour in found:
            raise DiffInputError(
                f"{directory} holds two {flavour} manifests ({found[flavour][0].name}, {path.name}): "
                f"pass {option} a directory of one release"
            )
        found[flavour] = (path, manifest)
    if not found:
        raise DiffInputError(
            f"no build manifest (systemvmtemplate-<version>-<arch>.manifest.json) in {directory}: pass "
            f"{option} a release directory that 'invoke build' wrote"
        )
    return {flavour: manifest for flavour, (_, manifest) in sorted(found.items())}


def _flavour_of_arch(arch: str) -> str | None:
    return {v: k for k, v in naming.ARCH_OF.items()}.get(arch)


# The profile's fields a release engineer reads in the diff, in this order, with what each one decides.
CONTRACT_FIELDS = {
    "line": "CloudStack line",
    "checksum": "metadata.ini checksum algorithm",
    "checksum_list": "checksum list metadata.ini is made from",
    "scripts_digest": "scripts signature digest (version handshake, live patch)",
    "kvm_plain_section": "metadata.ini also has [kvm]",
    "four_part_metadata_version": "metadata.ini [default] version is x.y.z.s",
    "userdata": "boot runs cloud-init from userdata= (PR 11654)",
    "stored_checksum_prefix": "vm_template.checksum prefix",
    "cloud_init_datasources": "cloud-init datasource_list",
}


def _contract(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The CloudStack profile a release was built for, or None when neither it nor its version names one."""
    try:
        return manifest_profile(manifest).record()
    except UserError:
        return None


def diff_contract(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The CloudStack line of both releases and every contract field that differs between them."""
    before, after = _contract(old), _contract(new)
    changes = [
        {"field": key, "what": what, "old": before.get(key), "new": after.get(key)}
        for key, what in CONTRACT_FIELDS.items()
        if before is not None and after is not None and before.get(key) != after.get(key)
    ]
    signatures = [(m.get("scripts_signature") or {}).get("algorithm") for m in (old, new)]
    return {
        "old_line": before and before["line"],
        "new_line": after and after["line"],
        "changed": before != after,
        "changes": changes,
        "old_signature": signatures[0],
        "new_signature": signatures[1],
    }


def _records(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {"version", "suites"}}; suites None where the build recorded none (then unknown, not "no")."""
    records = manifest.get("package_records") or {}
    recorded = any(r.get("suites") for r in records.values())
    return {
        name: {"version": version, "suites": records.get(name, {}).get("suites") if recorded else None}
        for name, version in manifest["packages"].items()
    }


def _security(suites: list[str] | None) -> bool | None:
    if suites is None:
        return None
    return any(s.endswith("-security") for s in suites)


def _artifact_sizes(manifest: dict[str, Any], directory: Path) -> dict[str, dict[str, Any]]:
    """{kind: {"file", "size"}}, from the manifest's artifacts, else from the files in the directory."""
    stem = naming.stem(str(manifest.get("version")), str(manifest.get("flavour")))
    listed = dict(manifest.get("artifacts") or {})
    for path in Path(directory).glob(f"{stem}-*"):
        if path.is_file() and path.name not in listed:
            listed[path.name] = {"size": path.stat().st_size}
    return {
        name.removeprefix(f"{stem}-"): {"file": name, "size": int(info["size"])}
        for name, info in sorted(listed.items())
        if name.startswith(f"{stem}-") and "size" in info
    }


def diff_flavour(old: dict[str, Any], new: dict[str, Any], old_dir: Path, new_dir: Path) -> dict[str, Any]:
    before, after = _records(old), _records(new)
    added = [
        {"name": n, "version": after[n]["version"], "suites": after[n].get("suites")}
        for n in sorted(set(after) - set(before))
    ]
    removed = [{"name": n, "version": before[n]["version"]} for n in sorted(set(before) - set(after))]
    upgraded: list[dict[str, Any]] = []
    downgraded: list[dict[str, Any]] = []
    for name in sorted(set(before) & set(after)):
        old_version, new_version = before[name]["version"], after[name]["version"]
        order = debversion.compare(old_version, new_version)
        if order == 0:
            continue
        suites = after[name].get("suites")
        entry = {"name": name, "old": old_version, "new": new_version, "suites": suites,
                 "security": _security(suites)}  # fmt: skip
        (upgraded if order < 0 else downgraded).append(entry)
    old_sizes, new_sizes = _artifact_sizes(old, old_dir), _artifact_sizes(new, new_dir)
    artifacts = []
    for kind in sorted(set(old_sizes) | set(new_sizes)):
        a, b = old_sizes.get(kind), new_sizes.get(kind)
        change = b["size"] - a["size"] if a and b else None
        percent = round(100 * change / a["size"], 2) if a and change is not None and a["size"] else None
        artifacts.append(
            {
                "kind": kind,
                "old_file": a and a["file"],
                "new_file": b and b["file"],
                "old_size": a and a["size"],
                "new_size": b and b["size"],
                "change_bytes": change,
                "change_percent": percent,
            }
        )
    return {
        "old_version": old.get("version"),
        "new_version": new.get("version"),
        "cloudstack": diff_contract(old, new),
        "old_commit": old.get("git_commit"),
        "new_commit": new.get("git_commit"),
        "kernel": {
            "old": old.get("kernel"),
            "new": new.get("kernel"),
            "changed": old.get("kernel") != new.get("kernel"),
        },  # fmt: skip
        "added": added,
        "removed": removed,
        "upgraded": upgraded,
        "downgraded": downgraded,
        "artifacts": artifacts,
        "image": image_sizes(old, new),
    }


# The build manifest's sizes a release engineer compares, with their names in the report.
IMAGE_SIZES = {"rootfs_used_bytes": "root filesystem used", "raw_disk_allocated_bytes": "raw disk allocated"}


def image_sizes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The built image's own sizes (before any export) in both releases, where both manifests record them."""
    rows = []
    for key, what in IMAGE_SIZES.items():
        a, b = (old.get("sizes") or {}).get(key), (new.get("sizes") or {}).get(key)
        if isinstance(a, int) and isinstance(b, int):
            rows.append({"size": key, "what": what, "old": a, "new": b, "change_bytes": b - a})
    return rows


def diff_releases(old_dir: Path, new_dir: Path) -> dict[str, Any]:
    """The release diff as data (what release-diff.json holds); raises DiffInputError on bad input."""
    old, new = load_release(old_dir, "old"), load_release(new_dir, "new")
    common = sorted(set(old) & set(new))
    if not common:
        raise DiffInputError(
            f"no flavour in both releases ({old_dir}: {', '.join(old)}; {new_dir}: {', '.join(new)}): "
            "pass two releases that share a flavour"
        )
    methods = {str(new[f].get("apt_origin_method") or "") for f in common} - {""}
    return {
        "old": str(old_dir),
        "new": str(new_dir),
        "security_decided_by": (
            "an upgrade counts as one when its new version is listed in a *-security suite's index; "
            + ("; ".join(sorted(methods)) if methods else UNKNOWN_ORIGIN)
        ),
        "flavours": {f: diff_flavour(old[f], new[f], Path(old_dir), Path(new_dir)) for f in common},
        "only_in_old": sorted(set(old) - set(new)),
        "only_in_new": sorted(set(new) - set(old)),
    }


def _value(value: Any) -> str:
    if value == "":
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value:,} B"


def _security_word(entry: dict[str, Any]) -> str:
    return {True: "yes", False: "no", None: "unknown"}[entry["security"]]


def render_markdown(diff: dict[str, Any]) -> str:
    lines = [
        f"# Release diff: {diff['old']} -> {diff['new']}",
        "",
        f"Security updates: {diff['security_decided_by']}.",
    ]
    for name in diff["only_in_old"]:
        lines += ["", f"Flavour {name} is only in the old release."]
    for name in diff["only_in_new"]:
        lines += ["", f"Flavour {name} is only in the new release."]
    for flavour, d in diff["flavours"].items():
        security = (
            "security suite unknown"
            if any(e["security"] is None for e in d["upgraded"])
            else f"{sum(1 for e in d['upgraded'] if e['security'])} from the security suite"
        )
        kernel = d["kernel"]
        contract = d.get("cloudstack") or {}
        line_text = (
            f"{contract.get('old_line') or 'unknown'} -> {contract.get('new_line') or 'unknown'}"
            if contract.get("old_line") != contract.get("new_line")
            else f"{contract.get('new_line') or 'unknown'} (unchanged)"
        )
        lines += [
            "",
            f"## {flavour}",
            "",
            f"- template: {d['old_version']} ({d['old_commit']}) -> {d['new_version']} ({d['new_commit']})",
            f"- CloudStack line: {line_text}",
            f"- kernel: {kernel['old']} -> {kernel['new']}"
            if kernel["changed"]
            else f"- kernel: {kernel['new']} (unchanged)",
            f"- packages: {len(d['added'])} added, {len(d['removed'])} removed, "
            f"{len(d['upgraded'])} upgraded ({security}), {len(d['downgraded'])} downgraded",
        ]
        lines += [
            f"- {row['what']}: {_size(row['old'])} -> {_size(row['new'])} ({row['change_bytes']:+,} B)"
            for row in d.get("image") or []
        ]
        if contract.get("changes"):
            lines += ["", "### CloudStack contract", "", "| what | old | new |", "| --- | --- | --- |"]
            lines += [
                f"| {c['what']} | {_value(c['old'])} | {_value(c['new'])} |" for c in contract["changes"]
            ]
        if d["added"]:
            lines += ["", "### Added", "", "| package | version | suites |", "| --- | --- | --- |"]
            lines += [
                f"| {e['name']} | {e['version']} | {', '.join(e['suites'] or ['unknown'])} |"
                for e in d["added"]
            ]
        if d["removed"]:
            lines += ["", "### Removed", "", "| package | version |", "| --- | --- |"]
            lines += [f"| {e['name']} | {e['version']} |" for e in d["removed"]]
        for title, entries in (("Upgraded", d["upgraded"]), ("Downgraded", d["downgraded"])):
            if entries:
                lines += [
                    "",
                    f"### {title}",
                    "",
                    "| package | old | new | security |",
                    "| --- | --- | --- | --- |",
                ]
                lines += [f"| {e['name']} | {e['old']} | {e['new']} | {_security_word(e)} |" for e in entries]
        if d["artifacts"]:
            lines += [
                "",
                "### Artifacts",
                "",
                "| artifact | old size | new size | change |",
                "| --- | --- | --- | --- |",
            ]
            for a in d["artifacts"]:
                if a["change_bytes"] is None:
                    change = "new" if a["old_size"] is None else "gone"
                else:
                    change = f"{a['change_bytes']:+,} B" + (
                        f" ({a['change_percent']:+.2f} %)" if a["change_percent"] is not None else ""
                    )
                lines.append(f"| {a['kind']} | {_size(a['old_size'])} | {_size(a['new_size'])} | {change} |")
    return "\n".join(lines) + "\n"


def write_release_diff(old_dir: Path, new_dir: Path) -> tuple[Path, Path]:
    """Write release-diff.md and release-diff.json into ``new_dir`` and list them in its checksum files."""
    diff = diff_releases(Path(old_dir), Path(new_dir))
    markdown, data = Path(new_dir) / MARKDOWN, Path(new_dir) / JSON
    with atomic_path(markdown) as tmp_md, atomic_path(data) as tmp_json:
        tmp_md.write_text(render_markdown(diff))
        tmp_json.write_text(json.dumps(diff, indent=2, sort_keys=True) + "\n")
    publish.list_files(Path(new_dir), [markdown, data])
    return markdown, data


__all__ = ["DiffInputError", "diff_releases", "load_release", "render_markdown", "write_release_diff"]
