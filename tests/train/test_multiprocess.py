"""Two processes with DDP (gloo on CPU), started by torchrun, against one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import MICRO, QUICKSTART, run_rafale

# fp32: two half batches then an all-reduce equal one whole batch to float rounding (bf16 rounds each half)
SHORT = ["run.max_duration=6ba", "run.eval_interval=0ba", "run.save_interval=3ba", "run.precision=fp32"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(rafale_env, tmp_path):
    env = {**rafale_env, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    run_rafale(env, one, *SHORT)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rafale", "run",
           "-c", str(QUICKSTART), *MICRO, f"run.output_dir={two}", *SHORT]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr

    assert p.stdout.count("run summary") == 1  # only rank 0 prints
    manifest = json.loads((two / "quickstart" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["hardware"]["processes"] == 2
    assert sorted(f.name for f in (two / "quickstart" / "checkpoints").iterdir()) == \
        ["ep0-ba3-rank0.pt", "ep0-ba6-rank0.pt", "latest-rank0.pt"]  # no rank-1 files in the run dir
    # each step counted the global batch (4 blocks x 64 tokens), split 2 + 2 over the processes
    steps = [json.loads(l) for l in (two / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    assert [s["tokens"] for s in steps if "train/loss" in s] == [256 * i for i in range(1, 7)]
    # gradients averaged over both halves give the same weights as one process on the whole batch;
    # a process that trained on the wrong half, or alone, would not. Summation order differs, and Adam
    # turns a tiny gradient's rounding into up to a sizeable part of one step: atol is a tenth of lr 2e-3.
    w1 = load_file(one / "quickstart" / "final" / "model.safetensors")
    w2 = load_file(two / "quickstart" / "final" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=2e-4, msg=k)
