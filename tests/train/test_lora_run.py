"""LoRA runs end to end: SFT and classification through `python -m rafale run`, resume, a changed base
(refused by the plan), DEBUG=1 (in this process).

The base is a tiny random Pythia-layout decoder (or BERT backbone) exported here with its tokenizer; its
frozen weights are what every LoRA run must leave untouched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rafale.models import Decoder, export_model, from_pretrained, get_config, load_pretrained, model_from_config
from rafale.errors import RunStateError
from rafale.models.lora import load_adapter, lora_modules
from rafale.train.plan import make_plan
from train_helpers import ROOT, train_losses

WORDS = "red blue green fox bear owl tree river stone cloud".split()
SFT = ["run.output_dir={out}", "data.source={w}/sft.jsonl", "model.weights={w}/base",
       "data.tokenizer.path={w}/base/tokenizer.json", "data.block_size=32", "data.train_batch_size=8",
       "run.max_duration=16ba", "run.eval_interval=16ba", "run.save_interval=8ba", "run.log_interval=1ba",
       "optim.lr=1e-2", "run.sample_tokens=0", "model.lora={{rank: 8, alpha: 16, targets: [all]}}"]


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """A prompt/generation JSONL, its tokenizer, and a random decoder exported as the base."""
    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer

    w = tmp_path_factory.mktemp("lora")
    rng = random.Random(0)
    rows = [{"prompt": f"Q: {' '.join(rng.choices(WORDS, k=3))}?", "generation": " A: yes."} for _ in range(200)]
    (w / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer([r["prompt"] + r["generation"] for r in rows], "bpe", 300, 1, DECODER_SPECIALS)
    torch.manual_seed(0)
    export_model(Decoder(get_config("pythia-14m", n_layer=2, n_embd=32, n_head=2, vocab_size=320, max_seq_len=128,
                                    init_std=0.1)), w / "base")
    tok.save(str(w / "base" / "tokenizer.json"))
    return w


def rafale(env, w: Path, out: Path, *extra: str, config="sft-jsonl.yaml", check=True, debug=False):
    args = [a.format(w=w, out=out) for a in SFT] if config == "sft-jsonl.yaml" else [f"run.output_dir={out}"]
    cmd = [sys.executable, "-m", "rafale", "run", "-c", str(ROOT / "configs" / config), *args, *extra]
    p = subprocess.run(cmd, env={**env, **({"DEBUG": "1"} if debug else {})}, capture_output=True, text=True,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"rafale run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def checkpoint_state(path: Path) -> dict:
    from rafale.train.checkpoints import safe_globals

    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)["state"]


def stop_at(run_dir: Path, batch: int) -> None:
    """Leave the run as a kill after checkpoint `batch` would: later checkpoints and final/ gone."""
    ckpts = run_dir / "checkpoints"
    for p in ckpts.glob("ep*-ba*-rank0.pt"):
        if int(p.name.split("-ba")[1].split("-")[0]) > batch:
            p.unlink()
    (ckpts / "latest-rank0.pt").unlink()
    os.symlink(next(ckpts.glob(f"ep*-ba{batch}-rank0.pt")).name, ckpts / "latest-rank0.pt")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    shutil.rmtree(run_dir / "final")


def test_sft_lora_run_trains_the_adapter_only_and_resumes(rafale_env, w, tmp_path, monkeypatch):
    p = rafale(rafale_env, w, tmp_path)
    assert "LoRA rank 8 on 8 modules: 20,480 of 116,352 parameters trainable (17.60%)" in p.stdout
    run_dir = tmp_path / "sft"
    losses = train_losses(run_dir)
    assert losses[16] < losses[1] - 2  # the response " A: yes." from a random base: 6.4 -> 3

    # checkpoints: the adapter and its optimizer state, and the base's fingerprint
    state = checkpoint_state(run_dir / "checkpoints" / "latest-rank0.pt")
    assert len(state["model"]) == 16 and all(".lora_" in k for k in state["model"])
    assert len(state["optimizers"]["AdamW"]["state"]) == 16
    assert len(state["callbacks"]["LoraBase"]["fingerprint"]) == 64

    # final/: the merged model, and the adapter; merged = base + adapter, every other tensor bit-identical
    final = run_dir / "final"
    assert {p.name for p in (final / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    base, trained = load_file(w / "base" / "model.safetensors"), load_file(final / "model.safetensors")
    changed = sorted(k for k in base if not torch.equal(base[k], trained[k]))
    assert changed and all(("attention" in k or "mlp" in k) and k.endswith(".weight") for k in changed)
    merged = load_adapter(from_pretrained(w / "base"), final / "adapter")
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(final)(ids), merged.eval()(ids), rtol=0, atol=1e-5)

    # resume from the checkpoint at batch 8 (in this process: a quicker start), the same losses as the run
    # that went through
    stop_at(run_dir, 8)
    out = in_process(rafale_env, monkeypatch, config(w, tmp_path))
    assert "resuming" in out and "ep0-ba8-rank0.pt" in out
    resumed = train_losses(run_dir)  # this process may run other threads than the first: not bit for bit
    assert sorted(resumed) == sorted(losses)
    assert all(resumed[k] == pytest.approx(losses[k], rel=1e-5, abs=1e-6) for k in losses)

    # ...but not on a base whose weights changed since (the plan refuses before anything is written)
    stop_at(run_dir, 8)
    tensors = load_file(w / "base" / "model.safetensors")
    try:
        save_file({k: t + 1e-3 if k == "embed_out.weight" else t for k, t in tensors.items()},
                  w / "base" / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(RunStateError, match="is not the base this LoRA checkpoint was trained on"):
            make_plan(config(w, tmp_path), log=lambda *a: None)
    finally:
        save_file(tensors, w / "base" / "model.safetensors", metadata={"format": "pt"})


def config(w: Path, out: Path, *extra: str):
    from rafale.config import load_config

    return load_config(ROOT / "configs" / "sft-jsonl.yaml", [a.format(w=w, out=out) for a in SFT] + list(extra))


def in_process(env: dict, monkeypatch, cfg, debug=False) -> str:
    """rafale.train.run.run(cfg) here, with the subprocesses' cache; returns what it printed."""
    import io
    import signal

    from rich.console import Console

    from rafale.train.run import run

    monkeypatch.setenv("RAFALE_CACHE", env["RAFALE_CACHE"])
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out = io.StringIO()
    try:
        assert run(cfg, debug=debug, console=Console(file=out, width=200)) == 0, out.getvalue()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return out.getvalue()


