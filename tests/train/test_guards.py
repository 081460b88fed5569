"""Nothing is lost when a run is stopped: real `python -m rafale` processes sent SIGINT / SIGTERM.

- during data preparation (DATA=1): the cache holds no entry or a complete one, never a partial one, and the
  next DATA=1 completes;
- during training: rafale saves a checkpoint at the next batch end, marks the run interrupted in
  manifest.json, prints the command that resumes it, and that command continues the run where it stopped
  (every step logged once, the loss carrying on from where it was);
- a loss that becomes NaN/Inf stops the run at that step, with one error line naming the step and the last
  good checkpoint, which is kept (exit 2: rafale/train/guards.py).

A process killed with SIGKILL is covered by tests/train/test_resume.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MICRO = """
run: {name: micro, seed: 1, max_duration: 40ba, eval_interval: 20ba, save_interval: 4ba, log_interval: 1ba,
      sample_tokens: 0, output_dir: runs}
optim: {lr: 3.0e-3, warmup: 2ba}
model: {config: pythia-14m, overrides: {n_layer: 2, n_embd: 64}}
data: {source: "synthetic:stories", max_documents: 400, tokenizer: {train: {vocab_size: 512}},
       block_size: 64, train_batch_size: 4, eval_batch_size: 8, eval_split: 0.05}
