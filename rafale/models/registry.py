"""Named model configs (decoders, RetNets, encoders): one plain dict per checkpoint, headed by its config.json.

    get_config("pythia-160m")                      -> DecoderConfig with the HF shapes
    get_config("bert-tiny", num_labels=3)          -> EncoderConfig, with overrides (any field of the config)
    list_models()                                  -> [(name, family, parameter count), ...]

Shapes are the checkpoints' own (vocab_size included, as stored: Pythia's is padded to 50304, and to
50432/50688 for 6.9b/12b). A config only describes the architecture; weights come from `model.weights`
through rafale.models.from_pretrained. tests/models/test_registry.py checks every entry's parameter count
against transformers built from the translated config.
"""

import copy
import dataclasses
import difflib

import torch

from rafale.errors import ModelError
from rafale.models.decoder import Decoder, DecoderConfig
from rafale.models.encoder import EncoderConfig, EncoderForMaskedLM
from rafale.models.meta import on_meta
from rafale.models.retnet import RetNet, RetNetConfig
from rafale.models.weights import hf_model_type

# The switches each family shares; the entries below add their sizes.
GPT_NEOX = dict(rotary_pct=0.25, rope_theta=10000.0, parallel_residual=True, norm="layernorm", norm_eps=1e-5,
                mlp="gelu", bias=True, tie_embeddings=False)
LLAMA = dict(rotary_pct=1.0, parallel_residual=False, norm="rmsnorm", mlp="swiglu", bias=False)
BERT = dict(vocab_size=30522, max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0,
            layer_norm_eps=1e-12, classifier="bert")
ROBERTA = dict(max_seq_len=512, type_vocab_size=1, pad_token_id=1, position_offset=2, layer_norm_eps=1e-5,
               classifier="roberta")

