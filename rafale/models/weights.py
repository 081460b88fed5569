"""Hugging Face checkpoints <-> rafale models, for every family: name maps, configs, load and export.

One flat name map per family, {hf_name: rafale_name} with "{}" for the layer number (GPT_NEOX and LLAMA
here, BERT and ROBERTA in encoder_weights.py), and one path through them. Loading goes
    config.json -> config_from_hf() -> DecoderConfig or EncoderConfig
    tensors     -> map_key() per name -> hf_to_rafale() checks names, shapes, dtypes against a model
                   on the meta device, and the layout fixes -> load_weights(): to_empty + strict load
where the layout fixes are the two places rafale's fused `attn.qkv` differs from a checkpoint: NeoX
interleaves q/k/v per head, Llama and Qwen2 keep q/k/v in three matrices. RetNet has no transformers
family: its files use rafale's own model_type, "rafale_retnet", and its own names under `model.`, as
rafale.hf.RetNetForCausalLM holds them. Export runs the same steps
backwards (the inverted map, then the fixes undone) and writes config.json + model.safetensors that
transformers' Auto classes load.

transformers itself is never imported here; the tests compare against it.
"""

import dataclasses
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from rafale.errors import ModelError
from rafale.models import encoder
from rafale.models.checkpoint import names, write_hf_dir
from rafale.models.decoder import Decoder, DecoderConfig
from rafale.models.encoder import Encoder, EncoderConfig
from rafale.models.encoder_weights import (HEAD_CLASSES, canonical_key, encoder_config_from_hf,
                                           encoder_config_to_hf)
from rafale.models.encoder_weights import NAME_MAPS as ENCODER_MAPS
from rafale.models.meta import on_meta, to_empty
from rafale.models.retnet import RetNet, RetNetConfig

LAYER_NUMBER = re.compile(r"\.(\d+)\.")

# --- decoder name maps: {hf_name: rafale_name}, "{}" is the layer number, None drops the tensor ------------

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

RETNET = {  # rafale's own layout (model_type "rafale_retnet"): its module names, under `model.`
    "model.wte.weight": "wte.weight",
    "model.blocks.{}.retention_norm.weight": "blocks.{}.retention_norm.weight",
    "model.blocks.{}.retention_norm.bias": "blocks.{}.retention_norm.bias",
    "model.blocks.{}.retention.qkvg.weight": "blocks.{}.retention.qkvg.weight",
    "model.blocks.{}.retention.group_norm.weight": "blocks.{}.retention.group_norm.weight",
    "model.blocks.{}.retention.group_norm.bias": "blocks.{}.retention.group_norm.bias",
    "model.blocks.{}.retention.o_proj.weight": "blocks.{}.retention.o_proj.weight",
    "model.blocks.{}.ffn_norm.weight": "blocks.{}.ffn_norm.weight",
    "model.blocks.{}.ffn_norm.bias": "blocks.{}.ffn_norm.bias",
    "model.blocks.{}.ffn.gate_proj.weight": "blocks.{}.ffn.gate_proj.weight",
    "model.blocks.{}.ffn.up_proj.weight": "blocks.{}.ffn.up_proj.weight",
    "model.blocks.{}.ffn.down_proj.weight": "blocks.{}.ffn.down_proj.weight",
    "model.norm.weight": "norm.weight",
    "model.norm.bias": "norm.bias",
    "model.lm_head.weight": "lm_head.weight",
}

NAME_MAPS = {"gpt_neox": GPT_NEOX, "llama": LLAMA, "qwen2": LLAMA, "rafale_retnet": RETNET, **ENCODER_MAPS}
ARCHITECTURES = {  # model_type -> {rafale head: the transformers class of that head}
    "gpt_neox": {"lm": "GPTNeoXForCausalLM"},
    "llama": {"lm": "LlamaForCausalLM"},
    "qwen2": {"lm": "Qwen2ForCausalLM"},
    "rafale_retnet": {"lm": "RetNetForCausalLM"},  # rafale.hf registers it with transformers' Auto classes
    "bert": {"backbone": "BertModel", "mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification"},
    "roberta": {"backbone": "RobertaModel", "mlm": "RobertaForMaskedLM",
                "classification": "RobertaForSequenceClassification"},
}


