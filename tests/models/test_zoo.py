"""One registry and one loading path for every family: from_pretrained, resolve_model_config, hub ids.

Checkpoints are tiny random transformers models saved to tmp dirs; nothing is downloaded.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from rafale.errors import ModelError
from rafale.models import (Decoder, Encoder, EncoderForMaskedLM, EncoderForSequenceClassification, export_model,
                           from_pretrained, get_config, load_pretrained, model_from_config, resolve_model_config)
from rafale.models.checkpoint import checkpoint_name, listing, locate

transformers = pytest.importorskip("transformers")

VOCAB = 128
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
NEOX = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def save(class_name, model_type, sizes, path):
    config = transformers.AutoConfig.for_model(model_type, **sizes)
    model = getattr(transformers, class_name)(config).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """{kind: (HF model, dir)} for a decoder, an MLM encoder and a bare encoder backbone."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpts")
    specs = {"neox": ("GPTNeoXForCausalLM", "gpt_neox", NEOX), "bert-mlm": ("BertForMaskedLM", "bert", BERT),
             "bert-backbone": ("BertModel", "bert", BERT)}
    return {kind: (save(*spec, root / kind), root / kind) for kind, spec in specs.items()}


def ids_and_mask():
    ids = torch.randint(1, VOCAB, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


# ---- from_pretrained dispatches on model_type ----

@torch.no_grad()
@pytest.mark.parametrize("kind, rafale_class", [("neox", Decoder), ("bert-mlm", EncoderForMaskedLM),
                                                ("bert-backbone", Encoder)])
def test_from_pretrained_any_family_matches_transformers(ckpts, kind, rafale_class):
    hf_model, path = ckpts[kind]
    model = from_pretrained(path)
    assert type(model) is rafale_class and not model.training
    ids, mask = ids_and_mask()
    ours = model(ids, attention_mask=mask)
    out = hf_model(ids, attention_mask=mask)
    theirs = out.last_hidden_state if kind == "bert-backbone" else out.logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


def test_fresh_classification_head_is_reported(ckpts):
    _, path = ckpts["bert-backbone"]
    model, report = load_pretrained(path, num_labels=5)
    assert type(model) is EncoderForSequenceClassification and model.classifier.out_features == 5
    assert report.head == "classification"
    assert report.initialized == ["classifier.weight", "classifier.bias"]  # BertModel's pooler is kept
    with pytest.warns(UserWarning, match="no classification head; initialised fresh: classifier.weight"):
        from_pretrained(path, head="classification")


@pytest.mark.parametrize("name, head, model_class", [
    ("pythia-tiny", "mlm", Decoder),  # a decoder ignores head
    ("bert-tiny", "mlm", EncoderForMaskedLM),
    ("bert-tiny", "classification", EncoderForSequenceClassification),
])
def test_model_from_config_and_export_model_round_trip(name, head, model_class, tmp_path):
    model = model_from_config(get_config(name, vocab_size=VOCAB, n_layer=1), head=head)
    assert type(model) is model_class
    export_model(model, tmp_path)
    assert type(from_pretrained(tmp_path)) is model_class


def test_decoder_has_no_other_head(ckpts):
    with pytest.raises(ModelError, match="a decoder checkpoint has only its language-model head, not 'mlm'"):
        from_pretrained(ckpts["neox"][1], head="mlm")


# ---- bad checkpoints through from_pretrained, for both families: one message shape, naming the path ----

# Each function below spoils a copy of a good checkpoint and returns (what to load, the error it must give).
# `t` is a layer-1 tensor of shape (32, 64) in the family's names, "{}" for the layer number.
TENSOR = {"neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h.weight",
          "bert-mlm": "bert.encoder.layer.{}.output.dense.weight"}


def edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def found(path):
    return re.escape(listing(path))


def no_dir(path, t):
    return path / "nope", "nope: no such directory; expected an HF-layout model dir"


def no_config(path, t):
    (path / "config.json").unlink()
    return path, rf"no config.json \({found(path)}\); expected an HF-layout model dir"


def only_a_vocab(path, t):
    for f in path.iterdir():
        f.unlink()
    (path / "vocab.txt").write_text("x")
    return path, r"no config.json \(found: vocab.txt\)"


def no_weights(path, t):
    (path / "model.safetensors").rename(path / "model.safetensors.bak")
    return path, r"no model.safetensors or model.safetensors.index.json \(found: config.json.*model.safetensors.bak"


def pickle_only(path, t):
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    return path, (rf"only pickle weights \(\*.bin/\*.pt\), no safetensors \({found(path)}\); "
                  "rafale reads safetensors only")


def truncated(path, t):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])
    return path, "model.safetensors: not a readable safetensors file"


def not_safetensors(path, t):
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    return path, "model.safetensors: not a readable safetensors file"


def shard_missing(path, t):
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    shards = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(shards))
    return path, "model.safetensors.index.json: lists shard 'model-00002-of-00002.safetensors', which is not in"


def missing_and_unknown_tensor(path, t):
    unknown = t.format(0).rsplit(".", 2)[0] + ".lora_A.weight"
    edit_tensors(path, lambda d: (d.pop(t.format(1)), d.update({unknown: torch.zeros(2)})))
    return path, (rf"{re.escape(str(path))}: weights do not fit its config.json: 1 tensor missing "
                  rf"\({re.escape(t.format(1))}\); 1 unexpected tensor \({re.escape(unknown)}\)")


