"""Every pipeline and every way to get a model, trained end to end from a config through `python -m rafale run`.

Each run is a few seconds on a tiny model and tiny data made here (no hub): a BERT backbone checkpoint
fine-tuned to classify, masked-LM pretraining from scratch, packed SFT, a decoder started from a local
Pythia-layout checkpoint (`model.config: from_weights`), and a transformers GPT-NeoX through `model.hf`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rafale.config import config_from_dict
from rafale.errors import ConfigError, ModelError
from rafale.models import Decoder, export_model, from_pretrained, get_config, model_from_config
from rafale.train.composer_lm import ComposerLM
from rafale.train.plan import model_config
from train_helpers import MICRO, ROOT, run_rafale, train_losses

CONFIGS = ROOT / "configs"
POSITIVE = "good great fine nice lovely happy bright warm kind calm".split()
NEGATIVE = "bad awful poor sad dark cold cruel grim ugly harsh".split()


def rafale(env: dict, config: str, out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rafale", "run", "-c", str(CONFIGS / config), f"run.output_dir={out}",
           "run.sample_tokens=0", "run.log_interval=1ba", *overrides]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"rafale run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["summary"]


def eval_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval/loss" in r]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_data(env: dict, run_dir: Path, source, out: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "rafale", "eval", str(run_dir), "--data", str(source), "-o", str(out),
                        *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return {k: v for k, v in json.loads(out.read_text())["data"].items() if k not in ("tokens_per_second", "seconds")}


# ---- classification: a BERT backbone checkpoint gets a fresh head and learns two separable classes -------
def test_classification_from_a_bert_backbone_checkpoint(rafale_env, tmp_path):
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choices(words, k=6)), "label": label}
            for _ in range(160) for words, label in ((POSITIVE, "pos"), (NEGATIVE, "neg"))]
    rng.shuffle(rows)
    source = write_jsonl(tmp_path / "reviews.jsonl", rows)
    torch.manual_seed(0)
    backbone = model_from_config(get_config("bert-tiny", vocab_size=320, n_layer=1, max_seq_len=64), head="backbone")
    export_model(backbone, tmp_path / "bert")

    p = rafale(rafale_env, "bert-classification.yaml", tmp_path / "runs", f"data.source={source}",
               "model.config=from_weights", f"model.weights={tmp_path / 'bert'}", "data.tokenizer.train.vocab_size=300",
               "data.block_size=16", "data.train_batch_size=16", "run.max_duration=4ep", "run.eval_interval=2ep",
               "optim.lr=2e-3", "optim.warmup=0ba")
    assert "has no classification head; initialised fresh" in p.stdout
    run_dir = tmp_path / "runs" / "bert-classification"
    assert summary(run_dir)["eval_accuracy"] > 0.9  # chance is 0.5
    assert all("eval/accuracy" in r for r in eval_records(run_dir))
    model = from_pretrained(run_dir / "final")
    assert type(model).__name__ == "EncoderForSequenceClassification" and model.config.num_labels == 2
    assert json.loads((run_dir / "final" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    # rafale eval scores the trained classifier on labelled data: accuracy and macro-F1
    scores = eval_data(rafale_env, run_dir, source, tmp_path / "eval.json")
    assert scores["examples"] == len(rows) and scores["accuracy"] > 0.9 and scores["macro_f1"] > 0.9


# ---- mlm: BERT from scratch on the embedded stories ----------------------------------------------------------
def test_mlm_from_scratch_lowers_the_loss(rafale_env, tmp_path):
    rafale(rafale_env, "bert-mlm.yaml", tmp_path / "runs", "data.source=synthetic:stories", "data.max_documents=300",
           "data.tokenizer.train.vocab_size=512", "model.overrides.n_layer=1", "data.block_size=32",
           "data.train_batch_size=16", "run.max_duration=40ba", "run.eval_interval=40ba", "optim.lr=2e-3")
    run_dir = tmp_path / "runs" / "bert-mlm"
    losses = train_losses(run_dir)
    first, last = sum(list(losses.values())[:5]) / 5, sum(list(losses.values())[-5:]) / 5
    assert last < first - 0.5  # from ln(512) = 6.2 at init; masked tokens are hard, 40 steps learn the frequent ones
    s = summary(run_dir)
    assert s["eval_loss"] is not None and s["eval_masked_accuracy"] > 0 and s["unigram_eval_loss"] is None
    assert type(from_pretrained(run_dir / "final")).__name__ == "EncoderForMaskedLM"
    # rafale eval: masked-token accuracy and loss, on the same masked positions every time (fixed mask seed)
    first = eval_data(rafale_env, run_dir, "synthetic:stories", tmp_path / "a.json", "--block-size", "32",
                      "--limit-docs", "40")
    again = eval_data(rafale_env, run_dir, "synthetic:stories", tmp_path / "b.json", "--block-size", "32",
                      "--limit-docs", "40")
    assert first == again and first["masked_tokens"] > 0 and 0 < first["masked_accuracy"] <= 1
    assert first["masked_loss"] < 6.2  # better than uniform over the 512-token vocabulary


# ---- sft: loss on the responses only; packed examples do not see each other ---------------------------------
def _tiny_decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    return Decoder(get_config("pythia-14m", **{"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64, **kw}))


def test_sft_loss_is_the_cross_entropy_over_response_tokens_only():
    model = _tiny_decoder()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, 10:] = -100  # padding
    lm = ComposerLM(model)
    batch = {"input_ids": ids, "labels": labels}
    logits = model(ids)[:, :-1]  # position t predicts token t + 1
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(lm.loss(lm(batch), batch), expected)
    out = lm.eval_forward(batch)
    assert out["tokens"] == (labels[:, 1:] != -100).sum()


def test_packed_examples_attend_only_inside_themselves():
    model = _tiny_decoder().eval()
    a, b = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 7))
    packed = torch.cat([a, b, torch.zeros(1, 4, dtype=torch.long)], dim=1)  # two examples, then padding
    segments = torch.tensor([[1] * 5 + [2] * 7 + [0] * 4])
    with torch.no_grad():
        h = model.hidden_states(packed, segment_ids=segments)
        torch.testing.assert_close(h[:, :5], model.hidden_states(a))
        torch.testing.assert_close(h[:, 5:12], model.hidden_states(b), atol=1e-5, rtol=1e-4)  # rope: offset-free
        assert torch.isfinite(h).all()


def test_packed_sft_run(rafale_env, tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": f"Q: {' '.join(rng.choices(POSITIVE, k=3))}?", "generation": " A: yes."} for _ in range(200)]
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    rafale(rafale_env, "sft-jsonl.yaml", tmp_path / "runs", f"data.source={source}", "data.packing=true",
           "model.config=pythia-14m", "model.weights=null", "model.overrides.n_layer=1", "data.tokenizer.path=null",
           "data.tokenizer.train.vocab_size=300", "data.block_size=64", "data.train_batch_size=8",
           "run.max_duration=30ba", "run.eval_interval=30ba", "optim.lr=3e-3")
    s = summary(tmp_path / "runs" / "sft")
    assert s["eval_loss"] < 1.0  # the response is always " A: yes." (+ EOS): near zero once learned


# ---- decoders from weights: a local Pythia-layout checkpoint, and a transformers model through model.hf ------
def test_from_weights_starts_from_a_local_pythia_checkpoint(rafale_env, tmp_path):
    ckpt = tmp_path / "pythia-tiny"
    export_model(_tiny_decoder(vocab_size=4096, max_seq_len=128), ckpt)
    run_rafale(rafale_env, tmp_path / "runs", "model.config=from_weights", f"model.weights={ckpt}",
               "model.overrides={}", "run.max_duration=4ba", "run.name=ft")
    final = from_pretrained(tmp_path / "runs" / "ft" / "final")
    assert (final.config.n_embd, final.config.n_layer) == (32, 2)  # the checkpoint's shapes, not pythia-14m's



def test_preflight_refuses_a_registry_entry_that_does_not_match_the_checkpoint(tmp_path):
    ckpt = export_model(_tiny_decoder(), tmp_path / "pythia-tiny")
    with pytest.raises(ModelError, match=r"model.config 'pythia-14m' does not match .*n_embd 128 vs 32.*"
                                         r"from_weights"):
        model_config(config_from_dict({"model": {"weights": str(ckpt)}}, source="x.yaml"))
    model_config(config_from_dict({"model": {"config": "from_weights", "weights": str(ckpt)}}, source="x.yaml"))


def test_model_hf_trains_a_transformers_gpt_neox_and_generates(rafale_env, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPTNeoXConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox", safe_serialization=True)
    run_rafale(rafale_env, tmp_path / "runs", f"model.hf={tmp_path / 'neox'}", "model.overrides={}",
               "run.max_duration=4ba", "run.name=hf")
    run_dir = tmp_path / "runs" / "hf"
    assert (run_dir / "final" / "model.safetensors").is_file() and eval_records(run_dir)
    g = subprocess.run([sys.executable, "-m", "rafale", "generate", str(run_dir), "-p", "Once upon", "-n", "4"],
                       env=rafale_env, capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("Once upon")


def test_model_hf_refuses_an_encoder_pipeline(tmp_path):
    cfg = config_from_dict({"model": {"hf": str(tmp_path)}, "data": {"pipeline": "mlm"}}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"^data.pipeline: 'mlm' with model.hf; .*causal_lm, sft"):
        model_config(cfg)
    with pytest.raises(ConfigError, match=r"model.weights: .* with model.hf"):
        config_from_dict({"model": {"hf": "x", "weights": "y"}})
