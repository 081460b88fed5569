"""From a validated Config to a Composer Trainer: model, dataloaders, optimizer, schedule, precision.

`build_model` applies the rules that tie the model to the data: a model trained from scratch takes the
tokenizer's vocabulary (padded up to a multiple of 64 for faster matmuls); a model loaded from weights
keeps its own, and the tokenizer must fit in it. The block size must fit in the model's positions.

Which model trains on which pipeline, and through which Composer wrapper:

    causal_lm, sft     a decoder (ComposerLM) or a transformers causal LM (`model.hf`, HuggingFaceModel)
    classification     an encoder with a classification head, num_labels from the data (ComposerClassifier)
    mlm                an encoder with its masked-LM head (ComposerMLM)
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.models import ComposerModel
from composer.optim import (ConstantScheduler, ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler, DecoupledAdamW,
                            LinearWithWarmupScheduler)
from composer.utils import dist

from rafale.config import Config, _time
from rafale.data.prepare import PreparedData
from rafale.errors import ConfigError, ModelError

VOCAB_MULTIPLE = 64
DECODER_PIPELINES = ("causal_lm", "sft")
ENCODER_HEADS = {"classification": "classification", "mlm": "mlm"}  # pipeline -> encoder head
# Composer warns when the last eval batch is smaller than the eval microbatch: expected, and harmless.
warnings.filterwarnings("ignore", message="Cannot split tensor of length")
# A warmup fraction of a very short run rounds to 0 batches; Composer then warns once per step.
warnings.filterwarnings("ignore", message="The warmup duration is 0")


def model_config(cfg: Config, vocab_size: int | None = None):
    """The model config the run trains: the registry entry, or the checkpoint's own shapes
    (`model.config: from_weights`), with model.overrides applied.

    From scratch the vocabulary comes from the tokenizer unless overridden; with model.weights the
    checkpoint's vocabulary stays (check_fits then checks the tokenizer fits in it). Called once before
    data preparation (vocab unknown yet) so a bad name or checkpoint fails before any work.
    """
    from rafale.models import resolve_model_config

    overrides = dict(cfg.model.overrides)
    if vocab_size is not None and cfg.model.weights is None:
        overrides.setdefault("vocab_size", math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    try:
        return resolve_model_config(cfg.model.config, cfg.model.weights, **overrides)
    except ModelError as e:
        raise ModelError(f"{cfg.source_path}: {e}") from None


def check_pipeline(cfg: Config, mc) -> None:
    """A decoder trains on causal_lm or sft, an encoder on classification or mlm."""
    from rafale.models import DecoderConfig

    pipeline = cfg.data.pipeline
    is_decoder = isinstance(mc, DecoderConfig)
    allowed = DECODER_PIPELINES if is_decoder else tuple(ENCODER_HEADS)
    if pipeline not in allowed:
        kind = "a decoder" if is_decoder else "an encoder"
        raise ConfigError(f"{cfg.source_path}: data.pipeline: {pipeline!r} does not train {kind} "
                          f"(model {mc.name!r}); expected one of {', '.join(allowed)}, or a model that fits "
                          f"the pipeline")


def check_model(cfg: Config) -> None:
    """Everything about the model that can fail before any data work: name, checkpoint, pipeline, block size."""
    if cfg.model.hf is not None:
        if cfg.data.pipeline not in DECODER_PIPELINES:
            raise ConfigError(f"{cfg.source_path}: data.pipeline: {cfg.data.pipeline!r} with model.hf; model.hf "
                              f"trains a causal LM, expected one of {', '.join(DECODER_PIPELINES)}")
        return
    mc = model_config(cfg)
    check_pipeline(cfg, mc)
    check_fits(cfg, mc)


def build_model(cfg: Config, data: PreparedData):
    """The model to train, and the LoadReport of its checkpoint (None when there is none).

    model.hf gives a Composer HuggingFaceModel; otherwise a rafale Decoder or encoder with the head the
    pipeline needs (a checkpoint without that head gets a fresh one, listed in the report).
    """
    from rafale.models import EncoderConfig, load_pretrained, model_from_config

    tok_vocab = data.tokenizer.vocab_size
    if cfg.model.hf is not None:
        return build_hf(cfg, tok_vocab), None
    mc = model_config(cfg, tok_vocab)
    check_pipeline(cfg, mc)
    head, num_labels = "auto", None
    if isinstance(mc, EncoderConfig):
        head = ENCODER_HEADS[cfg.data.pipeline]
        if head == "classification":
            num_labels = len(data.meta["labels"])
            mc = dataclasses.replace(mc, num_labels=num_labels)
    report = None
    if cfg.model.weights is not None:
        model, report = load_pretrained(cfg.model.weights, head=head, num_labels=num_labels, config=mc)
        model.train()
        where = f"model.weights {cfg.model.weights}"
    else:
        torch.manual_seed(cfg.run.seed)
        model = model_from_config(mc, head=head if head != "auto" else "mlm")
        where = f"model.config {cfg.model.config}"
    check_fits(cfg, model.config, tok_vocab, where)
    return model, report


def build_hf(cfg: Config, tok_vocab: int):
    """model.hf: a transformers causal LM; the tokenizer and the blocks must fit in it too."""
    from rafale.train.hf_backend import build_hf_model

    try:
        wrapped = build_hf_model(cfg.model.hf)
    except ModelError as e:
        raise ModelError(f"{cfg.source_path}: {e}") from None
    hf = wrapped.model
    rows = hf.get_input_embeddings().num_embeddings
    where = f"model.hf {cfg.model.hf}"
    if tok_vocab > rows:
        raise ModelError(f"{cfg.source_path}: data.tokenizer has {tok_vocab} tokens but {where} has only "
                         f"{rows} embedding rows; use a matching tokenizer or model")
    positions = getattr(hf.config, "max_position_embeddings", None)
    if positions is not None and cfg.data.block_size > positions:
        raise ConfigError(f"{cfg.source_path}: data.block_size: {cfg.data.block_size} is larger than {where}'s "
                          f"max_position_embeddings {positions}")
    return wrapped


def num_params(model: torch.nn.Module) -> int:
    """Parameters of any model (rafale's, or transformers' under Composer); a tied matrix counts once."""
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def composer_model(model: torch.nn.Module) -> ComposerModel:
    """The Composer wrapper that turns this model's batches into a loss and metrics."""
    from rafale.models import Decoder, EncoderForMaskedLM, EncoderForSequenceClassification
    from rafale.train.composer_encoder import ComposerClassifier, ComposerMLM
    from rafale.train.composer_lm import ComposerLM

    if isinstance(model, ComposerModel):  # model.hf: already a HuggingFaceModel
        return model
    if isinstance(model, Decoder):
        return ComposerLM(model)
    if isinstance(model, EncoderForSequenceClassification):
        return ComposerClassifier(model)
    if isinstance(model, EncoderForMaskedLM):
        return ComposerMLM(model)
    raise TypeError(f"no Composer wrapper for {type(model).__name__}")


