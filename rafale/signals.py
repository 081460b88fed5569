"""SIGINT and SIGTERM, handled in one place.

A signal raises `Interrupted` (a KeyboardInterrupt carrying the signal number), so every path that cleans
up after Ctrl-C also does after a scheduler's SIGTERM, and the CLI exits with 128 + the signal. During a
training run's fit (`defer(True)`) the first signal is only recorded: the guard callback stops the run at
the next batch end, where the state is whole and can be checkpointed; a second one interrupts at once.
Importing Composer replaces both handlers with `sys.exit`, so rafale/train/run.py calls `install()` again.
"""

from __future__ import annotations

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
    if threading.current_thread() is threading.main_thread():  # elsewhere Python forbids it
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


def defer(on: bool) -> None:
    """While on, the first signal is only recorded, and `pending()` returns it."""
    _state.update(defer=on, pending=None)


def pending() -> int | None:
    return _state["pending"]
