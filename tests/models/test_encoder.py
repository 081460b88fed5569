"""BERT/RoBERTa: parity with transformers through the production loader, export, registry, bad input.

Each parity test builds a tiny random transformers model, saves it as safetensors in a tmp dir and loads
it with load_pretrained, so one test covers the model, the name map and the config translation together.
Nothing is downloaded.
"""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rafale.errors import ModelError
from rafale.models import build_model, export_model, load_pretrained
from rafale.models.encoder import Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification
from rafale.models.encoder_weights import BERT, HEAD_CLASSES, encoder_config_from_hf
from rafale.models.registry import encoders, get_config
from rafale.models.weights import config_to_hf, map_key

transformers = pytest.importorskip("transformers")

VOCAB = 256
TINY_HF = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64, num_labels=3, attn_implementation="eager")
TINY_RAFALE = dict(vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, intermediate_size=64, max_seq_len=40,
                   num_labels=3)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def perturb_(model: torch.nn.Module) -> None:
    """Move zero biases and unit LayerNorms off their init, so that a swapped name cannot pass."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def save_hf(class_name: str, out_dir, max_shard_size="5GB"):
    """A tiny random transformers model, saved as safetensors in out_dir. Returns (model, out_dir)."""
    family = "roberta" if class_name.startswith("Roberta") else "bert"
    config = transformers.AutoConfig.for_model(family, **TINY_HF)
    model = getattr(transformers, class_name)(config).eval()
    perturb_(model)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    return model, out_dir


def make_inputs(pad_token_id: int, padding: str = "right"):
    """(input_ids, attention_mask, token_type_ids) for 3 sequences of 12; rows 1 and 2 padded unless "none"."""
    ids = torch.randint(3, VOCAB, (3, 12))  # above both pad ids (BERT 0, RoBERTa 1)
    mask = torch.ones_like(ids)
    if padding != "none":
        mask[1, 8:] = 0
        mask[2, 4:] = 0
    if padding == "left":  # RoBERTa's positions then start after the pads: checks the cumsum, not an arange
        mask = mask.flip(1)
    ids = ids.masked_fill(mask == 0, pad_token_id)
    token_types = torch.zeros_like(ids)
    token_types[:, 6:] = 1
    return ids, mask, token_types


def hf_output(hf_model, ids, mask, token_types):
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=token_types)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def assert_same_outputs(ours, theirs, mask):
    """Per-token outputs are compared on real tokens only; pooled logits (B, L) as a whole."""
    if ours.dim() == 3 and mask is not None:
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# ---- parity: transformers checkpoint -> load_pretrained -> same outputs ----

@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("class_name", ["BertForMaskedLM", "RobertaForMaskedLM", "BertForSequenceClassification",
                                        "RobertaForSequenceClassification"])
def test_parity_with_transformers(class_name, padding, tmp_path):
    hf_model, path = save_hf(class_name, tmp_path)
    model, report = load_pretrained(path)
    assert report.initialized == [] and report.ignored == []
    assert isinstance(model, EncoderForMaskedLM if "MaskedLM" in class_name else EncoderForSequenceClassification)

    ids, mask, token_types = make_inputs(hf_model.config.pad_token_id, padding)
    mask = None if padding == "none" else mask
    token_types = token_types if class_name.startswith("Bert") else None
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(ours, hf_output(hf_model, ids, mask, token_types), mask)


def test_backbone_checkpoint_loads_as_backbone(tmp_path):
    hf_model, path = save_hf("BertModel", tmp_path)
    model, report = load_pretrained(path)
    assert isinstance(model, Encoder)
    assert report.initialized == [] and sorted(report.ignored) == ["pooler.dense.bias", "pooler.dense.weight"]

    ids, mask, token_types = make_inputs(0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(ours, hf_output(hf_model, ids, mask, token_types), mask)


def test_backbone_checkpoint_into_classifier_reports_fresh_head(tmp_path):
    hf_model, path = save_hf("BertModel", tmp_path)
    model, report = load_pretrained(path, head="classification")
    assert sorted(report.initialized) == ["classifier.bias", "classifier.weight"]
    assert report.ignored == []
    assert torch.equal(model.pooler.weight, hf_model.pooler.dense.weight)  # BERT's pooler lives in BertModel

    ids, mask, token_types = make_inputs(0)
    with torch.no_grad():
        hidden = model.encoder(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(hidden, hf_output(hf_model, ids, mask, token_types), mask)


def test_a_fresh_head_is_initialised_from_the_run_seed(tmp_path):
    _, path = save_hf("BertModel", tmp_path)
    config = encoder_config_from_hf(json.loads((path / "config.json").read_text()))
    heads = []
    for before, seed in enumerate((1, 1, 2)):
        torch.manual_seed(before)  # whatever the process drew before, the run's seed decides
        model, report = build_model(config, head="classification", weights=path, num_labels=3, seed=seed)
        assert sorted(report.initialized) == ["classifier.bias", "classifier.weight"] and model.training
        heads.append(model.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_mlm_checkpoint_into_classifier_reports_both_heads(tmp_path):
    _, path = save_hf("RobertaForMaskedLM", tmp_path)
    model, report = load_pretrained(path, head="classification")
    assert sorted(report.initialized) == ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"]
    assert sorted(report.ignored) == ["lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight",
                                      "lm_head.layer_norm.bias", "lm_head.layer_norm.weight"]


def test_sharded_checkpoint(tmp_path):
    hf_model, path = save_hf("BertForMaskedLM", tmp_path, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    model, _ = load_pretrained(path)
    ids, mask, token_types = make_inputs(0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(ours, hf_output(hf_model, ids, mask, token_types), mask)


def test_old_bert_spellings_load(tmp_path):
    """bert-base-uncased's file: LayerNorm.gamma/beta, a written-out tied decoder, position_ids, NSP head."""
    hf_model, path = save_hf("BertForMaskedLM", tmp_path)
    tensors = load_file(path / "model.safetensors")
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in tensors.items()}
    old["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"].clone()
    old["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"].clone()
    old["bert.embeddings.position_ids"] = torch.arange(64)[None]
    old["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    save_file(old, path / "model.safetensors")

    model, report = load_pretrained(path)
    assert report.initialized == [] and report.ignored == []
    ids, mask, token_types = make_inputs(0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(ours, hf_output(hf_model, ids, mask, token_types), mask)


# ---- export: rafale -> export_model -> transformers Auto class -> same outputs ----

AUTO_CLASSES = {"backbone": "AutoModel", "mlm": "AutoModelForMaskedLM",
                "classification": "AutoModelForSequenceClassification"}


@pytest.mark.parametrize("head", ["backbone", "mlm", "classification"])
@pytest.mark.parametrize("name", ["bert-tiny", "roberta-base"])
def test_export_loads_in_transformers(name, head, tmp_path):
    config = get_config(name, **TINY_RAFALE)
    model = HEAD_CLASSES[head](config).eval()
    perturb_(model)
    export_model(model, tmp_path)

    extra = {"add_pooling_layer": False} if head == "backbone" else {}  # rafale's backbone has no pooler
    auto = getattr(transformers, AUTO_CLASSES[head])
    hf_model, info = auto.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager", **extra)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf_model.eval()

    ids, mask, token_types = make_inputs(config.pad_token_id)
    token_types = token_types if name.startswith("bert") else None
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types)
    assert_same_outputs(ours, hf_output(hf_model, ids, mask, token_types), mask)

    again, report = load_pretrained(tmp_path)  # and back into rafale, unchanged
    assert type(again) is type(model) and report.initialized == [] and report.ignored == []
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


# ---- registry and config ----

@pytest.mark.parametrize("name", [d["name"] for d in encoders])
def test_registry_matches_transformers_parameter_count(name):
    config = get_config(name)
    hf_dict = config_to_hf(config, head="mlm")
    hf_config = transformers.AutoConfig.for_model(**hf_dict)
    assert dataclasses.replace(encoder_config_from_hf(hf_dict), name=name) == config
    family = "Bert" if hf_dict["model_type"] == "bert" else "Roberta"
    hf_classes = {"backbone": ("Model", {"add_pooling_layer": False}), "mlm": ("ForMaskedLM", {}),
                  "classification": ("ForSequenceClassification", {})}
    for head, (suffix, kwargs) in hf_classes.items():
        with torch.device("meta"):
            ours = HEAD_CLASSES[head](config)
            theirs = getattr(transformers, family + suffix)(hf_config, **kwargs)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()), head


