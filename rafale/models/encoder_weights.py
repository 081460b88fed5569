"""Load and export BERT/RoBERTa weights in Hugging Face's layout (config.json + safetensors).

Loading, in order:
  1. config.json -> EncoderConfig (`encoder_config_from_hf`, the one place HF's field names are read);
  2. model.safetensors, or the shards named in model.safetensors.index.json (checkpoint.read_hf_weights);
  3. every tensor name -> rafale name through one flat map per family (checkpoint.map_key);
  4. account for every tensor: names the map does not know, encoder tensors the config has no room for,
     missing encoder tensors and wrong shapes are errors that list the tensors. A head the checkpoint
     lacks (a BertModel loaded as a classifier) keeps its fresh init, and a head the model lacks (BERT's
     pooler in an MLM model) is skipped; both are reported in the returned LoadReport for the caller to print.
Export inverts the same maps, so a checkpoint that loads also round-trips.

The rafale names in the maps are those of the head models (`encoder.layers.0.attn.query.weight`); a bare
Encoder's parameters lack the `encoder.` prefix, which is added and removed at the edges. Only safetensors
is read: pickled pytorch_model.bin files can run code when loaded. Tensors are cast to the model's dtype
(fp32) as they are copied in.
"""

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from rafale.errors import ModelError
from rafale.models.checkpoint import LoadReport, map_key, names, read_hf_config, read_hf_weights
from rafale.models.encoder import Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification

# HF name -> rafale name; `{}` is the layer index; None: not a weight rafale keeps (buffers, BERT's NSP head).
BERT_TO_RAFALE = {
    "bert.embeddings.word_embeddings.weight": "encoder.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight": "encoder.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight": "encoder.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight": "encoder.ln_emb.weight",
    "bert.embeddings.LayerNorm.bias": "encoder.ln_emb.bias",
    "bert.embeddings.position_ids": None,
    "bert.encoder.layer.{}.attention.self.query.weight": "encoder.layers.{}.attn.query.weight",
    "bert.encoder.layer.{}.attention.self.query.bias": "encoder.layers.{}.attn.query.bias",
    "bert.encoder.layer.{}.attention.self.key.weight": "encoder.layers.{}.attn.key.weight",
    "bert.encoder.layer.{}.attention.self.key.bias": "encoder.layers.{}.attn.key.bias",
    "bert.encoder.layer.{}.attention.self.value.weight": "encoder.layers.{}.attn.value.weight",
    "bert.encoder.layer.{}.attention.self.value.bias": "encoder.layers.{}.attn.value.bias",
    "bert.encoder.layer.{}.attention.output.dense.weight": "encoder.layers.{}.attn.proj.weight",
    "bert.encoder.layer.{}.attention.output.dense.bias": "encoder.layers.{}.attn.proj.bias",
    "bert.encoder.layer.{}.attention.output.LayerNorm.weight": "encoder.layers.{}.ln_1.weight",
    "bert.encoder.layer.{}.attention.output.LayerNorm.bias": "encoder.layers.{}.ln_1.bias",
    "bert.encoder.layer.{}.intermediate.dense.weight": "encoder.layers.{}.mlp.fc.weight",
    "bert.encoder.layer.{}.intermediate.dense.bias": "encoder.layers.{}.mlp.fc.bias",
    "bert.encoder.layer.{}.output.dense.weight": "encoder.layers.{}.mlp.proj.weight",
    "bert.encoder.layer.{}.output.dense.bias": "encoder.layers.{}.mlp.proj.bias",
    "bert.encoder.layer.{}.output.LayerNorm.weight": "encoder.layers.{}.ln_2.weight",
    "bert.encoder.layer.{}.output.LayerNorm.bias": "encoder.layers.{}.ln_2.bias",
    "bert.pooler.dense.weight": "pooler.weight",
    "bert.pooler.dense.bias": "pooler.bias",
    "cls.predictions.transform.dense.weight": "dense.weight",
    "cls.predictions.transform.dense.bias": "dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "ln.weight",
    "cls.predictions.transform.LayerNorm.bias": "ln.bias",
    "cls.predictions.bias": "decoder.bias",
    "cls.predictions.decoder.bias": "decoder.bias",  # older saves write the tied bias twice
    "cls.predictions.decoder.weight": "encoder.word_embeddings.weight",  # tied; older saves write it
    "cls.seq_relationship.weight": None,
    "cls.seq_relationship.bias": None,
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}

