"""Hugging Face checkpoints <-> rafale decoders: config translation, weight names, load and export.

Reading the files (config.json, safetensors shards) and map_key live in checkpoint.py, shared with encoders.

Three transformers architectures map onto the decoder: gpt_neox (Pythia), llama (SmolLM, TinyLlama,
Llama 3.x) and qwen2 (Qwen2.5). Loading goes
    config.json -> config_from_hf() -> DecoderConfig
    tensors     -> strict check (names, shapes, dtypes) -> map_key() per tensor -> layout fixes
where the layout fixes are the two places rafale's fused `attn.qkv` differs from a checkpoint:
NeoX interleaves q/k/v per head, Llama keeps q/k/v in three matrices. Export runs the same steps
backwards (inverted name map) and writes model.safetensors + config.json that transformers loads.

transformers itself is never imported here; the tests compare against it.
"""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from rafale.errors import ModelError
from rafale.models.checkpoint import map_key, names, read_hf_config, read_hf_weights
from rafale.models.decoder import Decoder, DecoderConfig

# --- name maps: {hf_name: rafale_name}, "{}" is the layer number, None drops the tensor ---------------------

GPT_NEOX = {
    "gpt_neox.embed_in.weight": "wte.weight",
    "gpt_neox.layers.{}.input_layernorm.weight": "blocks.{}.input_layernorm.weight",
    "gpt_neox.layers.{}.input_layernorm.bias": "blocks.{}.input_layernorm.bias",
    "gpt_neox.layers.{}.attention.query_key_value.weight": "blocks.{}.attn.qkv.weight",  # + neox_qkv_to_rafale
    "gpt_neox.layers.{}.attention.query_key_value.bias": "blocks.{}.attn.qkv.bias",  # + neox_qkv_to_rafale
    "gpt_neox.layers.{}.attention.dense.weight": "blocks.{}.attn.o_proj.weight",
    "gpt_neox.layers.{}.attention.dense.bias": "blocks.{}.attn.o_proj.bias",
    "gpt_neox.layers.{}.post_attention_layernorm.weight": "blocks.{}.post_attention_layernorm.weight",
    "gpt_neox.layers.{}.post_attention_layernorm.bias": "blocks.{}.post_attention_layernorm.bias",
    "gpt_neox.layers.{}.mlp.dense_h_to_4h.weight": "blocks.{}.mlp.up_proj.weight",
    "gpt_neox.layers.{}.mlp.dense_h_to_4h.bias": "blocks.{}.mlp.up_proj.bias",
    "gpt_neox.layers.{}.mlp.dense_4h_to_h.weight": "blocks.{}.mlp.down_proj.weight",
    "gpt_neox.layers.{}.mlp.dense_4h_to_h.bias": "blocks.{}.mlp.down_proj.bias",
    "gpt_neox.final_layer_norm.weight": "norm.weight",
    "gpt_neox.final_layer_norm.bias": "norm.bias",
    "embed_out.weight": "lm_head.weight",
    # buffers that older checkpoints carry; rafale recomputes them
    "gpt_neox.layers.{}.attention.rotary_emb.inv_freq": None,
    "gpt_neox.layers.{}.attention.bias": None,  # the causal mask
    "gpt_neox.layers.{}.attention.masked_bias": None,
    "gpt_neox.rotary_emb.inv_freq": None,
}

LLAMA = {  # also Qwen2, whose q/k/v carry biases
    "model.embed_tokens.weight": "wte.weight",
    "model.layers.{}.input_layernorm.weight": "blocks.{}.input_layernorm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.attn.q_proj.weight",  # q, k, v: + fuse_qkv
    "model.layers.{}.self_attn.q_proj.bias": "blocks.{}.attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.k_proj.bias": "blocks.{}.attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.v_proj.bias": "blocks.{}.attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.attn.o_proj.weight",
    "model.layers.{}.self_attn.o_proj.bias": "blocks.{}.attn.o_proj.bias",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.post_attention_layernorm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.gate_proj.bias": "blocks.{}.mlp.gate_proj.bias",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.up_proj.bias": "blocks.{}.mlp.up_proj.bias",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.mlp.down_proj.weight",
    "model.layers.{}.mlp.down_proj.bias": "blocks.{}.mlp.down_proj.bias",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
    "model.rotary_emb.inv_freq": None,
}

