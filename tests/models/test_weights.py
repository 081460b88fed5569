"""Parity with transformers: tiny random HF models -> production loader -> same logits, and back.

Every HF parameter (norms and biases included) is randomised, so a swapped or misplaced tensor shows up
in the logits. HF runs eager attention in fp32.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, Qwen2Config,
)

from rafale.errors import ModelError  # noqa: E402
from rafale.models import Decoder, config_from_weights, export_model, from_pretrained, get_config  # noqa: E402
from rafale.models.weights import GPT_NEOX, config_from_hf, config_to_hf, map_key  # noqa: E402

VOCAB = 256
SIZES = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=256)


def neox(rotary_pct=0.25, parallel=True, **kw):
    return GPTNeoXConfig(**SIZES, rotary_pct=rotary_pct, use_parallel_residual=parallel, **kw)


def llama(tie=False, **kw):
    return LlamaConfig(**SIZES, num_key_value_heads=2, tie_word_embeddings=tie, **kw)


def qwen2(**kw):
    return Qwen2Config(**SIZES, num_key_value_heads=2, tie_word_embeddings=True, **kw)


LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)

HF_CONFIGS = {
    "neox-rot0.25-parallel": lambda: neox(0.25, True),
    "neox-rot0.25-sequential": lambda: neox(0.25, False),
    "neox-rot1.0-parallel": lambda: neox(1.0, True),
    "neox-rot1.0-sequential": lambda: neox(1.0, False),
    "llama-gqa-untied": lambda: llama(tie=False),
    "llama-gqa-tied": lambda: llama(tie=True),
    "llama-rope-llama3": lambda: llama(tie=True, rope_scaling=dict(LLAMA3_ROPE)),
    "qwen2-qkv-bias": lambda: qwen2(),
}


def random_hf_model(hf_config):
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.normal_(1.0 if is_norm_weight else 0.0, 0.1)
    return model.eval()


@pytest.fixture(params=list(HF_CONFIGS), scope="module")
def hf_checkpoint(request, tmp_path_factory):
    """(HF model, its save_pretrained dir) for each architecture variant."""
    torch.manual_seed(0)
    model = random_hf_model(HF_CONFIGS[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, path


def left_padded_batch():
    ids = torch.randint(0, VOCAB, (3, 16))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :11] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF's generate uses for left padding
    return ids, mask, position_ids


# --- load: HF -> rafale -------------------------------------------------------------------------------------


@torch.no_grad()
def test_loaded_model_matches_transformers(hf_checkpoint):
    hf_model, path = hf_checkpoint
    model = from_pretrained(path)
    ids = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(model(ids), hf_model(ids).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_loaded_model_matches_transformers_with_left_padding(hf_checkpoint):
    hf_model, path = hf_checkpoint
    model = from_pretrained(path)
    ids, mask, position_ids = left_padded_batch()
    ours = model(ids, position_ids=position_ids, attention_mask=mask)
    theirs = hf_model(ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_hf_config_translation_round_trips(hf_checkpoint):
    _, path = hf_checkpoint
    config = config_from_weights(path)
    assert config_from_hf(config_to_hf(config), name=config.name) == config


@torch.no_grad()
def test_sharded_checkpoint_loads(tmp_path):
    hf_model = random_hf_model(llama(tie=False))
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(from_pretrained(tmp_path)(ids), hf_model(ids).logits, rtol=1e-5, atol=1e-5)


def test_from_pretrained_accepts_a_run_dir_and_a_dtype(tmp_path):
    model = Decoder(get_config("llama-tiny", n_layer=1, vocab_size=VOCAB)).eval()
    export_model(model, tmp_path / "run" / "final")
    loaded = from_pretrained(tmp_path / "run", dtype=torch.bfloat16)
    assert not loaded.training and loaded.wte.weight.dtype == torch.bfloat16
    assert loaded.lm_head.weight is loaded.wte.weight  # the tie survives loading
    ids = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(loaded(ids).float(), model(ids), rtol=0.05, atol=0.05)


def test_unfinished_run_dir_says_so(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelError, match="run: this run has no final/ export"):
        from_pretrained(tmp_path / "run")


# --- export: rafale -> HF -------------------------------------------------------------------------------------

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, max_seq_len=256, init_std=0.1)
EXPORTED = {  # registry entries, shrunk, so that their real switches are what gets exported
    "pythia-tiny": dict(SMALL, intermediate_size=128),
    "pythia-70m-sequential": dict(SMALL, intermediate_size=128, parallel_residual=False),
    "llama-tiny": dict(SMALL, n_kv_head=2, intermediate_size=96),
    "TinyLlama-1.1B": dict(SMALL, n_kv_head=2, intermediate_size=96),
    "Llama-3.2-1B": dict(SMALL, n_kv_head=1, intermediate_size=96,
                         rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_seq_len=64)),
    "Qwen2.5-0.5B": dict(SMALL, n_kv_head=2, intermediate_size=96),
}


@pytest.mark.parametrize("name", list(EXPORTED))
@torch.no_grad()
def test_export_loads_in_transformers_with_the_same_logits(name, tmp_path):
    model = Decoder(get_config(name.removesuffix("-sequential"), **EXPORTED[name])).eval()
    for module in model.modules():  # random norms and biases too, so that a swap would show
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            module.weight.normal_(1.0, 0.1)
        if getattr(module, "bias", None) is not None:
            module.bias.normal_(0.0, 0.1)
    export_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(hf_model(ids).logits, model(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_pretrained(tmp_path)(ids), model(ids), rtol=0, atol=0)


def test_export_refuses_a_config_no_transformers_class_has(tmp_path):
    model = Decoder(get_config("llama-tiny", n_layer=1, parallel_residual=True))
    with pytest.raises(ModelError, match="no transformers architecture has these switches"):
        export_model(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- the name map ---------------------------------------------------------------------------------------------


def test_map_key_templates_the_layer_number():
    assert map_key("gpt_neox.layers.11.attention.dense.weight", GPT_NEOX) == "blocks.11.attn.o_proj.weight"
    assert map_key("embed_out.weight", GPT_NEOX) == "lm_head.weight"
    assert map_key("gpt_neox.layers.3.attention.rotary_emb.inv_freq", GPT_NEOX) is None


def test_map_key_names_an_unknown_key():
    with pytest.raises(ModelError, match="unknown tensor name 'gpt_neox.layers.0.attention.lora_A.weight'"):
        map_key("gpt_neox.layers.0.attention.lora_A.weight", GPT_NEOX)


# --- bad inputs ------------------------------------------------------------------------------------------------


@pytest.fixture
def neox_dir(tmp_path):
    random_hf_model(neox()).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def rewrite_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@torch.no_grad()
def test_old_checkpoint_buffers_are_dropped(neox_dir):
    ids = torch.randint(0, VOCAB, (2, 16))
    without = from_pretrained(neox_dir)(ids)
    rewrite_tensors(neox_dir, lambda t: t.update({
        "gpt_neox.layers.0.attention.bias": torch.ones(1, 1, 8, 8),
        "gpt_neox.layers.0.attention.masked_bias": torch.tensor(-1e9),
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq": torch.ones(2),
    }))
    torch.testing.assert_close(from_pretrained(neox_dir)(ids), without, rtol=0, atol=0)


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(model_type="gpt2"), "model_type 'gpt2' is not a family rafale has a model for; expected one of bert, "),
        (dict(architectures=["GPTNeoXForSequenceClassification"]),
         r"architectures \['GPTNeoXForSequenceClassification'\] is not supported; expected \['GPTNeoXForCausalLM'\]"),
        (dict(hidden_act="relu"), "hidden_act 'relu' is not supported for gpt_neox"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_type 'linear' is not supported"),
        (dict(hidden_size=130), "DecoderConfig 'decoder': n_embd 130 is not divisible by n_head 4"),
    ],
)
def test_unsupported_hf_configs_are_named(edit, match):
    hf = {**config_to_hf(get_config("pythia-14m")), **edit}
    with pytest.raises(ModelError, match=f"config.json: {match}"):
        config_from_hf(hf)


def test_hf_config_without_a_required_key():
    hf = config_to_hf(get_config("SmolLM-135M"))
    del hf["num_hidden_layers"]
    with pytest.raises(ModelError, match="config.json: llama config has no 'num_hidden_layers'"):
        config_from_hf(hf)