ROBERTA_TO_RAFALE = {
    "roberta.embeddings.word_embeddings.weight": "encoder.word_embeddings.weight",
    "roberta.embeddings.position_embeddings.weight": "encoder.position_embeddings.weight",
    "roberta.embeddings.token_type_embeddings.weight": "encoder.token_type_embeddings.weight",
    "roberta.embeddings.LayerNorm.weight": "encoder.ln_emb.weight",
    "roberta.embeddings.LayerNorm.bias": "encoder.ln_emb.bias",
    "roberta.embeddings.position_ids": None,
    "roberta.encoder.layer.{}.attention.self.query.weight": "encoder.layers.{}.attn.query.weight",
    "roberta.encoder.layer.{}.attention.self.query.bias": "encoder.layers.{}.attn.query.bias",
    "roberta.encoder.layer.{}.attention.self.key.weight": "encoder.layers.{}.attn.key.weight",
    "roberta.encoder.layer.{}.attention.self.key.bias": "encoder.layers.{}.attn.key.bias",
    "roberta.encoder.layer.{}.attention.self.value.weight": "encoder.layers.{}.attn.value.weight",
    "roberta.encoder.layer.{}.attention.self.value.bias": "encoder.layers.{}.attn.value.bias",
    "roberta.encoder.layer.{}.attention.output.dense.weight": "encoder.layers.{}.attn.proj.weight",
    "roberta.encoder.layer.{}.attention.output.dense.bias": "encoder.layers.{}.attn.proj.bias",
    "roberta.encoder.layer.{}.attention.output.LayerNorm.weight": "encoder.layers.{}.ln_1.weight",
    "roberta.encoder.layer.{}.attention.output.LayerNorm.bias": "encoder.layers.{}.ln_1.bias",
    "roberta.encoder.layer.{}.intermediate.dense.weight": "encoder.layers.{}.mlp.fc.weight",
    "roberta.encoder.layer.{}.intermediate.dense.bias": "encoder.layers.{}.mlp.fc.bias",
    "roberta.encoder.layer.{}.output.dense.weight": "encoder.layers.{}.mlp.proj.weight",
    "roberta.encoder.layer.{}.output.dense.bias": "encoder.layers.{}.mlp.proj.bias",
    "roberta.encoder.layer.{}.output.LayerNorm.weight": "encoder.layers.{}.ln_2.weight",
    "roberta.encoder.layer.{}.output.LayerNorm.bias": "encoder.layers.{}.ln_2.bias",
    "roberta.pooler.dense.weight": None,  # RoBERTa's classifier never uses the backbone's pooler
    "roberta.pooler.dense.bias": None,
    "lm_head.dense.weight": "dense.weight",
    "lm_head.dense.bias": "dense.bias",
    "lm_head.layer_norm.weight": "ln.weight",
    "lm_head.layer_norm.bias": "ln.bias",
    "lm_head.bias": "decoder.bias",
    "lm_head.decoder.bias": "decoder.bias",  # older saves write the tied bias twice
    "lm_head.decoder.weight": "encoder.word_embeddings.weight",  # tied; older saves write it
    "classifier.dense.weight": "pooler.weight",
    "classifier.dense.bias": "pooler.bias",
    "classifier.out_proj.weight": "classifier.weight",
    "classifier.out_proj.bias": "classifier.bias",
}

NAME_MAPS = {"bert": BERT_TO_RAFALE, "roberta": ROBERTA_TO_RAFALE}
HEADS = {"backbone": Encoder, "mlm": EncoderForMaskedLM, "classification": EncoderForSequenceClassification}
HF_ARCHITECTURES = {
    "bert": {"backbone": "BertModel", "mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification"},
    "roberta": {"backbone": "RobertaModel", "mlm": "RobertaForMaskedLM",
                "classification": "RobertaForSequenceClassification"},
}


def rafale_to_hf(family: str) -> dict[str, str]:
    """The inverse name map for export. Where two HF names load into one rafale tensor (a tied weight, an
    old duplicate), the first one listed, today's spelling, wins."""
    inverse = {}
    for hf_name, ours in NAME_MAPS[family].items():
        if ours is not None:
            inverse.setdefault(ours, hf_name)
    return inverse


