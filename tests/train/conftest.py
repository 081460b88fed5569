"""Fixtures for the tests of rafale/train."""

from __future__ import annotations

import os

import pytest

from train_helpers import ROOT


@pytest.fixture(scope="session")
def rafale_env(tmp_path_factory) -> dict:
    """Environment for subprocesses: this checkout first on the path, one data cache for the session."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAFALE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    env.pop("FORCE", None)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")  # identical threads for every run compared
    return env

