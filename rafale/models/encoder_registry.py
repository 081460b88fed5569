"""Named BERT and RoBERTa configs, as data: one dict of EncoderConfig fields per HF checkpoint.

Each dict is what `encoder_config_from_hf` makes of that checkpoint's config.json (the test suite checks
the parameter counts against transformers). The google/bert_uncased_L-*_H-*_A-* miniatures are from
"Well-Read Students Learn Better" (Turc et al., 2019); tiny/mini/small/medium are that paper's names.
"""

import dataclasses
import difflib

from rafale.errors import ModelError
from rafale.models.encoder import EncoderConfig

ENCODER_CONFIGS = [
    # https://huggingface.co/google/bert_uncased_L-2_H-128_A-2/blob/main/config.json
    dict(name="bert-tiny", vocab_size=30522, n_layer=2, n_head=2, n_embd=128, intermediate_size=512,
         max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0, layer_norm_eps=1e-12,
         classifier="bert"),
    # https://huggingface.co/google/bert_uncased_L-4_H-256_A-4/blob/main/config.json
    dict(name="bert-mini", vocab_size=30522, n_layer=4, n_head=4, n_embd=256, intermediate_size=1024,
         max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0, layer_norm_eps=1e-12,
         classifier="bert"),
    # https://huggingface.co/google/bert_uncased_L-4_H-512_A-8/blob/main/config.json
    dict(name="bert-small", vocab_size=30522, n_layer=4, n_head=8, n_embd=512, intermediate_size=2048,
         max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0, layer_norm_eps=1e-12,
         classifier="bert"),
    # https://huggingface.co/google/bert_uncased_L-8_H-512_A-8/blob/main/config.json
    dict(name="bert-medium", vocab_size=30522, n_layer=8, n_head=8, n_embd=512, intermediate_size=2048,
         max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0, layer_norm_eps=1e-12,
         classifier="bert"),
    # https://huggingface.co/google-bert/bert-base-uncased/blob/main/config.json
    dict(name="bert-base-uncased", vocab_size=30522, n_layer=12, n_head=12, n_embd=768, intermediate_size=3072,
         max_seq_len=512, type_vocab_size=2, pad_token_id=0, position_offset=0, layer_norm_eps=1e-12,
         classifier="bert"),
    # https://huggingface.co/FacebookAI/roberta-base/blob/main/config.json
    # (max_position_embeddings 514 there = 512 usable positions + position_offset 2)
    dict(name="roberta-base", vocab_size=50265, n_layer=12, n_head=12, n_embd=768, intermediate_size=3072,
         max_seq_len=512, type_vocab_size=1, pad_token_id=1, position_offset=2, layer_norm_eps=1e-5,
         classifier="roberta"),
]

name_to_encoder_config = {d["name"]: d for d in ENCODER_CONFIGS}


def encoder_config_from_name(name: str, **overrides) -> EncoderConfig:
    """Build the named EncoderConfig, with field overrides (e.g. `n_layer=2`).

    Raises:
        ModelError: the name is not in ENCODER_CONFIGS (the message suggests close names), or an
            override is not an EncoderConfig field.
        ValueError: the overrides make an inconsistent config (from EncoderConfig.__post_init__).
    """
    if name not in name_to_encoder_config:
        close = difflib.get_close_matches(name, name_to_encoder_config, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"'{name}' is not a supported encoder config name{hint} "
                         f"(known: {', '.join(name_to_encoder_config)})")
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ModelError(f"encoder config '{name}': unknown field(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(sorted(fields))}")
    return EncoderConfig(**{**name_to_encoder_config[name], **overrides})
