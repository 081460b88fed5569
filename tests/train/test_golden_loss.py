"""Four training steps of a micro config give the stored losses. A change to the model, the data pipeline,
the optimizer or the training loop that moves the numbers shows here, even when every other test passes.

When a change is meant to move them, regenerate the stored values and commit them with the change:

    python tests/train/test_golden_loss.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ROOT, run_rafale, train_losses  # noqa: E402

GOLDEN = Path(__file__).with_name("golden_losses.json")
# fp32 eager, whatever run.precision auto and run.compile auto would choose on this machine
ARGS = ("run.name=golden", "run.seed=7", "run.max_duration=4ba", "run.eval_interval=0ba", "run.precision=fp32",
        "run.compile=false")


def golden_losses(env: dict, out: Path) -> dict[int, float]:
    run_rafale(env, out, *ARGS)
    return train_losses(out / "golden")


def test_four_steps_give_the_stored_losses(rafale_env, tmp_path):
    stored = {int(step): loss for step, loss in json.loads(GOLDEN.read_text())["losses"].items()}
    got = golden_losses(rafale_env, tmp_path / "runs")
    assert sorted(got) == sorted(stored) == [1, 2, 3, 4]
    for step, loss in stored.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), (step, got)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": f"{tmp}/cache", "OMP_NUM_THREADS": "1"}
        env.pop("FORCE", None)
        losses = golden_losses(env, Path(tmp) / "runs")
    GOLDEN.write_text(json.dumps({"command": "python tests/train/test_golden_loss.py", "args": ARGS,
                                  "losses": losses}, indent=2) + "\n")
    print(f"wrote {GOLDEN}: {losses}")
