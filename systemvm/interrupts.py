"""SIGTERM handled as Ctrl-C: a CI runner's timeout or ``kill`` ends a run the way an interrupt does, so
every context manager tears down what it started (VMs, the network lab, mounts) instead of leaving them."""

from __future__ import annotations

import signal
import threading


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_is_interrupt() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread (elsewhere: nothing changes, Python
    delivers signals to the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