def map_key(key: str, name_map: dict) -> Optional[str]:
    """Translate one tensor name through a flat name map; the layer number travels through the `{}` slot.

    Returns the rafale name, or None for a tensor the map drops (buffers rafale recomputes).

    Raises:
        ModelError: the name (with its layer number templatised) is not in the map.
    """
    match = LAYER_NUMBER.search(key)
    template = LAYER_NUMBER.sub(".{}.", key, count=1) if match else key
    if template not in name_map:
        example = next((k for k in name_map if "{}" in k), next(iter(name_map)))
        raise ModelError(f"unknown tensor name {key!r}; expected names like {example!r}")
    target = name_map[template]
    return target.format(match.group(1)) if target is not None and match else target


def inverted(name_map: dict) -> dict:
    """{rafale_name: hf_name}. Where two HF names load into one rafale tensor (a tied weight, an old
    duplicate), the first one listed, today's spelling, wins."""
    inverse = {}
    for hf_name, ours in name_map.items():
        if ours is not None:
            inverse.setdefault(ours, hf_name)
    return inverse


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


def to_map_names(sd: dict, model: nn.Module) -> dict:
    """A rafale state dict under the names and in the layout the flat maps use (the fixes undone)."""
    if isinstance(model, Encoder):
        return {f"encoder.{k}": t for k, t in sd.items()}  # the maps name a bare backbone as the heads do
    if not isinstance(model, Decoder):
        return sd
    if hf_model_type(model.config) == "gpt_neox":
        return {k: rafale_qkv_to_neox(t, model.config.n_head) if ".attn.qkv." in k else t for k, t in sd.items()}
    return split_qkv(sd, model.config)


def from_map_names(sd: dict, model: nn.Module) -> dict:
    """Inverse of to_map_names: the layout fixes applied, the model's own names."""
    if isinstance(model, Encoder):
        return {k.removeprefix("encoder."): t for k, t in sd.items()}
    if not isinstance(model, Decoder):
        return sd
    if hf_model_type(model.config) == "gpt_neox":
        return {k: neox_qkv_to_rafale(t, model.config.n_head) if ".attn.qkv." in k else t for k, t in sd.items()}
    return fuse_qkv(sd)


# --- configs ---------------------------------------------------------------------------------------------------


def hf_model_type(config: DecoderConfig | EncoderConfig | RetNetConfig) -> str:
    """The transformers model_type whose switches match this config: gpt_neox, llama, qwen2, bert or roberta;
    rafale_retnet for a RetNet.

    Raises:
        ModelError: no transformers architecture has this config's combination of switches.
    """
    c = config
    if isinstance(c, RetNetConfig):
        return "rafale_retnet"
    if isinstance(c, EncoderConfig):
        if c.classifier == "bert" and c.position_offset == 0:
            return "bert"
        if c.classifier == "roberta" and c.position_offset > 0:
            return "roberta"
        raise ModelError(f"encoder config '{c.name}': classifier '{c.classifier}' with position_offset "
                         f"{c.position_offset} is neither HF BERT ('bert', 0) nor RoBERTa ('roberta', pad + 1)")
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


def config_from_hf(hf: dict, name: Optional[str] = None, source="config.json") -> DecoderConfig | EncoderConfig:
    """Translate a transformers config.json (as a dict) into a rafale config, for any family. The one place
    that does (encoders: encoder_weights.encoder_config_from_hf).

    Reads both the transformers 4.x keys (rotary_pct, rope_theta, rope_scaling) and 5.x's rope_parameters.
    Missing keys take transformers' defaults for that architecture. `name` defaults to "decoder" or the
    encoder's model_type; `source` is where `hf` came from, for error messages.

    Raises:
        ModelError: a model_type rafale has no model for, or a feature or key its model does not have.
    """
    model_type = hf.get("model_type")
    if model_type in ENCODER_MAPS:
        return encoder_config_from_hf(hf, name=name, source=source)
    if model_type == "rafale_retnet":
        return retnet_config_from_hf(hf, name, source)
    if model_type not in NAME_MAPS:
        raise ModelError(f"{source}: model_type {model_type!r} is not a family rafale has a model for; "
                         f"expected one of {', '.join(sorted(NAME_MAPS))}")
    architecture = ARCHITECTURES[model_type]["lm"]
    architectures = hf.get("architectures") or [architecture]
    if architectures != [architecture]:
        raise ModelError(f"{source}: architectures {architectures} is not supported; expected [{architecture!r}]")

    def need(key):
        if key not in hf:
            raise ModelError(f"{source}: {model_type} config has no {key!r}")
        return hf[key]

    neox = model_type == "gpt_neox"
    expected_act = "gelu" if neox else "silu"
    if hf.get("hidden_act", expected_act) != expected_act:
        raise ModelError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported for {model_type}; expected "
                         f"{expected_act!r}")
    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise ModelError(f"{source}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads; not supported")
    if hf.get("use_sliding_window"):
        raise ModelError(f"{source}: use_sliding_window is true; rafale's decoder has no sliding-window attention")

    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelError(f"{source}: rope_type {rope_type!r} is not supported; rafale implements default, llama3")
    rope_scaling = None
    if rope_type == "llama3":
        try:
            rope_scaling = {"factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
                            "high_freq_factor": rope["high_freq_factor"],
                            "original_max_seq_len": rope["original_max_position_embeddings"]}
        except KeyError as e:
            raise ModelError(f"{source}: llama3 rope scaling has no {e.args[0]!r}") from e

    common = dict(
        name=name or "decoder",
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
            raise ModelError(f"{source}: gpt_neox with attention_bias false is not supported")
        family = dict(rotary_pct=rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)),
                      parallel_residual=hf.get("use_parallel_residual", True), norm="layernorm",
                      norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="gelu", bias=True)
    else:
        bias = hf.get("attention_bias", False)
        if model_type == "llama" and bias != hf.get("mlp_bias", False):
            raise ModelError(f"{source}: llama with attention_bias != mlp_bias is not supported; rafale's bias "
                             f"switch covers both")
        family = dict(n_kv_head=hf.get("num_key_value_heads", n_head), norm="rmsnorm",
                      norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=model_type == "llama" and bias,
                      attn_qkv_bias=model_type == "qwen2")
    try:
        return DecoderConfig(**common, **family)
    except ValueError as e:
        raise ModelError(f"{source}: {e}") from e