NAME_MAPS = {"gpt_neox": GPT_NEOX, "llama": LLAMA, "qwen2": LLAMA}
ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# --- layout fixes --------------------------------------------------------------------------------------------


def neox_qkv_to_rafale(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """NeoX rows are [q0 k0 v0 q1 k1 v1 ...] per head; rafale's are [q0 q1 ... | k0 k1 ... | v0 v1 ...]."""
    return t.view(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def rafale_qkv_to_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    return t.view(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def fuse_qkv(sd: dict) -> dict:
    """Stack each layer's attn.{q,k,v}_proj rows into one attn.qkv (weights and biases)."""
    for q_key in [k for k in sd if ".attn.q_proj." in k]:
        prefix, suffix = q_key.split(".attn.q_proj.")
        parts = [sd.pop(f"{prefix}.attn.{p}_proj.{suffix}") for p in "qkv"]
        sd[f"{prefix}.attn.qkv.{suffix}"] = torch.cat(parts)
    return sd


def split_qkv(sd: dict, config: DecoderConfig) -> dict:
    """Inverse of fuse_qkv. The parts are copies: safetensors refuses tensors that share memory."""
    sizes = [config.n_head * config.head_dim] + 2 * [config.n_kv_head * config.head_dim]
    for qkv_key in [k for k in sd if ".attn.qkv." in k]:
        prefix, suffix = qkv_key.split(".attn.qkv.")
        for p, part in zip("qkv", sd.pop(qkv_key).split(sizes)):
            sd[f"{prefix}.attn.{p}_proj.{suffix}"] = part.clone()
    return sd


# --- configs ---------------------------------------------------------------------------------------------------


def hf_model_type(config: DecoderConfig) -> str:
    """The transformers architecture whose switches match this config: 'gpt_neox', 'llama' or 'qwen2'."""
    c = config
    llama_like = c.norm == "rmsnorm" and c.mlp == "swiglu" and not c.parallel_residual and c.rotary_pct == 1.0
    if c.norm == "layernorm" and c.mlp == "gelu" and c.bias and c.n_kv_head == c.n_head:
        return "gpt_neox"
    if llama_like and not c.attn_qkv_bias:
        return "llama"
    if llama_like and c.attn_qkv_bias and not c.bias:
        return "qwen2"
    raise ModelError(
        f"model {c.name!r}: no transformers architecture has these switches (norm={c.norm}, mlp={c.mlp}, "
        f"bias={c.bias}, attn_qkv_bias={c.attn_qkv_bias}, parallel_residual={c.parallel_residual}, "
        f"rotary_pct={c.rotary_pct}, n_kv_head={c.n_kv_head}); export needs GPT-NeoX (layernorm, gelu, bias, "
        "no GQA) or Llama/Qwen2 (rmsnorm, swiglu, sequential residual, full rotary)"
    )


def config_from_hf(hf: dict, name: str = "decoder") -> DecoderConfig:
    """Translate a transformers config.json (as a dict) into a DecoderConfig. The one place that does.

    Reads both the transformers 4.x keys (rotary_pct, rope_theta, rope_scaling) and 5.x's rope_parameters.
    Missing keys take transformers' defaults for that architecture.
    """
    model_type = hf.get("model_type")
    if model_type not in NAME_MAPS:
        raise ModelError(f"config.json: model_type {model_type!r} is not supported; rafale reads {sorted(NAME_MAPS)}")
    architectures = hf.get("architectures") or [ARCHITECTURES[model_type]]
    if architectures != [ARCHITECTURES[model_type]]:
        raise ModelError(
            f"config.json: architectures {architectures} is not supported; expected [{ARCHITECTURES[model_type]!r}]"
        )

    def need(key):
        if key not in hf:
            raise ModelError(f"config.json: {model_type} config has no {key!r}")
        return hf[key]

    neox = model_type == "gpt_neox"
    expected_act = "gelu" if neox else "silu"
    act = hf.get("hidden_act", expected_act)
    if act != expected_act:
        raise ModelError(
            f"config.json: hidden_act {act!r} is not supported for {model_type}; expected {expected_act!r}"
        )
    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise ModelError(f"config.json: head_dim {hf['head_dim']} != hidden_size / num_attention_heads; not supported")
    if hf.get("use_sliding_window"):
        raise ModelError("config.json: use_sliding_window is true; rafale's decoder has no sliding-window attention")

    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelError(
            f"config.json: rope_type {rope_type!r} is not supported; rafale implements 'default' and 'llama3'"
        )
    rope_scaling = None
    if rope_type == "llama3":
        try:
            rope_scaling = {"factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
                            "high_freq_factor": rope["high_freq_factor"],
                            "original_max_seq_len": rope["original_max_position_embeddings"]}
        except KeyError as e:
            raise ModelError(f"config.json: llama3 rope scaling has no {e.args[0]!r}") from e

    common = dict(
        name=name,
        vocab_size=need("vocab_size"),
        n_layer=need("num_hidden_layers"),
        n_head=n_head,
        n_embd=n_embd,
        intermediate_size=need("intermediate_size"),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))),
        rope_scaling=rope_scaling,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )
    if neox:
        if not hf.get("attention_bias", True):
            raise ModelError("config.json: gpt_neox with attention_bias false is not supported")
        family = dict(rotary_pct=rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)),
                      parallel_residual=hf.get("use_parallel_residual", True), norm="layernorm",
                      norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="gelu", bias=True)
    else:
        bias = hf.get("attention_bias", False)
        if model_type == "llama" and bias != hf.get("mlp_bias", False):
            raise ModelError(
                "config.json: llama with attention_bias != mlp_bias is not supported; rafale's bias switch covers both"
            )
        family = dict(n_kv_head=hf.get("num_key_value_heads", n_head), norm="rmsnorm",
                      norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=model_type == "llama" and bias,
                      attn_qkv_bias=model_type == "qwen2")
    try:
        return DecoderConfig(**common, **family)
    except ValueError as e:
        raise ModelError(f"config.json: {e}") from e


