"""SIGINT and SIGTERM, handled in one place.

A signal raises `Interrupted` (a KeyboardInterrupt that carries the signal number), so every cleanup path
that handles Ctrl-C handles a scheduler's SIGTERM too, and the CLI exits with 128 + the signal. While a
training run is inside `deferred()`, the first signal only sets a flag: the run's guard callback stops at
the next batch end, where the state is whole and can be checkpointed; a second signal interrupts at once.

Composer's engine replaces both handlers with `sys.exit(128 + signal)` when it is imported, which would
skip those cleanup paths; so `install()` is called again once Composer is imported (rafale/train/run.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading

from rafale.errors import Interrupted

_state = {"defer": False, "pending": None}


def _handler(signum, frame):
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM to rafale's handler (main thread only; elsewhere Python forbids it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def deferred():
    """Within this block, the first signal is only recorded (see `pending`)."""
    _state.update(defer=True, pending=None)
    try:
        yield
    finally:
        _state.update(defer=False, pending=None)


def pending() -> int | None:
    """The signal received inside `deferred()`, if any."""
    return _state["pending"]
