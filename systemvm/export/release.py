"""One release: build manifests in, published files out. ``invoke build`` (after its builds) and
``invoke export`` both call :func:`publish_release`, so the two cannot drift apart.

:func:`plan_release` checks every input of the release (export formats, the export tools, the previous
release's directory) and is called before the build starts, so a bad ``--formats`` or ``--previous`` ends
a build before any work, not after it. :func:`publish_release` then exports each flavour's raw disk with
the SOURCE_DATE_EPOCH its manifest records (read once, by the build:
:func:`systemvm.build.image.source_date_epoch`), writes the SBOMs, checksum lists and metadata.ini
(:mod:`systemvm.export.export`) and the release diff.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from systemvm import diskdigest, hosttools, naming
from systemvm.errors import UserError
from systemvm.export.export import export_flavours, parse_formats
from systemvm.progress import say


@dataclasses.dataclass(frozen=True)
class ReleasePlan:
    """What a release writes beside the raw disks, its inputs already checked."""

    formats: list[str]  # empty: no exports (``invoke build --no-export``)
    previous: Path | None = None  # the previous release's directory: a release diff against it
    base_url: str | None = None  # metadata.ini's download URL prefix (default: publish.default_base_url)


@dataclasses.dataclass
class Release:
    """What :func:`publish_release` wrote: per flavour and format the export's facts, and the diff files."""

    exports: dict[str, dict[str, dict[str, Any]]]
    diff: list[Path]

    def lines(self) -> list[str]:
        """One line per published file, as the tasks print them."""
        out = [
            f"{info['file']}  {info['size']} bytes  sha512 {info['sha512'][:16]}..."
            for results in self.exports.values()
            for info in results.values()
        ]
        return out + [str(path) for path in self.diff]


def plan_release(
    formats: str | list[str] | None,
    previous: str | Path | None = None,
    base_url: str | None = None,
) -> ReleasePlan:
    """Check every input of a release before anything runs; ``formats`` None: no exports."""
    chosen = parse_formats(formats) if formats is not None else []
    if chosen:
        hosttools.check_phase("export")
    previous_dir = Path(previous) if previous else None
    if previous_dir is not None:
        from systemvm.export.releasediff import load_release

        load_release(previous_dir, "previous")
    return ReleasePlan(formats=chosen, previous=previous_dir, base_url=base_url)


def load_manifests(out_dir: Path, version: str, flavours: list[str]) -> list[dict[str, Any]]:
    """The build manifests of ``flavours`` in a release directory; a missing build says to build first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(
            f"no build of version {version} in {out_dir.parent}: run 'invoke build --version {version}' "
            "first, or give --artifacts the directory that holds it"
        )
    manifests = []
    for flavour in flavours:
        path = out_dir / naming.manifest(Path("."), version, flavour).name
        if not path.is_file():
            raise UserError(
                f"{out_dir} holds no {flavour} build ({path.name} is missing): run "
                f"'invoke build --flavour {flavour} --version {version}' first"
            )
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not valid JSON ({exc}): rebuild that flavour") from None
        if not isinstance(manifest, dict) or manifest.get("flavour") != flavour:
            raise UserError(f"{path} is not the {flavour} build's manifest: rebuild that flavour")
        manifests.append(manifest)
    return manifests


def epoch_of(manifest: Mapping[str, Any]) -> int:
    """The SOURCE_DATE_EPOCH the build recorded: every file of the release carries that time."""
    value = manifest.get("source_date_epoch")
    if not isinstance(value, int) or value < 0:
        raise UserError(
            f"the {manifest.get('flavour')} manifest records no SOURCE_DATE_EPOCH: rebuild that flavour"
        )
    return value


def check_disk_is_the_builds(raw: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a raw disk that is not the one its build recorded (size, then content digest): truncated, cut
    short by a full filesystem, or replaced since. A manifest from before the digest was recorded has its
    size checked only."""
    flavour, version = manifest.get("flavour"), manifest.get("version")
    rebuild = f"rebuild it with 'invoke build --flavour {flavour} --version {version}'"
    if not raw.is_file():
        raise UserError(f"{raw} does not exist: {rebuild}")
    recorded = manifest.get("raw_disk") or {}
    size = recorded.get("size") or (manifest.get("sizes") or {}).get("raw_disk_virtual_bytes")
    actual = raw.stat().st_size
    if size is not None and actual != size:
        raise UserError(
            f"{raw.name} is {actual:,} bytes, but its build recorded {size:,}: the disk was cut short or "
            f"replaced since; {rebuild}"
        )
    if recorded.get("digest"):
        if diskdigest.content_digest(raw) != recorded["digest"]:
            raise UserError(
                f"{raw.name} holds other data than its build recorded (content digest differs): the disk "
                f"was changed since; {rebuild}"
            )
    elif size is not None:
        say(f"    {raw.name}: its manifest records no content digest (an older build); size checked only")


def publish_release(manifests: Sequence[Mapping[str, Any]], out_dir: Path, plan: ReleasePlan) -> Release:
    """Export every flavour of ``manifests`` (their raw disks in ``out_dir``), then the release diff.
    Every raw disk is compared with its manifest before anything is written."""
    out_dir = Path(out_dir)
    exports: dict[str, dict[str, dict[str, Any]]] = {}
    if plan.formats and manifests:
        version = str(manifests[0]["version"])
        raws = {
            m["flavour"]: out_dir / naming.raw_disk(Path("."), version, m["flavour"]).name for m in manifests
        }
        for manifest in manifests:
            check_disk_is_the_builds(raws[manifest["flavour"]], manifest)
        exports = export_flavours(
            raws,
            out_dir,
            version,
            plan.formats,
            epochs={m["flavour"]: epoch_of(m) for m in manifests},
            base_url=plan.base_url,
        )
    diff: list[Path] = []
    if plan.previous is not None:
        from systemvm.export.releasediff import write_release_diff

        diff = list(write_release_diff(plan.previous, out_dir))
    return Release(exports=exports, diff=diff)
