"""One registry and one loading path for every family: from_pretrained, resolve_model_config, hub ids.

Checkpoints are tiny random transformers models saved to tmp dirs; nothing is downloaded.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from rafale.errors import ModelError
from rafale.models import (Decoder, Encoder, EncoderForMaskedLM, EncoderForSequenceClassification, export_hf,
                           export_model, from_pretrained, get_config, load_pretrained, model_from_config,
                           resolve_model_config)
from rafale.models.checkpoint import checkpoint_name, locate

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


# ---- bad input through from_pretrained, for both families ----

@pytest.fixture(params=["neox", "bert-mlm"])
def ckpt_copy(request, ckpts, tmp_path):
    src = ckpts[request.param][1]
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_dir_without_config_lists_what_is_there(ckpt_copy):
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(ModelError, match=r"no config.json \(found: .*model.safetensors\)"):
        from_pretrained(ckpt_copy)


def test_dir_without_weights_lists_what_is_there(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model.safetensors or model.safetensors.index.json \(found: config.json"):
        from_pretrained(ckpt_copy)


def test_truncated_safetensors_names_the_file(ckpt_copy):
    data = (ckpt_copy / "model.safetensors").read_bytes()
    (ckpt_copy / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(ckpt_copy)


def test_wrong_shape_names_the_tensor_and_both_shapes(ckpt_copy):
    tensors = load_file(ckpt_copy / "model.safetensors")
    name = next(k for k in tensors if k.endswith("layers.1.mlp.dense_4h_to_h.weight")
                or k.endswith("layer.1.output.dense.weight"))
    tensors[name] = torch.zeros(32, 48)
    save_file(tensors, ckpt_copy / "model.safetensors")
    with pytest.raises(ModelError, match=rf"{name}.* \(32, 48\).* \(32, 64\)"):
        from_pretrained(ckpt_copy)


def test_unknown_family_is_named(ckpt_copy):
    hf = json.loads((ckpt_copy / "config.json").read_text())
    (ckpt_copy / "config.json").write_text(json.dumps({**hf, "model_type": "t5"}))
    with pytest.raises(ModelError, match="model_type 't5' is not a family rafale has a model for; expected one of "
                                         "bert, gpt_neox, llama, qwen2, roberta"):
        from_pretrained(ckpt_copy)


# ---- model.weights forms ----

def test_run_dir_and_its_final(tmp_path):
    model = Decoder(get_config("pythia-tiny", n_layer=1, vocab_size=VOCAB))
    export_hf(model, tmp_path / "run" / "final")
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