def _canonical_hf_key(key: str, family: str) -> str:
    """Undo two old spellings that HF still loads: LayerNorm.gamma/beta (BERT checkpoints converted in
    2019, bert-base-uncased among them) and base-model keys saved without the 'bert.'/'roberta.' prefix
    (BertModel.save_pretrained)."""
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key.split(".")[0] in ("embeddings", "encoder", "pooler"):
        key = f"{family}.{key}"
    return key


def encoder_config_from_hf(hf: dict, name: str | None = None, source: str = "config.json") -> EncoderConfig:
    """Translate an HF BERT/RoBERTa config.json (as a dict) into an EncoderConfig.

    Args:
        hf: the parsed config.json.
        name: the config's name in rafale (default: the model_type).
        source: where `hf` came from, for error messages.

    Raises:
        ModelError: model_type is not bert/roberta, a size field is missing, or a feature rafale's encoder
            does not implement is switched on (non-GELU activation, relative positions, decoder mode).
    """
    family = hf.get("model_type")
    if family not in NAME_MAPS:
        raise ModelError(f"{source}: model_type '{family}' is not an encoder rafale knows; "
                         f"expected one of {', '.join(NAME_MAPS)}")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")
    for key in required:
        if not isinstance(hf.get(key), int):
            raise ModelError(f"{source}: '{key}' must be an integer, found {hf.get(key)!r}")
    unsupported = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                   "add_cross_attention": False}
    for key, supported in unsupported.items():
        if hf.get(key, supported) != supported:
            raise ModelError(f"{source}: {key} {hf[key]!r} is not supported; rafale's encoder needs {supported!r}")
    pad = hf.get("pad_token_id")
    pad = (1 if family == "roberta" else 0) if pad is None else pad
    offset = pad + 1 if family == "roberta" else 0
    labels = hf.get("id2label")
    try:
        return EncoderConfig(
            name=name or family,
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"] - offset,
            type_vocab_size=hf.get("type_vocab_size", 2),
            pad_token_id=pad,
            position_offset=offset,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            init_std=hf.get("initializer_range", 0.02),
            num_labels=len(labels) if labels else hf.get("num_labels", 2),
            classifier=family,
        )
    except ValueError as e:
        raise ModelError(f"{source}: {e}") from None


def hf_family(config: EncoderConfig) -> str:
    """The HF model_type a config corresponds to: 'bert' or 'roberta'.

    Raises:
        ModelError: the config mixes BERT positions with RoBERTa's classifier or the reverse.
    """
    if config.classifier == "bert" and config.position_offset == 0:
        return "bert"
    if config.classifier == "roberta" and config.position_offset > 0:
        return "roberta"
    raise ModelError(f"encoder config '{config.name}': classifier '{config.classifier}' with position_offset "
                     f"{config.position_offset} is neither HF BERT ('bert', 0) nor RoBERTa ('roberta', pad + 1)")