decoders = [
    # ---- EleutherAI Pythia ----
    # https://huggingface.co/EleutherAI/pythia-14m/blob/main/config.json
    dict(GPT_NEOX, name="pythia-14m", vocab_size=50304, n_layer=6, n_head=4, n_embd=128, intermediate_size=512,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-31m/blob/main/config.json
    dict(GPT_NEOX, name="pythia-31m", vocab_size=50304, n_layer=6, n_head=8, n_embd=256, intermediate_size=1024,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-70m/blob/main/config.json
    dict(GPT_NEOX, name="pythia-70m", vocab_size=50304, n_layer=6, n_head=8, n_embd=512, intermediate_size=2048,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-160m/blob/main/config.json
    dict(GPT_NEOX, name="pythia-160m", vocab_size=50304, n_layer=12, n_head=12, n_embd=768, intermediate_size=3072,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-410m/blob/main/config.json
    dict(GPT_NEOX, name="pythia-410m", vocab_size=50304, n_layer=24, n_head=16, n_embd=1024, intermediate_size=4096,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-1b/blob/main/config.json
    dict(GPT_NEOX, name="pythia-1b", vocab_size=50304, n_layer=16, n_head=8, n_embd=2048, intermediate_size=8192,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-1.4b/blob/main/config.json
    dict(GPT_NEOX, name="pythia-1.4b", vocab_size=50304, n_layer=24, n_head=16, n_embd=2048, intermediate_size=8192,
         max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-2.8b/blob/main/config.json
    dict(GPT_NEOX, name="pythia-2.8b", vocab_size=50304, n_layer=32, n_head=32, n_embd=2560,
         intermediate_size=10240, max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-6.9b/blob/main/config.json
    dict(GPT_NEOX, name="pythia-6.9b", vocab_size=50432, n_layer=32, n_head=32, n_embd=4096,
         intermediate_size=16384, max_seq_len=2048),
    # https://huggingface.co/EleutherAI/pythia-12b/blob/main/config.json
    dict(GPT_NEOX, name="pythia-12b", vocab_size=50688, n_layer=36, n_head=40, n_embd=5120,
         intermediate_size=20480, max_seq_len=2048),
    # ---- Llama-style: SmolLM, TinyLlama, Llama 3.2 ----
    # https://huggingface.co/HuggingFaceTB/SmolLM-135M/blob/main/config.json
    dict(LLAMA, name="SmolLM-135M", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
         intermediate_size=1536, max_seq_len=2048, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True),
    # https://huggingface.co/HuggingFaceTB/SmolLM-360M/blob/main/config.json
    dict(LLAMA, name="SmolLM-360M", vocab_size=49152, n_layer=32, n_head=15, n_kv_head=5, n_embd=960,
         intermediate_size=2560, max_seq_len=2048, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True),
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/blob/main/config.json
    dict(LLAMA, name="TinyLlama-1.1B", vocab_size=32000, n_layer=22, n_head=32, n_kv_head=4, n_embd=2048,
         intermediate_size=5632, max_seq_len=2048, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False),
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    # llama3 rope scaling is implemented (decoder.rope_inv_freq), so parity holds at every length.
    dict(LLAMA, name="Llama-3.2-1B", vocab_size=128256, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048,
         intermediate_size=8192, max_seq_len=131072, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True,
         rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)),
    # ---- Qwen2.5 ----
    # https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json
    dict(LLAMA, name="Qwen2.5-0.5B", vocab_size=151936, n_layer=24, n_head=14, n_kv_head=2, n_embd=896,
         intermediate_size=4864, max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
         attn_qkv_bias=True),
    # ---- From scratch, for quick CPU experiments (vocab_size 4096: pass another for your tokenizer) ----
    # GPT-NeoX switches: 1.8M parameters, 0.8M of them outside the embeddings
    dict(GPT_NEOX, name="pythia-tiny", vocab_size=4096, n_layer=4, n_head=4, n_embd=128, intermediate_size=512,
         max_seq_len=1024),
    # Llama switches, grouped-query attention, tied embeddings: 1.3M parameters, 0.8M outside the embeddings
    dict(LLAMA, name="llama-tiny", vocab_size=4096, n_layer=4, n_head=4, n_kv_head=2, n_embd=128,
         intermediate_size=384, max_seq_len=1024, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True),
]

# ---- BERT and RoBERTa encoders. The google/bert_uncased_L-*_H-*_A-* miniatures are from "Well-Read
# Students Learn Better" (Turc et al., 2019); tiny/mini/small/medium are that paper's names.
encoders = [
    # https://huggingface.co/google/bert_uncased_L-2_H-128_A-2/blob/main/config.json
    dict(BERT, name="bert-tiny", n_layer=2, n_head=2, n_embd=128, intermediate_size=512),
    # https://huggingface.co/google/bert_uncased_L-4_H-256_A-4/blob/main/config.json
    dict(BERT, name="bert-mini", n_layer=4, n_head=4, n_embd=256, intermediate_size=1024),
    # https://huggingface.co/google/bert_uncased_L-4_H-512_A-8/blob/main/config.json
    dict(BERT, name="bert-small", n_layer=4, n_head=8, n_embd=512, intermediate_size=2048),
    # https://huggingface.co/google/bert_uncased_L-8_H-512_A-8/blob/main/config.json
    dict(BERT, name="bert-medium", n_layer=8, n_head=8, n_embd=512, intermediate_size=2048),
    # https://huggingface.co/google-bert/bert-base-uncased/blob/main/config.json
    dict(BERT, name="bert-base-uncased", n_layer=12, n_head=12, n_embd=768, intermediate_size=3072),
    # https://huggingface.co/FacebookAI/roberta-base/blob/main/config.json
    # (max_position_embeddings 514 there = 512 usable positions + position_offset 2)
    dict(ROBERTA, name="roberta-base", vocab_size=50265, n_layer=12, n_head=12, n_embd=768, intermediate_size=3072),
]

# ---- RetNet (rafale.models.retnet), trained from scratch: no published checkpoints. Each matches a Pythia
# size (tests/models/test_retnet.py holds them within 5%): its width, depth, heads and vocabulary, with
# the paper's FFN of 2 * n_embd, so that retention's 8 n_embd^2 weights plus the FFN's 4 n_embd^2 are a
# Pythia block's 4 + 8 (its biases aside).
retnets = [
    dict(name="retnet-14m", vocab_size=50304, n_layer=6, n_head=4, n_embd=128, max_seq_len=2048),  # pythia-14m
    dict(name="retnet-31m", vocab_size=50304, n_layer=6, n_head=8, n_embd=256, max_seq_len=2048),  # pythia-31m
    dict(name="retnet-70m", vocab_size=50304, n_layer=6, n_head=8, n_embd=512, max_seq_len=2048),  # pythia-70m
    dict(name="retnet-160m", vocab_size=50304, n_layer=12, n_head=12, n_embd=768, max_seq_len=2048),  # pythia-160m
]

name_to_config = {c["name"]: c for c in decoders + retnets + encoders}
encoder_names = {c["name"] for c in encoders}
retnet_names = {c["name"] for c in retnets}


def get_config(name: str, **overrides) -> DecoderConfig | RetNetConfig | EncoderConfig:
    """The registry entry `name` as a DecoderConfig, RetNetConfig or EncoderConfig, with any field replaced by
    `overrides`.

    Raises:
        ModelError: unknown name (with the closest known one), unknown override key, or overrides that
            make the config inconsistent.
    """
    if name not in name_to_config:
        lowered = {n.lower(): n for n in name_to_config}
        close = difflib.get_close_matches(name.lower(), lowered, n=1)
        hint = f"; did you mean {lowered[close[0]]!r}?" if close else ""
        raise ModelError(f"model.config: {name!r} is not a known model{hint} (see `rafale models`)")
    config_class = EncoderConfig if name in encoder_names else RetNetConfig if name in retnet_names else DecoderConfig
    return with_overrides(config_class, copy.deepcopy(name_to_config[name]), overrides)


def with_overrides(config_class, fields: dict, overrides: dict):
    """`config_class(**fields)` with `overrides` replacing fields (model.overrides), checked by the config.

    Raises:
        ModelError: an override that is not a field, or a combination the config refuses.
    """
    known = sorted(f.name for f in dataclasses.fields(config_class))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ModelError(f"model.overrides: unknown key {unknown[0]!r}; valid keys: {', '.join(known)}")
    try:
        return config_class(**{**fields, **overrides})
    except ValueError as e:
        raise ModelError(f"model.overrides: {e}") from e


def list_models() -> list[tuple[str, str, int]]:
    """(name, family, parameter count) for every entry, counted on the meta device so nothing is allocated.

    The family is the transformers model_type. Encoders are counted with their masked-LM head, as
    transformers' *ForMaskedLM classes are (no pooler; the tied decoder weight once).
    """
    rows = []
    for name in name_to_config:
        config = get_config(name)
        with on_meta():
            if isinstance(config, EncoderConfig):
                n_params = sum(p.numel() for p in EncoderForMaskedLM(config).parameters())
            else:
                n_params = (RetNet if isinstance(config, RetNetConfig) else Decoder)(config).num_params()
        rows.append((name, hf_model_type(config), n_params))
    return rows