def test_debug_overfits_one_batch_with_lora(rafale_env, w, tmp_path, monkeypatch):
    # a random base's frozen lm_head limits what adapters alone can fit: the head is trained fully too
    out = in_process(rafale_env, monkeypatch, config(w, tmp_path, "model.lora.modules_to_save=[head]"), debug=True)
    assert "PASS" in out and not (tmp_path / "sft").exists()


def test_classification_lora_with_a_fresh_head_and_no_merge(rafale_env, tmp_path):
    pos, neg = "good great fine nice lovely happy".split(), "bad awful poor sad dark cold".split()
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choices(words, k=6)), "label": label}
            for _ in range(120) for words, label in ((pos, "pos"), (neg, "neg"))]
    rng.shuffle(rows)
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    export_model(model_from_config(get_config("bert-tiny", vocab_size=320, n_layer=1, max_seq_len=64),
                                   head="backbone"), tmp_path / "bert")
    p = rafale(rafale_env, tmp_path, tmp_path / "runs", f"data.source={tmp_path / 'reviews.jsonl'}",
               "model.config=from_weights", f"model.weights={tmp_path / 'bert'}", "data.tokenizer.train.vocab_size=300",
               "data.tokenizer.train.type=bpe",  # deterministic, unlike wordpiece: the same run every time
               "data.block_size=16", "data.train_batch_size=16", "run.max_duration=3ep", "run.eval_interval=3ep",
               "optim.lr=5e-3", "optim.warmup=0ba", "model.lora={rank: 4, targets: [all], merge: false}",
               config="bert-classification.yaml")
    assert "parameters trainable" in p.stdout
    run_dir = tmp_path / "runs" / "bert-classification"
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["eval_accuracy"] > 0.9  # chance is 0.5
    final = run_dir / "final"
    assert not (final / "model.safetensors").exists() and (final / "adapter" / "adapter_model.safetensors").exists()
    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["bert.pooler.dense", "classifier"]
    model, _ = load_pretrained(run_dir)  # the base with the adapter merged in: the run's classifier
    assert type(model).__name__ == "EncoderForSequenceClassification" and model.config.num_labels == 2
    assert not lora_modules(model)
