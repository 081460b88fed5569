"""BERT and RoBERTa in Hugging Face's layout: the encoders' name maps and config translation.

weights.py loads and exports every family through the same steps; what is particular to encoders is here:
  - one backbone map, which the two families share under their own prefix ('bert.' or 'roberta.');
  - their heads, whose HF names differ: BERT's `cls.predictions`, RoBERTa's `lm_head` and `classifier.dense`;
  - `canonical_key`, two old spellings that HF still loads (bert-base-uncased uses one of them);
  - config.json <-> EncoderConfig, and which head a checkpoint holds.

The rafale names in the maps are those of the head models (`encoder.layers.0.attn.query.weight`); a bare
Encoder's parameters lack the `encoder.` prefix, which weights.py adds and removes at the edges. A head
the checkpoint lacks (a BertModel loaded as a classifier) starts fresh, and a head the model lacks (BERT's
pooler in an MLM model) is skipped; both are listed in the LoadReport.
"""

import re

from rafale.errors import ModelError
from rafale.models.encoder import Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification

# HF name -> rafale name; `{}` is the layer index; None: not a weight rafale keeps (buffers, BERT's NSP head).
# The names BertModel and RobertaModel save; their *ForMaskedLM/*ForSequenceClassification prefix them.
BACKBONE = {
    "embeddings.word_embeddings.weight": "encoder.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "encoder.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "encoder.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "encoder.ln_emb.weight",
    "embeddings.LayerNorm.bias": "encoder.ln_emb.bias",
    "embeddings.position_ids": None,
    "encoder.layer.{}.attention.self.query.weight": "encoder.layers.{}.attn.query.weight",
    "encoder.layer.{}.attention.self.query.bias": "encoder.layers.{}.attn.query.bias",
    "encoder.layer.{}.attention.self.key.weight": "encoder.layers.{}.attn.key.weight",
    "encoder.layer.{}.attention.self.key.bias": "encoder.layers.{}.attn.key.bias",
    "encoder.layer.{}.attention.self.value.weight": "encoder.layers.{}.attn.value.weight",
    "encoder.layer.{}.attention.self.value.bias": "encoder.layers.{}.attn.value.bias",
    "encoder.layer.{}.attention.output.dense.weight": "encoder.layers.{}.attn.proj.weight",
    "encoder.layer.{}.attention.output.dense.bias": "encoder.layers.{}.attn.proj.bias",
    "encoder.layer.{}.attention.output.LayerNorm.weight": "encoder.layers.{}.ln_1.weight",
    "encoder.layer.{}.attention.output.LayerNorm.bias": "encoder.layers.{}.ln_1.bias",
    "encoder.layer.{}.intermediate.dense.weight": "encoder.layers.{}.mlp.fc.weight",
    "encoder.layer.{}.intermediate.dense.bias": "encoder.layers.{}.mlp.fc.bias",
    "encoder.layer.{}.output.dense.weight": "encoder.layers.{}.mlp.proj.weight",
    "encoder.layer.{}.output.dense.bias": "encoder.layers.{}.mlp.proj.bias",
    "encoder.layer.{}.output.LayerNorm.weight": "encoder.layers.{}.ln_2.weight",
    "encoder.layer.{}.output.LayerNorm.bias": "encoder.layers.{}.ln_2.bias",
}


def backbone(prefix: str) -> dict:
    return {f"{prefix}.{hf_name}": ours for hf_name, ours in BACKBONE.items()}


def mlm_decoder(prefix: str) -> dict:
    """The MLM head's output layer: a bias, plus two names older saves also write, which must hold the same
    values: the bias again, and the weight tied to the word embeddings."""
    return {f"{prefix}.bias": "decoder.bias", f"{prefix}.decoder.bias": "decoder.bias",
            f"{prefix}.decoder.weight": "encoder.word_embeddings.weight"}


BERT = {
    **backbone("bert"),
    "bert.pooler.dense.weight": "pooler.weight",
    "bert.pooler.dense.bias": "pooler.bias",
    "cls.predictions.transform.dense.weight": "dense.weight",
    "cls.predictions.transform.dense.bias": "dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "ln.weight",
    "cls.predictions.transform.LayerNorm.bias": "ln.bias",
    **mlm_decoder("cls.predictions"),
    "cls.seq_relationship.weight": None,
    "cls.seq_relationship.bias": None,
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}