def layer_beyond_config(path, t):
    edit_tensors(path, lambda d: d.update({t.format(2): torch.zeros(32, 64)}))
    return path, rf"1 unexpected tensor \({re.escape(t.format(2))}\)"


def wrong_shape(path, t):
    edit_tensors(path, lambda d: d.update({t.format(1): torch.zeros(32, 48)}))
    return path, rf"{re.escape(t.format(1))} has shape \(32, 48\), the config needs \(32, 64\)"


def integer_tensor(path, t):
    edit_tensors(path, lambda d: d.update({t.format(1): torch.zeros(32, 64, dtype=torch.int8)}))
    return path, rf"{re.escape(t.format(1))} has dtype torch.int8; rafale loads floating-point weights only"


def unknown_family(path, t):
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf, "model_type": "t5"}))
    return path, ("config.json: model_type 't5' is not a family rafale has a model for; expected one of "
                  "bert, gpt_neox, llama, qwen2, rafale_retnet, roberta")


BAD_CHECKPOINTS = [no_dir, no_config, only_a_vocab, no_weights, pickle_only, truncated, not_safetensors,
                   shard_missing, missing_and_unknown_tensor, layer_beyond_config, wrong_shape, integer_tensor,
                   unknown_family]


@pytest.mark.parametrize("spoil", BAD_CHECKPOINTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", list(TENSOR))
def test_bad_checkpoint_is_named(kind, spoil, ckpts, tmp_path):
    for f in ckpts[kind][1].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    path, match = spoil(tmp_path, TENSOR[kind])
    with pytest.raises(ModelError, match=match):
        from_pretrained(path)


# ---- model.weights forms ----

def test_run_dir_and_its_final(tmp_path):
    model = Decoder(get_config("pythia-tiny", n_layer=1, vocab_size=VOCAB))
    export_model(model, tmp_path / "run" / "final")
    assert locate(tmp_path / "run") == tmp_path / "run" / "final"
    assert locate(tmp_path / "run" / "final") == tmp_path / "run" / "final"
    assert from_pretrained(tmp_path / "run").config.name == "run"
    assert checkpoint_name(tmp_path / "hub" / "models--EleutherAI--pythia-14m" / "snapshots" / "abc") == \
        "EleutherAI/pythia-14m"


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (tmp_path / "nope", "nope", "./runs/nope", "runs/a/nope"):  # only "org/name" is a hub id
        with pytest.raises(ModelError, match="nope: no such directory; .* or a hub id like EleutherAI/pythia-14m"):
            from_pretrained(path)


def test_hub_id_offline_fails_fast_and_says_what_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    code = ("from rafale.models.checkpoint import checkpoint_name, locate\n"
            "from rafale.errors import ModelError\n"
            "try:\n    locate('EleutherAI/pythia-14m')\nexcept ModelError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "'EleutherAI/pythia-14m' is not a local directory and the hub cannot be reached" in out.stdout
    assert "`hf download EleutherAI/pythia-14m --local-dir DIR`) and set model.weights" in out.stdout


# ---- model.config: from_weights, and a registry entry checked against the checkpoint ----

def test_from_weights_takes_the_checkpoint_shapes(ckpts):
    config = resolve_model_config("from_weights", ckpts["neox"][1], dropout=0.1)
    assert (config.n_layer, config.n_embd, config.vocab_size, config.dropout) == (2, 32, VOCAB, 0.1)
    model = from_pretrained(ckpts["neox"][1], config=config)
    assert model.config.dropout == 0.1


def test_registry_entry_that_disagrees_with_the_checkpoint_lists_the_fields(ckpts):
    with pytest.raises(ModelError, match=r"model.config 'pythia-14m' does not match .*neox/config.json "
                                         r"\(entry vs checkpoint: vocab_size 50304 vs 128, n_layer 6 vs 2, "
                                         r"n_embd 128 vs 32, intermediate_size 512 vs 64, max_seq_len 2048 vs 64\); "
                                         r"set model.config: from_weights"):
        resolve_model_config("pythia-14m", ckpts["neox"][1])
    with pytest.raises(ModelError, match="model.config 'pythia-14m' is a decoder but .* holds an encoder"):
        resolve_model_config("pythia-14m", ckpts["bert-mlm"][1])


def test_registry_entry_that_matches_the_checkpoint(ckpts):
    config = resolve_model_config("bert-tiny", ckpts["bert-mlm"][1], vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32,
                                  intermediate_size=64, max_seq_len=64, num_labels=3)
    assert config.name == "bert-tiny" and config.num_labels == 3


def test_from_weights_needs_weights():
    with pytest.raises(ModelError, match="model.config: from_weights needs model.weights"):
        resolve_model_config("from_weights", None)


def test_models_command_lists_both_families():
    from typer.testing import CliRunner

    from rafale.cli import app

    result = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.count("│") >= 3}
    assert "gpt_neox" in lines["pythia-14m"] and "14,067,712" in lines["pythia-14m"]
    assert "bert" in lines["bert-tiny"] and "4,416,698" in lines["bert-tiny"]
    assert "roberta" in lines["roberta-base"]
