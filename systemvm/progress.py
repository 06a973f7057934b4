"""Progress a person can follow: one line per phase with elapsed time; details go to a log file.

A step that runs longer than :data:`QUIET_SECONDS` also shows how far it is (:class:`Meter`): on a terminal
one line rewritten in place, elsewhere (CI logs, a pipe) one line per tenth of the work or per
:data:`EVERY_SECONDS`, whichever comes first. Nobody should watch minutes of silence and press Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Print ``==> name`` on entry and ``    name: done in 12.3 s`` (or ``FAILED after``) on exit."""
    start = time.monotonic()
    say(f"==> {name}")
    try:
        yield
    except BaseException:
        say(f"    {name}: FAILED after {time.monotonic() - start:.1f} s")
        raise
    say(f"    {name}: done in {time.monotonic() - start:.1f} s")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


QUIET_SECONDS = 10.0  # a step shorter than this shows no meter
EVERY_SECONDS = 15.0  # without a terminal: at least one line this often
EVERY_FRACTION = 0.1  # without a terminal: a line at each tenth of the work
TTY_SECONDS = 0.5  # on a terminal: the line is rewritten at most this often
POLL_SECONDS = 1.0  # how often reading() looks at what was read


class Meter:
    """How far one step is: ``amd64 qcow2: 312.0 MiB of 923.3 MiB (34%), 21 s``, or in counted things
    (``unit="packages"``: ``120 of 462 packages``), or the share alone with a note saying what it counts
    (``unit=""``). Feed it with :meth:`update`; :meth:`close` at the end.
    ``total`` None: only what is done is shown. ``tty`` None: whether stderr is a terminal."""

    def __init__(
        self,
        label: str,
        total: float | None,
        unit: str = "B",
        *,
        tty: bool | None = None,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._write = write or self._to_stderr
        self._clock = clock
        self.started = clock()
        self.done = 0.0
        self.note = ""
        self._last_time: float | None = None
        self._last_tenth = -1
        self._shown = False

    def _to_stderr(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def _amount(self, value: float) -> str:
        return human_bytes(value) if self.unit == "B" else f"{value:.0f}"

    def text(self) -> str:
        done = min(self.done, self.total) if self.total else self.done  # an estimated total may be passed
        note = f", {self.note}" if self.note else ""
        if not self.unit:
            share = f"{int(100 * done / self.total)}%" if self.total else "?%"
            return f"    {self.label}: {share}{note}, {self._clock() - self.started:.0f} s"
        amount = self._amount(done)
        if self.total:
            amount += f" of {self._amount(self.total)}"
        if self.unit != "B":
            amount += f" {self.unit}"
        if self.total:
            amount += f" ({int(100 * done / self.total)}%)"
        return f"    {self.label}: {amount}{note}, {self._clock() - self.started:.0f} s"

    def update(self, done: float, note: str | None = None) -> None:
        self.done = done
        if note is not None:
            self.note = note
        now = self._clock()
        if now - self.started < QUIET_SECONDS:
            return
        tenth = int(10 * min(self.done, self.total) / self.total) if self.total else -1
        if self.tty:
            due = self._last_time is None or now - self._last_time >= TTY_SECONDS
        else:
            due = (
                self._last_time is None
                or now - self._last_time >= EVERY_SECONDS
                or (self.total is not None and tenth > self._last_tenth)
            )
        if due:
            self._last_time, self._last_tenth = now, tenth
            self._shown = True
            self._write(f"\r{self.text()}\033[K" if self.tty else f"{self.text()}\n")

    def advance(self, amount: float = 1, note: str | None = None) -> None:
        self.update(self.done + amount, note)

    def close(self) -> None:
        """End the meter's line on a terminal (the step's own done line follows)."""
        if self.tty and self._shown:
            self._write("\r\033[K")


def _read_bytes(task: Path) -> int:
    """Bytes a task (thread) or process read so far, ``rchar`` of its io file (holes read count too)."""
    try:
        for line in (task / "io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int, tid: int | None = None) -> list[int]:
    """The processes started by ``tid`` of ``pid`` (or by all of ``pid``'s tasks), and theirs."""
    found: list[int] = []
    tasks = [Path(f"/proc/{pid}/task/{tid}")] if tid else list(Path(f"/proc/{pid}/task").glob("*"))
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


@contextlib.contextmanager
def reading(label: str, total: float | None, every: float | None = None) -> Iterator[Meter]:
    """A :class:`Meter` of the bytes this thread and the processes it starts read while the block runs
    (``rchar``: the input a converter or compressor consumed), polled every ``every`` seconds (default
    :data:`POLL_SECONDS`). Works for any tool that reads its input, with ``pread`` or not, without its
    cooperation."""
    meter = Meter(label, total)
    every = POLL_SECONDS if every is None else every
    pid, tid = os.getpid(), threading.get_native_id()
    me = Path(f"/proc/{pid}/task/{tid}")
    base = _read_bytes(me)
    # processes this thread started before the block (a package cache daemon, a stand-in server): only what
    # they read from now on is the step's
    before = {child: _read_bytes(Path(f"/proc/{child}")) for child in _descendants(pid, tid)}
    seen: dict[int, int] = {}  # child pid -> the most it was seen to read (it is gone once it exits)
    stop = threading.Event()

    def measure() -> None:
        for child in _descendants(pid, tid):
            read = _read_bytes(Path(f"/proc/{child}")) - before.get(child, 0)
            seen[child] = max(seen.get(child, 0), read)
        meter.update(_read_bytes(me) - base + sum(seen.values()))

    def poll() -> None:
        while not stop.wait(every):
            measure()

    watcher = threading.Thread(target=poll, name=f"meter-{label}", daemon=True)
    watcher.start()
    try:
        yield meter
    except BaseException:
        stop.set()
        watcher.join()
        meter.close()
        raise
    stop.set()
    watcher.join()
    measure()
    # A child that ended between two polls took its last reads with it: the step is over, all is read.
    meter.update(max(meter.done, total or 0))
    meter.close()