def config_to_hf(config: DecoderConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json transformers needs to rebuild this model (4.x key names, which 5.x also reads)."""
    c, model_type = config, hf_model_type(config)
    hf = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_seq_len,
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": str(dtype).removeprefix("torch."),
    }
    rope_scaling = None
    if c.rope_scaling is not None:
        s = c.rope_scaling
        rope_scaling = {"rope_type": "llama3", "factor": s["factor"], "low_freq_factor": s["low_freq_factor"],
                        "high_freq_factor": s["high_freq_factor"],
                        "original_max_position_embeddings": s["original_max_seq_len"]}
    if model_type == "gpt_neox":
        return {**hf, "rotary_pct": c.rotary_pct, "rotary_emb_base": c.rope_theta, "rope_scaling": rope_scaling,
                "use_parallel_residual": c.parallel_residual, "layer_norm_eps": c.norm_eps, "hidden_act": "gelu",
                "attention_bias": True}
    hf.update({"num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim, "rms_norm_eps": c.norm_eps,
               "hidden_act": "silu", "rope_theta": c.rope_theta, "rope_scaling": rope_scaling})
    if model_type == "llama":
        hf.update({"attention_bias": c.bias, "mlp_bias": c.bias})
    return hf


# --- state dicts -------------------------------------------------------------------------------------------------


def hf_to_rafale(hf_sd: dict, config: DecoderConfig) -> dict:
    """Rename and reshape an HF state dict into the Decoder's (tensors mapped to None are dropped)."""
    model_type = hf_model_type(config)
    name_map, sd = NAME_MAPS[model_type], {}
    for key, t in hf_sd.items():
        new_key = map_key(key, name_map)
        if new_key is not None:
            sd[new_key] = t
    if model_type == "gpt_neox":
        sd = {k: neox_qkv_to_rafale(t, config.n_head) if ".attn.qkv." in k else t for k, t in sd.items()}
    else:
        sd = fuse_qkv(sd)
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["wte.weight"]
    return sd


def rafale_to_hf(sd: dict, config: DecoderConfig) -> dict:
    """Inverse of hf_to_rafale: a Decoder state dict in HF names and layout (a tied head is left out)."""
    model_type = hf_model_type(config)
    sd = dict(sd)
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if model_type == "gpt_neox":
        sd = {k: rafale_qkv_to_neox(t, config.n_head) if ".attn.qkv." in k else t for k, t in sd.items()}
    else:
        sd = split_qkv(sd, config)
    inverse = {ours: theirs for theirs, ours in NAME_MAPS[model_type].items() if ours is not None}
    return {map_key(k, inverse): t for k, t in sd.items()}


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def check_hf_weights(hf_sd: dict, config: DecoderConfig, where: Path):
    """Strict: every tensor the config needs is there with its shape, nothing else, all floating point.

    What is expected comes from exporting a Decoder built on the meta device, so it costs no memory.
    """
    with torch.device("meta"):
        expected = rafale_to_hf(Decoder(config).state_dict(), config)
    name_map = NAME_MAPS[hf_model_type(config)]
    tied_head = ("embed_out.weight", "lm_head.weight") if config.tie_embeddings else ()
    got = {}
    for key, t in hf_sd.items():
        try:
            if map_key(key, name_map) is None or key in tied_head:
                continue  # buffers rafale recomputes; a copy of a tied head
        except ModelError:
            pass  # unknown names are reported below as unexpected
        got[key] = t
    problems = []
    if missing := expected.keys() - got.keys():
        problems.append(f"{_count(missing, 'tensor')} missing ({names(missing)})")
    if unexpected := got.keys() - expected.keys():
        problems.append(f"{_count(unexpected, 'unexpected tensor')} ({names(unexpected)})")
    for key in sorted(expected.keys() & got.keys()):
        if got[key].shape != expected[key].shape:
            problems.append(f"{key} has shape {tuple(got[key].shape)}, the config needs {tuple(expected[key].shape)}")
        elif not got[key].is_floating_point():
            problems.append(f"{key} has dtype {got[key].dtype}; rafale loads floating-point weights only")
    if problems:
        raise ModelError(f"{where}: weights do not fit its config.json: " + "; ".join(problems[:6]))


def load_hf_checkpoint(path) -> tuple[DecoderConfig, dict]:
    """Read an HF-layout dir (config.json + safetensors) into a DecoderConfig and a Decoder state dict.

    Raises:
        ModelError: the dir is missing or lacks config.json/weights, a file is unreadable, the
            architecture is unsupported, or the tensors do not fit the config (names, shapes, dtypes).
    """
    path = Path(path)
    hf_config = read_hf_config(path)
    config = config_from_hf(hf_config, name=path.resolve().name)
    hf_sd = read_hf_weights(path)
    check_hf_weights(hf_sd, config, path)
    return config, hf_to_rafale(hf_sd, config)


def export_hf(model: Decoder, out_dir) -> Path:
    """Write `model` as model.safetensors + config.json in HF layout; transformers' from_pretrained reads it.

    Each file is written under a temporary name and renamed, so a failure leaves no half-written file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = model.wte.weight.dtype
    hf_config = config_to_hf(model.config, dtype=dtype)  # first: raises if no HF architecture fits
    tensors = {k: t.detach().cpu().contiguous() for k, t in rafale_to_hf(model.state_dict(), model.config).items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config, indent=2) + "\n")
    os.replace(tmp, out / "config.json")
    return out
