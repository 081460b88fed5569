"""Helpers for the tests of rafale/train: end-to-end runs of `python -m rafale run` in real subprocesses, on a micro config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# A run of a few seconds: 2 layers, blocks of 64 tokens, 4 blocks a batch, one line per step in metrics.jsonl.
MICRO = ["data.max_documents=400", "model.overrides.n_layer=2", "data.train_batch_size=4",
         "data.block_size=64", "run.log_interval=1ba", "run.sample_tokens=0"]


def rafale_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rafale", "run", "-c", str(QUICKSTART), *MICRO,
            f"run.output_dir={out}", *overrides]


def run_rafale(env: dict, out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(rafale_cmd(out, *overrides), env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"rafale run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from metrics.jsonl."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            assert rec["step"] not in out, f"step {rec['step']} logged twice"
            out[rec["step"]] = rec["train/loss"]
    return out


def kill_at_first_checkpoint(env: dict, out: Path, *overrides: str) -> int:
    """Start `rafale run` (run name quickstart) and SIGKILL it once its first checkpoint exists; that
    checkpoint's batch."""
    latest = out / "quickstart" / "checkpoints" / "latest-rank0.pt"
    proc = subprocess.Popen(rafale_cmd(out, *overrides), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the run ended"
    return int(latest.resolve().name.split("-ba")[1].split("-")[0])
