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
from rafale.models import Decoder, export_hf, from_pretrained, get_config, load_hf_checkpoint  # noqa: E402
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
    config, _ = load_hf_checkpoint(path)
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
    export_hf(model, tmp_path / "run" / "final")
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
    export_hf(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(hf_model(ids).logits, model(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_pretrained(tmp_path)(ids), model(ids), rtol=0, atol=0)


def test_export_refuses_a_config_no_transformers_class_has(tmp_path):
    model = Decoder(get_config("llama-tiny", n_layer=1, parallel_residual=True))
    with pytest.raises(ModelError, match="no transformers architecture has these switches"):
        export_hf(model, tmp_path)
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


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="nope: no such directory; expected an HF-layout model dir"):
        load_hf_checkpoint(tmp_path / "nope")


def test_directory_without_config_lists_its_contents(neox_dir):
    (neox_dir / "config.json").unlink()
    with pytest.raises(ModelError, match=r"no config.json \(found: generation_config.json, model.safetensors\)"):
        load_hf_checkpoint(neox_dir)


def test_directory_without_weights_lists_its_contents(neox_dir):
    (neox_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model.safetensors or model.safetensors.index.json \(found: config.json"):
        load_hf_checkpoint(neox_dir)


def test_pickle_weights_are_refused(neox_dir):
    (neox_dir / "model.safetensors").rename(neox_dir / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickle weights \(\*.bin/\*.pt\), no safetensors \(found: config.json, "
                                         r"generation_config.json, pytorch_model.bin\); rafale reads safetensors only"):
        load_hf_checkpoint(neox_dir)


def test_truncated_safetensors_names_the_file(neox_dir):
    data = (neox_dir / "model.safetensors").read_bytes()
    (neox_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"model.safetensors: not a readable safetensors file"):
        load_hf_checkpoint(neox_dir)


def test_missing_and_unexpected_tensors_are_named(neox_dir):
    def edit(t):
        del t["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
        t["gpt_neox.layers.0.attention.lora_A.weight"] = torch.zeros(2)
    rewrite_tensors(neox_dir, edit)
    with pytest.raises(ModelError, match=r"1 tensor missing \(gpt_neox.layers.1.mlp.dense_4h_to_h.bias\); "
                                         r"1 unexpected tensor \(gpt_neox.layers.0.attention.lora_A.weight\)"):
        load_hf_checkpoint(neox_dir)


def test_wrong_shape_names_the_tensor_and_both_shapes(neox_dir):
    config = json.loads((neox_dir / "config.json").read_text())
    config["intermediate_size"] = 128
    (neox_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"gpt_neox.layers.0.mlp.dense_4h_to_h.weight has shape \(64, 96\), "
                                         r"the config needs \(64, 128\)"):
        load_hf_checkpoint(neox_dir)


def test_integer_tensors_are_refused(neox_dir):
    rewrite_tensors(neox_dir, lambda t: t.update({"gpt_neox.final_layer_norm.bias": torch.zeros(64, dtype=torch.int8)}))
    with pytest.raises(ModelError, match="gpt_neox.final_layer_norm.bias has dtype torch.int8"):
        load_hf_checkpoint(neox_dir)


def test_old_checkpoint_buffers_are_dropped(neox_dir):
    rewrite_tensors(neox_dir, lambda t: t.update({
        "gpt_neox.layers.0.attention.bias": torch.ones(1, 1, 8, 8),
        "gpt_neox.layers.0.attention.masked_bias": torch.tensor(-1e9),
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq": torch.ones(2),
    }))
    load_hf_checkpoint(neox_dir)


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(model_type="gpt2"), "model_type 'gpt2' is not supported; rafale reads"),
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
