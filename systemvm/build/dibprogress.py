"""How far diskimage-builder is, read from its output as it is written (everything also goes to the log).

One line per phase (``root.d``, ``install.d``, ...) as before, and, for the minutes inside one:

- the **bootstrap** (mmdebstrap in ``root.d``, 100 s and more on a cold cache): packages unpacked and set
  up of those apt said it would install (``N newly installed``, once for the essential set, once for the
  rest), the share being both together; then the caching of the bootstrapped tree, by the tarball's size;
- any other **long script**: which one runs, and for how long.

Updates follow :class:`systemvm.progress.Meter`'s rules: nothing for a step under ten seconds, one line
rewritten on a terminal, otherwise one line per tenth of the packages or per 15 seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from systemvm.progress import EVERY_SECONDS, QUIET_SECONDS, Meter, human_bytes, say

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?\s*\|\s?")
_PHASE = re.compile(r"(?:hooks|in_target\.d)/([a-z-]+\.d)/")
_SCRIPT = re.compile(r"dib-run-parts Running \S*/([^/\s]+)$")
_NEWLY = re.compile(r"\b(\d+) newly installed\b")
_CACHING = re.compile(r"^Caching debootstrap result in (\S+)")


class DibProgress:
    """Feed it diskimage-builder's output lines (:meth:`feed`) and call :meth:`tick` every second or so."""

    def __init__(
        self,
        label: str,
        clock: Callable[[], float] = time.monotonic,
        meter: Callable[[str, float | None, str], Meter] | None = None,
        write: Callable[[str], None] = say,
    ) -> None:
        self.label, self._clock, self._write = label, clock, write
        self._new_meter = meter or (lambda name, total, unit: Meter(name, total, unit, clock=clock))
        self.started = clock()
        self.phase: str | None = None
        self.script, self.script_started = "", clock()
        self._last_beat = clock()
        self.bootstrap: Meter | None = None
        self.total = self.fetched = self.unpacked = self.set_up = 0
        self._counting_downloads = False
        self.tarball: Path | None = None

    # -------------------------------------------------------------------------------- lines as they come

    def feed(self, line: str) -> None:
        text = _STAMP.sub("", line.rstrip("\n"))
        match = _PHASE.search(text)
        if match and match.group(1) != self.phase:
            self._end_bootstrap()
            self.phase = match.group(1)
            self._write(
                f"    [{self._clock() - self.started:6.1f} s] {self.label}diskimage-builder {self.phase}"
            )
        script = _SCRIPT.search(text)
        if script:
            self.script, self.script_started, self._last_beat = script.group(1), self._clock(), self._clock()
            if self.bootstrap is not None and self.tarball is not None:
                self._end_bootstrap()  # the script after the one that cached the tree
        if text.startswith("mmdebstrap is installed") or text.startswith("I: automatically chosen mode"):
            if self.bootstrap is None:
                self.bootstrap = self._new_meter(f"{self.label}bootstrap", None, "")
            return
        if self.bootstrap is None:
            return
        if text.startswith("I: downloading packages") or text.startswith("I: installing remaining packages"):
            self._counting_downloads = True
        elif text.startswith("I: running apt-get update"):
            self._counting_downloads = False  # index files are fetched with "Get:" lines too
        newly = _NEWLY.search(text)
        if newly:
            self.total += int(newly.group(1))
            self.bootstrap.total = 2 * self.total  # each package is unpacked, then set up
        elif text.startswith("Get:") and self._counting_downloads:
            self.fetched += 1
        elif text.startswith("Unpacking "):
            self.unpacked += 1
        elif text.startswith("Setting up "):
            self.set_up += 1
        caching = _CACHING.match(text)
        if caching:
            self.tarball = Path(caching.group(1))
        self._show()

    # ------------------------------------------------------------------------------------ every second

    def tick(self) -> None:
        """Time-based updates: the tarball's growth while the tree is cached, a long script's duration."""
        now = self._clock()
        if self.bootstrap is not None:
            self._show()
            return
        if (
            self.phase is not None
            and now - self.script_started >= QUIET_SECONDS
            and now - self._last_beat >= EVERY_SECONDS
        ):
            self._last_beat = now
            self._write(
                f"    [{now - self.started:6.1f} s] {self.label}diskimage-builder {self.phase}: "
                f"{self.script or 'running'} for {now - self.script_started:.0f} s"
            )

    def close(self) -> None:
        self._end_bootstrap()

    # --------------------------------------------------------------------------------------------- inner

    def _show(self) -> None:
        assert self.bootstrap is not None
        if self.tarball is not None:
            try:
                size = self.tarball.stat().st_size
            except OSError:
                size = 0
            note = f"{self.total} packages installed, caching the tree: {human_bytes(size)} written"
        else:
            note = (
                f"{self.fetched} fetched, {self.unpacked} unpacked, {self.set_up} set up "
                f"of {self.total} packages"
            )
        self.bootstrap.update(self.unpacked + self.set_up, note)

    def _end_bootstrap(self) -> None:
        if self.bootstrap is not None:
            self.bootstrap.close()
            self.bootstrap, self.tarball = None, None