def retnet_config_from_hf(hf: dict, name: Optional[str], source) -> RetNetConfig:
    """A RetNet's config.json holds RetNetConfig's own fields (transformers adds keys of its own when it saves)."""
    fields = {f.name: hf[f.name] for f in dataclasses.fields(RetNetConfig) if f.name in hf and f.name != "name"}
    try:
        return RetNetConfig(name=name or "retnet", **fields)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{source}: {e}") from e


def config_to_hf(config: DecoderConfig | EncoderConfig | RetNetConfig, head: str = "lm",
                 dtype: torch.dtype = torch.float32) -> dict:
    """The config.json transformers needs to rebuild a model of this config and head (4.x key names, which
    5.x also reads); `head` is "lm" for decoders, "backbone", "mlm" or "classification" for encoders.

    Raises:
        ModelError: no transformers architecture has this config's switches (see hf_model_type).
    """
    c, model_type = config, hf_model_type(config)
    hf = {"architectures": [ARCHITECTURES[model_type][head]], "model_type": model_type,
          "dtype": str(dtype).removeprefix("torch.")}
    if isinstance(c, EncoderConfig):
        return {**hf, **encoder_config_to_hf(c)}
    if isinstance(c, RetNetConfig):
        fields = {k: v for k, v in dataclasses.asdict(c).items() if k != "name"}
        return {**hf, **fields, "tie_word_embeddings": c.tie_embeddings}
    hf |= {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_seq_len,
        "tie_word_embeddings": c.tie_embeddings,
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


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def hf_to_rafale(hf_sd: dict, model: nn.Module, where) -> tuple[dict, list[str], list[str]]:
    """Check an HF state dict against what `model` needs, and convert it into `model`'s names and layout.

    `model` may be on the meta device: only its names, shapes and ties are read. Tensors the map drops
    (buffers rafale recomputes) are skipped; two HF names that load into one tensor (a tied weight written
    out, an old duplicate) must hold the same values. An encoder's head may be missing from either side.

    Returns:
        (state_dict, initialized, ignored): the model's parameters, a tied weight under its first name only;
        the model's head tensors the checkpoint lacks (left out of state_dict, to be initialised fresh);
        the checkpoint's head tensors the model lacks.
    Raises:
        ModelError: one message naming `where` and the tensors: missing ones, unexpected ones (names the
            map does not know, layers beyond the config), wrong shapes, integer dtypes, differing duplicates.
    """
    model_type = hf_model_type(model.config)
    name_map = NAME_MAPS[model_type]
    ties = tied_copies(model)
    expected = to_map_names(dict(model.named_parameters()), model)  # a tied weight once, under its first name
    state, source, unexpected, problems = {}, {}, [], []
    for key, t in hf_sd.items():
        try:
            ours = map_key(canonical_key(key, model_type) if model_type in ENCODER_MAPS else key, name_map)
        except ModelError:
            unexpected.append(key)
            continue
        ours = ties.get(ours, ours)
        if ours is None:
            continue
        if ours in state:
            if not torch.equal(state[ours], t):
                problems.append(f"'{source[ours]}' and '{key}' both load into '{ours}' but differ")
            continue
        state[ours], source[ours] = t, key

    def is_head(name):  # an encoder's head, which may be absent from either side
        return isinstance(model.config, EncoderConfig) and not name.startswith("encoder.")

    missing = [k for k in expected if k not in state]
    initialized = [k for k in missing if is_head(k)]
    missing = [map_key(k, inverted(name_map)) for k in missing if not is_head(k)]
    ignored = [source[k] for k in state if k not in expected and is_head(k)]
    unexpected += [source[k] for k in state if k not in expected and not is_head(k)]
    for k in [k for k in state if k in expected]:
        got, need = state[k], expected[k]
        if got.shape != need.shape:
            problems.append(f"{source[k]} has shape {tuple(got.shape)}, the config needs {tuple(need.shape)}")
        elif not got.is_floating_point():
            problems.append(f"{source[k]} has dtype {got.dtype}; rafale loads floating-point weights only")
    if unexpected:
        problems.insert(0, f"{_count(unexpected, 'unexpected tensor')} ({names(unexpected)})")
    if missing:
        problems.insert(0, f"{_count(missing, 'tensor')} missing ({names(missing)})")
    if problems:
        raise ModelError(f"{where}: weights do not fit its config.json: " + "; ".join(problems[:6]))
    return from_map_names({k: t for k, t in state.items() if k in expected}, model), initialized, ignored


def rafale_to_hf(model: nn.Module, tensors: Optional[dict] = None) -> dict:
    """Inverse of hf_to_rafale: `model`'s weights under the names and in the layout its transformers class
    saves (a tied weight once; the models keep no persistent buffers). `tensors`: only these, under
    `model`'s parameter names (a LoRA adapter's rows in a weight's layout, lora.py), instead of all."""
    model_type = hf_model_type(model.config)
    inverse = inverted(NAME_MAPS[model_type])
    tensors = dict(model.named_parameters()) if tensors is None else dict(tensors)
    tensors = {map_key(k, inverse): t for k, t in to_map_names(tensors, model).items()}
    if isinstance(model, Encoder):  # BertModel's own names have no 'bert.' prefix
        tensors = {k.removeprefix(f"{model_type}."): t for k, t in tensors.items()}
    return tensors


def tied_copies(model: nn.Module) -> dict[str, str]:
    """{second name: first name} for each parameter that one module shares with another (a tied weight)."""
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(p, name)
    return {name: first[p] for name, p in model.named_parameters(remove_duplicate=False) if first[p] != name}


def load_weights(model_class: type, config, hf_sd: dict, where, device="cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[nn.Module, list[str], list[str]]:
    """A `model_class(config)` filled from an HF state dict; see hf_to_rafale for the checks and what the
    two lists are. The model is built on the meta device (no memory, no random init), checked, then
    materialised and loaded strictly; only a head the checkpoint lacks gets a random init."""
    with on_meta():
        model = model_class(config)
    state, initialized, ignored = hf_to_rafale(hf_sd, model, where)
    ties = tied_copies(model)
    to_empty(model, device)
    model.to(dtype)
    for name, first in ties.items():  # to_empty gave each name of a tied weight its own storage
        module, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module), attr, model.get_parameter(first))
        state[name] = state[first]
    if isinstance(model, (Decoder, RetNet)):
        model.init_buffers()  # the rope tables (and RetNet's decays), which no checkpoint holds
    if initialized:
        encoder.init_weights(model, config)
        state |= {k: t for k, t in model.state_dict().items() if k in initialized}
    model.load_state_dict(state, strict=True)
    return model, initialized, ignored


def export_model(model: nn.Module, out_dir) -> Path:
    """Write any rafale model as config.json + model.safetensors in HF layout, which transformers' Auto
    classes load (AutoModelForCausalLM, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification).

    Raises:
        ModelError: the model's config has no transformers architecture (nothing is written then).
    """
    head = "lm" if isinstance(model, (Decoder, RetNet)) else \
        next((h for h, c in HEAD_CLASSES.items() if type(model) is c), None)
    if head is None:
        raise TypeError(f"export_model takes a Decoder, RetNet, Encoder, EncoderForMaskedLM or "
                        f"EncoderForSequenceClassification, got {type(model).__name__}")
    hf_config = config_to_hf(model.config, head, dtype=next(model.parameters()).dtype)  # first: may raise
    return write_hf_dir(out_dir, hf_config, rafale_to_hf(model))
