"""One run, resolved once: the plan, its pre-flight checks over every shipped config, and the run-dir lock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rafale.config import load_config
from rafale.files import is_hub_id
from rafale.models import Decoder, DecoderConfig, export_model, get_config
from rafale.train.rundir import LOCK, run_lock
from train_helpers import MICRO, QUICKSTART, ROOT, rafale_cmd, run_rafale

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_a_run_resolves_its_model_config_device_and_fingerprint_once(tmp_path, monkeypatch, restore_signals):
    from rafale.data import sources
    from rafale.train import plan, run

    counts = {"model config": 0, "device": 0, "fingerprint": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(plan, "resolve_model_config", counted("model config", plan.resolve_model_config))
    monkeypatch.setattr(plan, "resolve_device", counted("device", plan.resolve_device))
    monkeypatch.setattr(sources, "fingerprint", counted("fingerprint", sources.fingerprint))
    monkeypatch.setenv("RAFALE_CACHE", str(tmp_path / "cache"))
    cfg = load_config(QUICKSTART, [*MICRO, f"run.output_dir={tmp_path / 'runs'}", "run.max_duration=2ba",
                                   "run.eval_interval=0ba", "data.fingerprint=content"])
    assert run.run(cfg) == 0
    assert counts == {"model config": 1, "device": 1, "fingerprint": 1}
    assert json.loads((tmp_path / "runs" / "quickstart" / "manifest.json").read_text())["status"] == "finished"


def _tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return export_model(Decoder(get_config("pythia-14m", n_layer=2, n_embd=32, n_head=2, vocab_size=50304)), path)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_passes_the_model_preflight(path, tmp_path):
    """Model name, checkpoint, pipeline and block size of each shipped config fit together. A hub id in
    model.weights stands for a checkpoint of that layout: the tests use a local one."""
    from rafale.train.plan import PIPELINE_HEADS, model_config

    cfg = load_config(path)
    if cfg.model.weights is not None and is_hub_id(cfg.model.weights):
        cfg = load_config(path, [f"model.weights={_tiny_checkpoint(tmp_path / 'ckpt')}"])
    mc = model_config(cfg)
    assert mc.max_seq_len >= cfg.data.block_size
    assert (PIPELINE_HEADS[cfg.data.pipeline] == "lm") == isinstance(mc, DecoderConfig)


# ---- the run directory is owned by one process at a time --------------------------------------------------
def test_a_second_run_in_the_same_directory_is_refused(rafale_env, tmp_path):
    run_dir = tmp_path / "runs" / "twin"
    with run_lock(run_dir):
        holder = (run_dir / LOCK).read_text().strip()
        p = subprocess.run(rafale_cmd(tmp_path / "runs", "run.name=twin", "run.max_duration=2ba"), env=rafale_env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stdout + p.stderr
        [line] = [l for l in p.stderr.splitlines() if l.strip()]
        assert "another run is training in this directory" in line and holder in line
        assert "Traceback" not in p.stderr
        assert sorted(q.name for q in run_dir.iterdir()) == [LOCK]  # nothing written beside the holder's lock
    assert not run_dir.exists()  # the holder wrote nothing else: its lock and the empty directory are gone


def test_a_lock_left_by_a_dead_process_is_taken_over(rafale_env, tmp_path):
    run_dir = tmp_path / "runs" / "orphan"
    run_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / LOCK).write_text(f"pid {dead.stdout.strip()} on somewhere, since yesterday\n")
    p = run_rafale(rafale_env, tmp_path / "runs", "run.name=orphan", "run.max_duration=2ba", "run.eval_interval=0ba")
    assert f"taking over {run_dir / LOCK}, left by a run that is no longer running (pid {dead.stdout.strip()}" in p.stdout
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"
    assert not (run_dir / LOCK).exists()