ROBERTA = {
    **backbone("roberta"),
    "roberta.pooler.dense.weight": None,  # RoBERTa's classifier never uses the backbone's pooler
    "roberta.pooler.dense.bias": None,
    "lm_head.dense.weight": "dense.weight",
    "lm_head.dense.bias": "dense.bias",
    "lm_head.layer_norm.weight": "ln.weight",
    "lm_head.layer_norm.bias": "ln.bias",
    **mlm_decoder("lm_head"),
    "classifier.dense.weight": "pooler.weight",
    "classifier.dense.bias": "pooler.bias",
    "classifier.out_proj.weight": "classifier.weight",
    "classifier.out_proj.bias": "classifier.bias",
}

NAME_MAPS = {"bert": BERT, "roberta": ROBERTA}
HEAD_CLASSES = {"backbone": Encoder, "mlm": EncoderForMaskedLM, "classification": EncoderForSequenceClassification}


def canonical_key(key: str, family: str) -> str:
    """Undo two old spellings that HF still loads: LayerNorm.gamma/beta (BERT checkpoints converted in
    2019, bert-base-uncased among them) and base-model keys saved without the 'bert.'/'roberta.' prefix
    (BertModel.save_pretrained)."""
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key.split(".")[0] in ("embeddings", "encoder", "pooler"):
        key = f"{family}.{key}"
    return key


# config.json key -> EncoderConfig field, both ways; a key config.json lacks keeps the field's default,
# which is transformers' default too. Positions, padding, labels and the family are translated below.
CONFIG_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                 "num_attention_heads": "n_head", "intermediate_size": "intermediate_size",
                 "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
                 "hidden_dropout_prob": "dropout", "attention_probs_dropout_prob": "attn_dropout",
                 "initializer_range": "init_std"}
# what rafale's encoder implements; a config.json that switches on anything else is refused
FIXED = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}


def encoder_config_from_hf(hf: dict, name: str | None = None, source: str = "config.json") -> EncoderConfig:
    """Translate an HF BERT/RoBERTa config.json (as a dict) into an EncoderConfig; `source` is where `hf`
    came from, for error messages.

    Raises:
        ModelError: a size field is missing, or a feature rafale's encoder does not implement is switched
            on (non-GELU activation, relative positions, decoder mode).
    """
    family = hf["model_type"]
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"):
        if not isinstance(hf.get(key), int):
            raise ModelError(f"{source}: '{key}' must be an integer, found {hf.get(key)!r}")
    for key, supported in FIXED.items():
        if hf.get(key, supported) != supported:
            raise ModelError(f"{source}: {key} {hf[key]!r} is not supported; rafale's encoder needs {supported!r}")
    pad = hf.get("pad_token_id")
    pad = (1 if family == "roberta" else 0) if pad is None else pad
    offset = pad + 1 if family == "roberta" else 0
    labels = hf.get("id2label")
    try:
        return EncoderConfig(name=name or family, **{ours: hf[key] for key, ours in CONFIG_FIELDS.items() if key in hf},
                             max_seq_len=hf["max_position_embeddings"] - offset, pad_token_id=pad,
                             position_offset=offset, num_labels=len(labels) if labels else hf.get("num_labels", 2),
                             classifier=family)
    except ValueError as e:
        raise ModelError(f"{source}: {e}") from None


def encoder_config_to_hf(config: EncoderConfig) -> dict:
    """The size and switch fields of an HF BERT/RoBERTa config.json (weights.config_to_hf adds the class)."""
    labels = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
    return {**{key: getattr(config, ours) for key, ours in CONFIG_FIELDS.items()}, **FIXED,
            "max_position_embeddings": config.n_positions, "pad_token_id": config.pad_token_id,
            "tie_word_embeddings": True, "id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}


def head_from_checkpoint(hf: dict, keys, source) -> str:
    """The head an encoder checkpoint holds: from config.json's architectures, else from its tensor names."""
    arch = (hf.get("architectures") or [""])[0]
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        return "mlm"
    if arch.endswith("ForSequenceClassification"):
        return "classification"
    if arch.endswith("Model"):
        return "backbone"
    if arch:
        raise ModelError(f"{source}: architecture '{arch}' has no rafale head; pass head='backbone' to load the "
                         f"encoder alone")
    if any(k.startswith(("cls.predictions.", "lm_head.")) for k in keys):
        return "mlm"
    if any(k.startswith("classifier.") for k in keys):
        return "classification"
    return "backbone"
