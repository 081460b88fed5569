"""`rafale export`: a run dir becomes an HF-layout dir that transformers' Auto classes load, atomically.

The run dir is built without training: a tiny Decoder exported into run/final/ and a BPE tokenizer
trained on a few sentences. The CLI is run as a real subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer
from rafale.errors import ModelError
from rafale.models import Decoder, EncoderForMaskedLM, export_model, get_config
from rafale.models.export import export_run

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
SENTENCES = ["Once upon a time there was a small fox.", "The fox liked to run in the green forest.",
             "One day the fox met a little bird.", "They became friends and played all day."] * 4


@pytest.fixture
def run_dir(tmp_path):
    tok = train_tokenizer(SENTENCES, "bpe", vocab_size=300, min_frequency=1, special_tokens=DECODER_SPECIALS)
    model = Decoder(get_config("pythia-tiny", n_layer=1, n_embd=32, n_head=2, intermediate_size=64,
                               vocab_size=tok.get_vocab_size()))
    final = export_model(model, tmp_path / "run" / "final")
    tok.save(str(final / "tokenizer.json"))
    return tmp_path / "run"


def rafale_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rafale", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_export_cli_writes_a_dir_transformers_loads(run_dir, tmp_path):
    out = tmp_path / "hf"
    result = rafale_cli("export", run_dir, out)
    assert result.returncode == 0, result.stderr
    assert "verified with transformers: GPTNeoXForCausalLM logits match on 8 tokens" in result.stdout
    assert "AutoTokenizer (" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert not list(tmp_path.glob(".hf.*"))  # no temp dir left behind

    again = rafale_cli("export", run_dir, out)  # a user mistake: one line, exit 2, no traceback
    assert again.returncode == 2
    assert again.stderr.startswith("error: ") and "Traceback" not in again.stderr
    assert f"{out}: not empty (found: config.json, model.safetensors" in again.stderr.replace("\n", "")
    assert "pass --force to replace it" in again.stderr.replace("\n", "")


def test_force_replaces_and_no_verify_says_so(run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ModelError, match="hf: not empty .found: stale.txt.; choose another directory or pass --force"):
        export_run(run_dir, out)
    result = export_run(run_dir / "final", out, force=True, verify=False)
    assert result.verified is None and result.not_verified_why == "--no-verify"
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_encoder_export_is_verified_with_its_auto_class(tmp_path):
    config = get_config("bert-tiny", vocab_size=64, n_layer=1, n_embd=32, n_head=2, intermediate_size=64,
                        max_seq_len=32)
    export_model(EncoderForMaskedLM(config), tmp_path / "ckpt")
    result = export_run(tmp_path / "ckpt", tmp_path / "hf")
    assert result.family == "bert" and result.head == "mlm"
    assert result.verified.startswith("BertForMaskedLM logits match on 8 tokens")


def test_corrupt_weights_through_the_cli_is_one_line(run_dir, tmp_path):
    weights = run_dir / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = rafale_cli("export", run_dir, tmp_path / "hf", "--no-verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "final/model.safetensors: not a readable safetensors file" in result.stderr.replace("\n", "")
    assert not (tmp_path / "hf").exists()


def test_bad_source_is_named(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "notes.txt").write_text("x")
    with pytest.raises(ModelError, match=r"final: no config.json \(found: notes.txt\)"):
        export_run(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