def check_fits(cfg: Config, mc, tok_vocab: int | None = None, where: str = "the model") -> None:
    """The tokenizer's ids must index the embedding; blocks must fit in the model's positions."""
    if tok_vocab is not None and tok_vocab > mc.vocab_size:
        raise ModelError(f"{cfg.source_path}: data.tokenizer has {tok_vocab} tokens but {where} has only "
                         f"{mc.vocab_size} embedding rows; use a matching tokenizer or model")
    if cfg.data.block_size > mc.max_seq_len:
        raise ConfigError(f"{cfg.source_path}: data.block_size: {cfg.data.block_size} is larger than the "
                          f"model's max_seq_len {mc.max_seq_len}")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "emb" not in name and "wte" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay)
    if o.name == "adamw":
        # the fused kernel (CPU and CUDA) runs one pass over all parameters instead of one per tensor
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
    if o.name == "decoupled_adamw":
        return DecoupledAdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0])


def build_scheduler(cfg: Config):
    o = cfg.optim
    if o.schedule == "constant":
        no_warmup = float(o.warmup.rstrip("abdeoprstuk")) == 0  # "0ba", "0dur", ...
        return ConstantScheduler() if no_warmup else ConstantWithWarmupScheduler(t_warmup=o.warmup)
    if o.schedule == "linear-warmup":
        return LinearWithWarmupScheduler(t_warmup=o.warmup, alpha_f=o.final_lr_fraction)
    return CosineAnnealingWithWarmupScheduler(t_warmup=o.warmup, alpha_f=o.final_lr_fraction)


def resolve_device(cfg: Config) -> str:
    if cfg.run.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.run.device == "gpu" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source_path}: run.device: gpu was asked for but CUDA is not available")
    return cfg.run.device


def resolve_precision(cfg: Config, device: str) -> str:
    p = cfg.run.precision
    if p == "auto":
        return "amp_bf16" if device == "gpu" and torch.cuda.is_bf16_supported() else "fp32"
    if device == "cpu" and p != "fp32":
        raise ConfigError(f"{cfg.source_path}: run.precision: {p} needs a GPU; use fp32 or auto on CPU")
    return p


def parallelism_config(cfg: Config, device: str) -> dict | None:
    """run.fsdp goes to Composer as parallelism_config={"fsdp": ...}; FSDP needs GPUs, DDP is the default."""
    if cfg.run.fsdp is None:
        return None
    if device != "gpu":
        raise ConfigError(f"{cfg.source_path}: run.fsdp: FSDP needs GPUs (NCCL); drop it to train with DDP on CPU")
    return {"fsdp": dict(cfg.run.fsdp)}


def build_loggers(cfg: Config, log_dir: str | None) -> list:
    """Composer logger destinations for the optional loggers (console and file are rafale callbacks)."""
    out = []
    if "wandb" in cfg.logging.loggers:
        from composer.loggers import WandBLogger

        out.append(WandBLogger(project=cfg.logging.project, name=cfg.run.name))
    if "tensorboard" in cfg.logging.loggers:
        from composer.loggers import TensorboardLogger

        out.append(TensorboardLogger(log_dir=log_dir))
    return out


