"""Write outputs so that nothing is ever half-written: temp name beside the target, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from systemvm.errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` only on success.

    On any exception (including KeyboardInterrupt) the temporary file or directory is removed.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist: create it or choose another")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable: fix its permissions or choose another")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def require_free_space(directory: str | os.PathLike[str], needed: int, what: str) -> None:
    """Fail before starting when ``directory`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(
            f"not enough free space in {directory} for {what}: need {needed / 2**20:.0f} MiB, "
            f"have {free / 2**20:.0f} MiB; free some space or choose another output directory"
        )