def test_config_validation_names_the_config():
    with pytest.raises(ValueError, match="encoder config 'x': n_embd 30 is not divisible by n_head 4"):
        EncoderConfig(name="x", n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="position_offset must be 0 .BERT. or pad_token_id . 1 = 2"):
        EncoderConfig(name="x", pad_token_id=1, position_offset=1)
    with pytest.raises(ValueError, match="classifier must be 'bert' or 'roberta'"):
        EncoderConfig(name="x", classifier="xlnet")
    assert EncoderConfig(n_embd=64, n_head=4).intermediate_size == 256


def test_unknown_config_name_suggests_close_names():
    with pytest.raises(ModelError, match="'bert-tiy' is not a known model; did you mean 'bert-tiny'"):
        get_config("bert-tiy")
    with pytest.raises(ModelError, match="did you mean 'roberta-base'"):
        get_config("RoBERTa-base")
    with pytest.raises(ModelError, match="model.overrides: unknown key 'n_layers'; valid keys: .*n_layer, "):
        get_config("bert-tiny", n_layers=2)
    with pytest.raises(ModelError, match="model.overrides: encoder config 'bert-tiny': n_embd 129 is not divisible"):
        get_config("bert-tiny", n_embd=129)


def test_too_long_input_is_an_error():
    model = Encoder(EncoderConfig(**{**TINY_RAFALE, "max_seq_len": 8}))
    with pytest.raises(ValueError, match="Cannot attend to 9 tokens, max_seq_len is only 8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_dropout_only_in_training():
    model = EncoderForMaskedLM(EncoderConfig(**TINY_RAFALE, dropout=0.5, attn_dropout=0.5))
    ids = torch.randint(3, VOCAB, (2, 10))
    assert not torch.equal(model.train()(ids), model(ids))
    assert torch.equal(model.eval()(ids), model(ids))


def test_roberta_positions_count_real_tokens():
    model = Encoder(EncoderConfig(**TINY_RAFALE, pad_token_id=1, position_offset=2, classifier="roberta"))
    ids = torch.tensor([[5, 6, 7, 1, 1]])
    assert model.position_ids(ids).tolist() == [[2, 3, 4, 1, 1]]


# ---- bad input ----

def test_map_key_names_unknown_tensor():
    assert map_key("bert.encoder.layer.11.output.dense.bias", BERT) == "encoder.layers.11.mlp.proj.bias"
    with pytest.raises(ModelError, match="unknown tensor name 'bert.encoder.layer.0.foo.weight'"):
        map_key("bert.encoder.layer.0.foo.weight", BERT)


def edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_untied_decoder_is_refused(tmp_path):
    _, path = save_hf("BertForMaskedLM", tmp_path)
    edit_tensors(path, lambda t: t.update({"cls.predictions.decoder.weight": torch.zeros(VOCAB, 32)}))
    with pytest.raises(ModelError, match="both load into 'encoder.word_embeddings.weight' but differ"):
        load_pretrained(path)


def test_unknown_head(tmp_path):
    _, path = save_hf("BertForMaskedLM", tmp_path)
    with pytest.raises(ModelError, match="head 'mlm2' is not one of auto, backbone, mlm, classification"):
        load_pretrained(path, head="mlm2")