class WithLabels:
    """model.hf: transformers causal LMs read their targets from `labels` (they shift them inside).

    A copy, not the input_ids themselves: Composer's HuggingFaceModel.eval_forward shifts labels in place.
    """

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        batch = self.collate(items)
        if "labels" not in batch:
            batch["labels"] = batch["input_ids"].clone()
        return batch


class SameMasks:
    """mlm eval: each eval batch gets the same masked positions at every evaluation (the generator is
    reseeded from the batch's tokens), so eval losses compare across steps without masking noise."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed = collate, seed

    def __call__(self, blocks):
        self.collate.generator.manual_seed(self.seed + int(torch.stack(blocks).sum()))
        return self.collate(blocks)


def collate_fn(cfg: Config, data: PreparedData, model, split: str):
    """The pipeline's collator: mlm masks here (fresh masks every train epoch), others stack arrays."""
    from composer.models import HuggingFaceModel

    if data.meta["pipeline"] == "mlm":
        collate = data.collator(probability=cfg.data.mlm_probability,
                                generator=torch.Generator().manual_seed(cfg.run.seed))
        return SameMasks(collate, cfg.run.seed) if split == "eval" else collate
    collate = data.collator()
    return WithLabels(collate) if isinstance(model, HuggingFaceModel) else collate


def dataloader(dataset, batch_size: int, shuffle: bool, seed: int, collate) -> torch.utils.data.DataLoader:
    sampler = dist.get_sampler(dataset, shuffle=shuffle, drop_last=shuffle, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                       drop_last=shuffle)


def _eval_interval(cfg: Config) -> str:
    """An eval interval of 0 (0ba, 0ep, ...) means: evaluate once, at the end of the run."""
    value, _ = _time(cfg.run.eval_interval)
    return cfg.run.max_duration if value == 0 else cfg.run.eval_interval


def per_device_batch(cfg: Config, what: str, batch: int) -> int:
    world = dist.get_world_size()
    if batch % world:
        raise ConfigError(f"{cfg.source_path}: data.{what}: {batch} does not divide among {world} processes")
    return batch // world


def build_trainer(cfg: Config, model: torch.nn.Module, data: PreparedData, *, save_folder: str | None,
                  callbacks: list, load_path: str | None = None, log_dir: str | None = None) -> Trainer:
    return Trainer(**trainer_kwargs(cfg, model, data, save_folder=save_folder, callbacks=callbacks,
                                    load_path=load_path, log_dir=log_dir))


def trainer_kwargs(cfg: Config, model: torch.nn.Module, data: PreparedData, *, save_folder: str | None,
                   callbacks: list, load_path: str | None = None, log_dir: str | None = None) -> dict:
    """Everything the config says, as Composer Trainer arguments (separate so tests can inspect it)."""
    device = resolve_device(cfg)
    train_set, eval_set = data.dataset("train"), data.dataset("eval")
    train_bs = per_device_batch(cfg, "train_batch_size", cfg.data.train_batch_size)
    if len(train_set) < cfg.data.train_batch_size:
        raise ConfigError(f"{cfg.source_path}: data.train_batch_size: {cfg.data.train_batch_size} is more than "
                          f"the {len(train_set)} train examples; lower it or use more data")
    eval_dl = None
    if eval_set is not None:
        eval_dl = dataloader(eval_set, per_device_batch(cfg, "eval_batch_size", cfg.data.eval_batch_size),
                             shuffle=False, seed=cfg.run.seed, collate=collate_fn(cfg, data, model, "eval"))
    micro = cfg.run.device_batch_size
    if micro == "auto":
        micro = "auto" if device == "gpu" else train_bs
    wrapped = composer_model(model)
    return dict(
        model=wrapped,
        train_dataloader=dataloader(train_set, train_bs, shuffle=True, seed=cfg.run.seed,
                                    collate=collate_fn(cfg, data, model, "train")),
        eval_dataloader=eval_dl,
        eval_interval=_eval_interval(cfg) if eval_dl is not None else 0,
        max_duration=cfg.run.max_duration,
        optimizers=build_optimizer(cfg, wrapped),
        schedulers=build_scheduler(cfg),
        step_schedulers_every_batch=True,
        algorithms=[GradientClipping(clipping_type=cfg.optim.clip_type, clipping_threshold=cfg.optim.clip_norm)]
        if cfg.optim.clip_norm > 0 else [],
        callbacks=callbacks,
        loggers=build_loggers(cfg, log_dir),
        progress_bar=False,
        log_to_console=False,
        run_name=cfg.run.name,
        save_folder=save_folder,
        save_filename="ep{epoch}-ba{batch}-rank{rank}.pt",
        save_interval=cfg.run.save_interval,
        save_num_checkpoints_to_keep=cfg.run.save_num_checkpoints_to_keep,
        save_overwrite=False,
        load_path=load_path,
        device=device,
        precision=resolve_precision(cfg, device),
        device_train_microbatch_size=micro,
        seed=cfg.run.seed,
        python_log_level=None,
        compile_config={} if cfg.run.compile else None,
        parallelism_config=parallelism_config(cfg, device),
    )
