"""Fixtures shared by every test directory."""

import signal

import pytest


@pytest.fixture
def restore_signals():
    """rafale installs its own SIGINT/SIGTERM handlers (rafale/signals.py); put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
