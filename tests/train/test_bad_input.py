"""User mistakes at `python -m rafale run`: one `error:` line naming the file or key, exit code 2."""

from __future__ import annotations

import json
import os

from rafale.config import dump_config, load_config
from train_helpers import MICRO, QUICKSTART, run_rafale


def test_config_mistakes_are_one_line_exit_2(rafale_env, tmp_path):
    p = run_rafale(rafale_env, tmp_path, "optim.name=lion", "optim.warmup=2dur", check=False)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "optim.name: 'lion' is not one of adamw, decoupled_adamw, sgd" in lines[0]
    assert "optim.warmup: 2dur is longer than the run" in lines[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "quickstart").exists()


def test_unreadable_checkpoint_is_named_and_kept(rafale_env, tmp_path):
    run_dir = tmp_path / "quickstart"
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    cfg = load_config(QUICKSTART, [*MICRO, f"run.output_dir={tmp_path}"])
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    bad = ckpts / "ep0-ba4-rank0.pt"
    bad.write_bytes(b"not a checkpoint")
    os.symlink(bad.name, ckpts / "latest-rank0.pt")

    p = run_rafale(rafale_env, tmp_path, check=False)
    assert p.returncode == 2, p.stderr
    assert f"error: {bad}: cannot resume {run_dir}: the checkpoint is unreadable" in p.stderr
    assert "FORCE=1" in p.stderr
    assert bad.read_bytes() == b"not a checkpoint"
