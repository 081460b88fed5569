"""Models: decoders (GPT-NeoX/Pythia, Llama, Qwen2), RetNet, encoders (BERT, RoBERTa), one registry, one loading path.

    from rafale.models import from_pretrained, get_config, model_from_config
    model = from_pretrained("runs/quickstart")            # a run dir, its final/, an HF-layout dir or a hub id
    model = from_pretrained("ckpt/bert", head="classification", num_labels=3)   # fresh head on a backbone
    model = model_from_config(get_config("pythia-14m", n_layer=2))             # from scratch, random init

`from_pretrained` dispatches on config.json's model_type: gpt_neox, llama and qwen2 give a Decoder
(logits), rafale_retnet a RetNet (the same interface: hidden_states, lm_head, make_kv_cache), bert and
roberta an encoder with the checkpoint's head (MLM logits, class logits, or the last hidden states of a
bare backbone). Every model is called as `model(input_ids, attention_mask=mask)`.

Importing this package imports torch and safetensors, never transformers.
"""

import dataclasses
import warnings
from pathlib import Path
from typing import Optional

import torch

from rafale.errors import ModelError
from rafale.models.checkpoint import (LoadReport, check_readable_weights, checkpoint_name, locate, read_hf_config,
                                      read_hf_weights)
from rafale.models.decoder import Decoder, DecoderConfig, KVCache
from rafale.models.encoder import Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification
from rafale.models.encoder_weights import HEAD_CLASSES, head_from_checkpoint
from rafale.models import lora
from rafale.models.registry import get_config, list_models, with_overrides
from rafale.models.retnet import RetNet, RetNetConfig
from rafale.models.weights import config_from_hf, export_model, load_weights

__all__ = [
    "Decoder", "DecoderConfig", "Encoder", "EncoderConfig", "EncoderForMaskedLM", "EncoderForSequenceClassification",
    "KVCache", "LoadReport", "build_model", "config_from_weights", "export_model", "from_pretrained", "get_config",
    "list_models", "load_pretrained", "model_from_config", "resolve_model_config", "RetNet", "RetNetConfig",
    "CAUSAL_LMS", "CAUSAL_LM_CONFIGS",
]

# The causal language models: they train on causal_lm/sft through ComposerLM and generate; same interface.
CAUSAL_LMS = (Decoder, RetNet)
CAUSAL_LM_CONFIGS = (DecoderConfig, RetNetConfig)

FROM_WEIGHTS = "from_weights"  # model.config value: take the shapes from the checkpoint's config.json
# Fields that do not change any tensor's shape: a checkpoint loads into a config that differs only in these.
NON_SHAPE_FIELDS = {"name", "dropout", "attn_dropout", "init_std", "num_labels", "chunk_size"}


def config_from_weights(path) -> DecoderConfig | EncoderConfig:
    """The config that an HF-layout dir's config.json describes, for any family rafale knows.

    Raises:
        ModelError: no config.json (the message lists what is there), or a model_type rafale has no model for.
    """
    path = Path(path)
    return config_from_hf(read_hf_config(path), name=checkpoint_name(path), source=path / "config.json")


def check_same_shapes(config, checkpoint_config, where) -> None:
    """Raise a ModelError listing the fields where `config` and a checkpoint's config give different shapes."""
    if type(config) is not type(checkpoint_config):
        kinds = {DecoderConfig: "a decoder", RetNetConfig: "a RetNet", EncoderConfig: "an encoder"}
        raise ModelError(f"model.config {config.name!r} is {kinds[type(config)]} but {where} holds "
                         f"{kinds[type(checkpoint_config)]}; set model.config: {FROM_WEIGHTS}")
    diffs = [f"{f.name} {getattr(config, f.name)} vs {getattr(checkpoint_config, f.name)}"
             for f in dataclasses.fields(config)
             if f.name not in NON_SHAPE_FIELDS and getattr(config, f.name) != getattr(checkpoint_config, f.name)]
    if diffs:
        raise ModelError(f"model.config {config.name!r} does not match {where}/config.json (entry vs checkpoint: "
                         f"{', '.join(diffs)}); set model.config: {FROM_WEIGHTS} to take the checkpoint's shapes")


def model_dir(weights_path) -> Path:
    """The located dir whose weights a model starts from: for a LoRA run saved with model.lora.merge: false
    (an adapter and no model of its own), its base's.

    Raises:
        ModelError: see checkpoint.locate; an adapter whose base model is missing.
    """
    path = locate(weights_path)
    adapter = lora.adapter_dir(path)
    return path if adapter is None else model_dir(lora.adapter_base(adapter))


def resolve_model_config(name: str, weights_path=None, **overrides) -> DecoderConfig | EncoderConfig:
    """The model config a run trains: a registry entry, or the checkpoint's own shapes.

    Args:
        name: a registry name (`rafale models`), or "from_weights" to read the shapes from the checkpoint.
        weights_path: model.weights (a model dir, a run dir or a hub id), or None to train from scratch.
        overrides: fields to replace (model.overrides); with weights, only those that keep the shapes
            (dropout, init_std, num_labels) make sense, and others are refused by the shape check.
    Raises:
        ModelError: unknown name or override, from_weights without weights, or a checkpoint whose shapes
            differ from the registry entry (the message lists the differing fields).
    """
    if name != FROM_WEIGHTS:
        config = get_config(name, **overrides)
        if weights_path is not None:
            path = model_dir(weights_path)
            check_readable_weights(path)
            check_same_shapes(config, config_from_weights(path), path)
        return config
    if weights_path is None:
        raise ModelError(f"model.config: {FROM_WEIGHTS} needs model.weights (a model dir, a run dir or a hub id)")
    path = model_dir(weights_path)
    check_readable_weights(path)
    config = config_from_weights(path)
    return with_overrides(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                          overrides)