logging: {loggers: [file]}
"""


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def work(tmp_path, shared_cache):
    """A fresh directory for runs; the training tests share one data cache (the data test has its own)."""
    (tmp_path / "micro.yaml").write_text(MICRO)
    os.symlink(shared_cache, tmp_path / "shared-cache")
    return tmp_path


def env_for(work: Path, **extra) -> dict:
    cache = work / "cache" if (work / "cache").exists() or "DATA" in extra else work / "shared-cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": str(cache), "NO_COLOR": "1",
           "COLUMNS": "300", "OMP_NUM_THREADS": "1", **extra}
    for k in ("DATA", "DEBUG", "FORCE", "RAFALE_DEBUG"):
        if k not in extra:
            env.pop(k, None)
    return env


def start(args: list[str], work: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rafale", *args], cwd=work, env=env_for(work, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 120) -> tuple[int, str, str]:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the process ended before it could be interrupted: make its work longer"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def entries(cache: Path, kind: str = "data") -> list[Path]:
    root = cache / kind
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def temporaries(cache: Path) -> list[Path]:
    return sorted(cache.rglob(".*.tmp-*")) if cache.is_dir() else []


# ---- data preparation ----------------------------------------------------------------------------------
BIG = ["run", "-c", "micro.yaml", "data.max_documents=12000", "data.tokenizer.train.vocab_size=300"]


def test_interrupted_data_preparation_leaves_the_cache_consistent(work):
    cache = work / "cache"
    # SIGINT while the tokenizer trains, SIGTERM while the data is tokenized: nothing partial is left
    code, _, err = signal_when(start(BIG, work, DATA="1"), lambda: temporaries(cache / "tokenizers"), signal.SIGINT)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert entries(cache, "tokenizers") == [] and entries(cache) == [] and temporaries(cache) == []

    code, _, err = signal_when(start(BIG, work, DATA="1"), lambda: temporaries(cache / "data"), signal.SIGTERM)
    assert code == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert entries(cache) == [] and temporaries(cache) == []
    assert len(entries(cache, "tokenizers")) == 1  # finished before the signal: complete, kept, reused

    done = subprocess.run([sys.executable, "-m", "rafale", *BIG], cwd=work, env=env_for(work, DATA="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "prepared" in done.stdout
    [entry] = entries(cache)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["splits"]["train"]["blocks"] > 0
    assert (entry / "train.bin").stat().st_size == meta["splits"]["train"]["blocks"] * 64 * 2


# ---- training ----------------------------------------------------------------------------------------------
def resume_args(out: str) -> list[str]:
    [line] = [l for l in out.splitlines() if l.startswith("resume with: ")]
    args = shlex.split(line[len("resume with: "):])
    assert args[0] == "rafale"
    return args[1:]


def steps_logged(run_dir: Path) -> list[int]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l["step"] for l in lines if "train/loss" in l]


def losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {l["step"]: l["train/loss"] for l in lines if "train/loss" in l}


def test_interrupted_training_saves_and_resumes(work):
    run_dir = work / "runs" / "micro"
    ckpts = run_dir / "checkpoints"
    args = ["run", "-c", "micro.yaml", "run.max_duration=40ba"]

    # SIGINT just after the first interval checkpoint: a checkpoint of the step it stopped at is saved
    code, out, err = signal_when(start(args, work), lambda: (ckpts / "ep0-ba4-rank0.pt").exists(), signal.SIGINT)
    assert code == 130, out + err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stopped = manifest["interrupted_at_step"]
    assert manifest["status"] == "interrupted" and 4 <= stopped < 40
    latest = (ckpts / "latest-rank0.pt").resolve()
    assert latest.name == f"ep0-ba{stopped}-rank0.pt" and zipfile.ZipFile(latest).namelist()
    assert f"interrupted at step {stopped}; saved checkpoint {latest}" in out
    assert steps_logged(run_dir) == list(range(1, stopped + 1))
    assert not list(ckpts.glob("*.tmp-*"))

    # the printed command resumes it; SIGTERM at its next interval checkpoint stops it the same way
    again = resume_args(out)
    assert again == args
    nxt = (stopped // 4 + 1) * 4
    code, out, err = signal_when(start(again, work), lambda: (ckpts / f"ep0-ba{nxt}-rank0.pt").exists(),
                                 signal.SIGTERM)
    assert code == 143, out + err
    assert f"from checkpoint ep0-ba{stopped}-rank0.pt" in out
    stopped2 = json.loads((run_dir / "manifest.json").read_text())["interrupted_at_step"]
    assert stopped2 >= nxt

    # and a last run finishes it: every step logged once, the loss going on from where it was
    done = subprocess.run([sys.executable, "-m", "rafale", *resume_args(out)], cwd=work, env=env_for(work),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from checkpoint ep0-ba{stopped2}-rank0.pt" in done.stdout
    assert steps_logged(run_dir) == list(range(1, 41))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"
    ls = losses(run_dir)
    for at in (stopped, stopped2):  # resumed with the trained weights and optimizer, not from the start
        assert ls[at + 1] < ls[1] - 0.5 * (ls[1] - ls[at]), (at, ls)
    assert ls[40] < ls[stopped2] < ls[stopped] < ls[1]


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(work):
    # plain SGD without clipping at an absurd learning rate: the weights overflow within a few steps
    args = ["run", "-c", "micro.yaml", "run.save_interval=2ba", "optim.name=sgd", "optim.lr=1e5",
            "optim.clip_norm=0", "optim.schedule=linear-warmup", "optim.warmup=6ba"]
    p = subprocess.run([sys.executable, "-m", "rafale", *args], cwd=work, env=env_for(work), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    [line] = [l for l in p.stderr.splitlines() if l.strip()]
    assert "Traceback" not in p.stderr
    ckpts = work / "runs" / "micro" / "checkpoints"
    manifest = json.loads((work / "runs" / "micro" / "manifest.json").read_text())
    step = manifest["diverged_at_step"]
    assert manifest["status"] == "diverged" and step > 1
    good = (ckpts / "latest-rank0.pt").resolve()
    assert step - 2 <= int(good.name.split("-ba")[1].split("-")[0]) < step
    assert line.startswith("error: micro.yaml: optim.lr: ") and f"at step {step};" in line
    assert f"the last good checkpoint {good} is kept" in line and "lower optim.lr (now 100000)" in line
    assert not (ckpts / f"ep0-ba{step}-rank0.pt").exists()  # the bad step was never saved
    # the kept checkpoint is whole and finite, and loads without unpickling arbitrary objects
    import torch

    from rafale.train import checkpoints

    with torch.serialization.safe_globals(checkpoints.safe_globals()):
        state = torch.load(good, weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["state"]["model"].values())


def test_a_checkpoint_write_cut_short_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    """A full disk (or a kill) while Composer writes a checkpoint: the name only ever holds a whole file."""
    import errno

    import torch
    from composer.utils import checkpoint as ck

    from rafale.train import checkpoints

    checkpoints.harden_composer()
    target = tmp_path / "ep0-ba8-rank0.pt"

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ck._write_checkpoint_file({"x": 1}, str(target))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    ck._write_checkpoint_file({"x": torch.ones(2)}, str(target))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert torch.load(target, weights_only=True)["x"].sum() == 2