def encoder_config_to_hf(config: EncoderConfig, head: str = "mlm") -> dict:
    """The HF config.json (as a dict) for an EncoderConfig and a head ("backbone", "mlm", "classification")."""
    family = hf_family(config)
    return {
        "architectures": [HF_ARCHITECTURES[family][head]],
        "model_type": family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "max_position_embeddings": config.n_positions,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.init_std,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "id2label": {str(i): f"LABEL_{i}" for i in range(config.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(config.num_labels)},
    }


def _head_from_checkpoint(hf: dict, keys: list[str], source: str) -> str:
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
    # no architectures entry: go by the tensors
    if any(k.startswith(("cls.predictions.", "lm_head.")) for k in keys):
        return "mlm"
    if any(k.startswith("classifier.") for k in keys):
        return "classification"
    return "backbone"


def load_hf_encoder(path: str | Path, head: str = "auto",
                    config: EncoderConfig | None = None) -> tuple[torch.nn.Module, LoadReport]:
    """Build a rafale encoder from an HF-layout BERT/RoBERTa directory.

    Args:
        path: a directory with config.json and model.safetensors (or sharded safetensors + index).
        head: "mlm", "classification", "backbone", or "auto" (from config.json's architectures, else from
            the tensor names).
        config: build the model from this config instead of config.json's translation (same shapes, other
            dropout or num_labels); the tensors are still checked against it.

    Returns:
        (model, report): the model in eval mode, and a LoadReport listing freshly initialised tensors (a head
        the checkpoint lacks) and checkpoint tensors left unused (a head the model lacks).

    Raises:
        ModelError: a missing directory/config/weights, a corrupt file, an unknown model_type, tensors the
            name map does not know or the config has no room for, missing encoder tensors, wrong shapes.
    """
    path = Path(path)
    hf_config = read_hf_config(path)
    if config is None:
        config = encoder_config_from_hf(hf_config, name=path.name, source=str(path / "config.json"))
    family = hf_config["model_type"]
    hf_tensors = read_hf_weights(path)
    if head == "auto":
        head = _head_from_checkpoint(hf_config, list(hf_tensors), str(path / "config.json"))
    if head not in HEADS:
        raise ModelError(f"head '{head}' is not one of auto, {', '.join(HEADS)}")
    model = HEADS[head](config)
    prefix = "encoder." if head == "backbone" else ""
    expected = {prefix + name: p for name, p in model.named_parameters()}  # the tied decoder appears once

    state, source, unknown = {}, {}, []
    for key, tensor in hf_tensors.items():
        try:
            ours = map_key(_canonical_hf_key(key, family), NAME_MAPS[family])
        except ModelError:
            unknown.append(key)
            continue
        if ours is None:
            continue
        if ours in state and not torch.equal(state[ours], tensor):
            raise ModelError(f"{path}: '{source[ours]}' and '{key}' both load into '{ours}' but differ; rafale "
                             f"ties the MLM decoder to the word embeddings")
        state[ours], source[ours] = tensor, key
    if unknown:
        raise ModelError(f"{path}: {len(unknown)} tensor(s) not in the {family} name map: {names(unknown)}")
    unexpected = [source[k] for k in state if k not in expected and k.startswith("encoder.")]
    if unexpected:
        raise ModelError(f"{path}: tensor(s) with no place in a model built from config.json "
                         f"(n_layer={config.n_layer}): {names(unexpected)}")
    missing = [k for k in expected if k not in state and k.startswith("encoder.")]
    if missing:
        to_hf = rafale_to_hf(family)
        missing = [map_key(k, to_hf) for k in missing]
        raise ModelError(f"{path}: missing encoder tensor(s): {names(missing)}")
    wrong = [f"{source[k]} {tuple(t.shape)} vs {tuple(expected[k].shape)}"
             for k, t in state.items() if k in expected and t.shape != expected[k].shape]
    if wrong:
        raise ModelError(f"{path}: tensor shape(s) differ from what config.json implies (checkpoint vs model): "
                         f"{names(wrong)}")

    with torch.no_grad():
        for k, t in state.items():
            if k in expected:
                expected[k].copy_(t)
    report = LoadReport(head=head,
                        initialized=[k.removeprefix(prefix) for k in expected if k not in state],
                        ignored=[source[k] for k in state if k not in expected])
    return model.eval(), report


def export_hf_encoder(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write a rafale encoder as an HF-layout directory (config.json + model.safetensors) that transformers'
    Auto classes load: AutoModel (backbone), AutoModelForMaskedLM, AutoModelForSequenceClassification.

    Each file is written to a temporary name and renamed, so a failure leaves no half-written file.

    Returns:
        the output directory.

    Raises:
        ModelError: the model's config has no HF equivalent (see hf_family).
    """
    head = next((h for h, cls in HEADS.items() if type(model) is cls), None)
    if head is None:
        raise TypeError(f"export_hf_encoder takes an Encoder, EncoderForMaskedLM or "
                        f"EncoderForSequenceClassification, got {type(model).__name__}")
    family = hf_family(model.config)
    to_hf = rafale_to_hf(family)
    prefix = "encoder." if head == "backbone" else ""
    tensors = {}
    for name, p in model.named_parameters():
        hf_name = map_key(prefix + name, to_hf)
        if head == "backbone":
            hf_name = hf_name.removeprefix(f"{family}.")  # BertModel's own layout has no prefix
        tensors[hf_name] = p.detach().to("cpu").contiguous()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors.tmp", metadata={"format": "pt"})
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    (out / "config.json.tmp").write_text(json.dumps(encoder_config_to_hf(model.config, head), indent=2) + "\n")
    os.replace(out / "config.json.tmp", out / "config.json")
    return out