def model_from_config(config: DecoderConfig | EncoderConfig, head: str = "mlm") -> torch.nn.Module:
    """A randomly initialised model for a config; `head` picks an encoder's head (decoders have one)."""
    if isinstance(config, DecoderConfig):
        return Decoder(config)
    if isinstance(config, RetNetConfig):
        return RetNet(config)
    if head not in HEAD_CLASSES:
        raise ModelError(f"model.head: {head!r} is not one of {', '.join(HEAD_CLASSES)}")
    return HEAD_CLASSES[head](config)


def build_model(config, *, head: str = "lm", weights=None, num_labels: Optional[int] = None,
                seed: int = 0) -> tuple[torch.nn.Module, LoadReport | None]:
    """The model a run trains, in train mode: filled from `weights` (with its LoadReport), or fresh from
    `seed` (report None); a head the weights lack is initialised from `seed` too. `head` is "lm" for
    decoders, "mlm" or "classification" (`num_labels`) for encoders."""
    if num_labels is not None:
        config = dataclasses.replace(config, num_labels=num_labels)
    torch.manual_seed(seed)  # also for what loading initialises fresh (a head the weights lack) and what follows
    if weights is not None:
        model, report = load_pretrained(weights, head=head, num_labels=num_labels, config=config)
        return model.train(), report
    return model_from_config(config, head=head).train(), None


def load_pretrained(weights_path, *, head: str = "auto", num_labels: Optional[int] = None,
                    config: DecoderConfig | EncoderConfig | None = None, device="cpu",
                    dtype: Optional[torch.dtype] = None) -> tuple[torch.nn.Module, LoadReport]:
    """The rafale model for a checkpoint of any family, in eval mode, and what loading did besides.

    Args:
        weights_path: an HF-layout dir (config.json + model.safetensors or shards), a rafale run dir or its
            final/, or a hub id (fetched once with huggingface_hub; only json, safetensors, tokenizer files).
        head: encoders only: "auto" (the checkpoint's own), "backbone", "mlm" or "classification". A head
            the checkpoint lacks is initialised fresh and listed in the report's `initialized`.
        num_labels: encoders: the classes of a fresh classification head.
        config: build from this config (resolve_model_config's) instead of config.json's; the shapes must
            agree, other fields (dropout) are taken from it.
        device, dtype: where the weights go; dtype None keeps float32 whatever the checkpoint stores.
    Returns:
        (model, report)
    Raises:
        ModelError: see checkpoint.locate, config_from_weights and weights.hf_to_rafale (one message for
            missing, unexpected and wrong-shape tensors).
    """
    path = locate(weights_path)
    adapter = lora.adapter_dir(path)
    if adapter is not None:  # a LoRA run saved with model.lora.merge: false: its base, the adapter merged in
        if head == "auto" and lora.adapter_task(adapter) == "SEQ_CLS":
            head, num_labels = "classification", num_labels or lora.adapter_num_labels(adapter)
        model, report = load_pretrained(lora.adapter_base(adapter), head=head, num_labels=num_labels,
                                        config=config, device=device, dtype=dtype)
        lora.merge_lora(lora.load_adapter(model, adapter)).requires_grad_(True)
        return model.eval(), report
    checkpoint_config = config_from_weights(path)
    if config is not None:
        check_same_shapes(config, checkpoint_config, path)
    config = config or checkpoint_config
    if num_labels is not None:
        if not isinstance(config, EncoderConfig):
            raise ModelError(f"{path}: num_labels is for an encoder's classification head; this is a decoder")
        config = dataclasses.replace(config, num_labels=num_labels)
        head = "classification" if head == "auto" else head
    hf_sd = read_hf_weights(path)
    if isinstance(config, CAUSAL_LM_CONFIGS):
        if head not in ("auto", "lm"):
            raise ModelError(f"{path}: a decoder checkpoint has only its language-model head, not {head!r}")
        model_class, head = (Decoder if isinstance(config, DecoderConfig) else RetNet), "lm"
    else:
        if head == "auto":
            head = head_from_checkpoint(read_hf_config(path), hf_sd, path / "config.json")
        if head not in HEAD_CLASSES:
            raise ModelError(f"head '{head}' is not one of auto, {', '.join(HEAD_CLASSES)}")
        model_class = HEAD_CLASSES[head]
    model, initialized, ignored = load_weights(model_class, config, hf_sd, path, device, dtype or torch.float32)
    return model.eval(), LoadReport(head, initialized, ignored)


def from_pretrained(weights_path, **kwargs) -> torch.nn.Module:
    """load_pretrained (same arguments) without the report; a freshly initialised head is announced with a
    warning."""
    model, report = load_pretrained(weights_path, **kwargs)
    if report.initialized:
        warnings.warn(f"{weights_path}: the checkpoint has no {report.head} head; initialised fresh: "
                      f"{', '.join(report.initialized)}", stacklevel=2)
    return model
