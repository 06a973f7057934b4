"""``invoke diff``: what changed between two releases (packages, kernel, artifact sizes)."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from systemvm.tasks import user_errors


@task(
    help={
        "old": "directory of the previous release (holds its systemvmtemplate-*.manifest.json)",
        "new": "directory of the new release; the reports are written there",
    }
)
def diff(
    c: Context,
    old: str,
    new: str,
) -> None:
    """Write release-diff.md and release-diff.json into NEW (checksummed): packages added, removed,
    upgraded (security ones named), kernel change, per-artifact size change."""
    with user_errors():
        from systemvm.export.releasediff import write_release_diff

        for path in write_release_diff(Path(old), Path(new)):
            print(path)
