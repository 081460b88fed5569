"""From a validated Config to a Composer Trainer: model, dataloaders, optimizer, schedule, precision.

`build_model` applies the rules that tie the model to the data: a model trained from scratch takes the
tokenizer's vocabulary (padded up to a multiple of 64 for faster matmuls); a model loaded from weights
keeps its own, and the tokenizer must fit in it. The block size must fit in the model's positions.
"""

from __future__ import annotations

import math
import warnings

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.optim import (ConstantScheduler, ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler, DecoupledAdamW,
                            LinearWithWarmupScheduler)
from composer.utils import dist

from rafale.config import Config, _time
from rafale.data.causal_lm import PreparedData, collate
from rafale.errors import ConfigError, ModelError

VOCAB_MULTIPLE = 64
# Composer warns when the last eval batch is smaller than the eval microbatch: expected, and harmless.
warnings.filterwarnings("ignore", message="Cannot split tensor of length")
# A warmup fraction of a very short run rounds to 0 batches; Composer then warns once per step.
warnings.filterwarnings("ignore", message="The warmup duration is 0")


def model_config(cfg: Config, vocab_size: int | None = None):
    """The registry entry with the config's overrides; vocab_size from the tokenizer unless overridden.

    Called once before data preparation (vocab unknown yet) so a bad name fails before any work.
    """
    from rafale.models import registry

    overrides = dict(cfg.model.overrides)
    if vocab_size is not None:
        overrides.setdefault("vocab_size", math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    try:
        return registry.get_config(cfg.model.config, **overrides)
    except ModelError as e:
        raise ModelError(f"{cfg.source_path}: {e}") from None


def build_model(cfg: Config, data: PreparedData) -> torch.nn.Module:
    from rafale.models.decoder import Decoder

    tok_vocab = data.tokenizer.vocab_size
    if cfg.model.weights is not None:
        from rafale.models import from_pretrained

        model = from_pretrained(cfg.model.weights)
        model.train()
        where = f"model.weights {cfg.model.weights}"
    else:
        torch.manual_seed(cfg.run.seed)
        model = Decoder(model_config(cfg, tok_vocab))
        where = f"model.config {cfg.model.config}"
    check_fits(cfg, model.config, tok_vocab, where)
    return model


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


def dataloader(dataset, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
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
    from rafale.train.composer_lm import ComposerLM

    device = resolve_device(cfg)
    train_blocks, eval_blocks = data.blocks("train"), data.blocks("eval")
    train_bs = per_device_batch(cfg, "train_batch_size", cfg.data.train_batch_size)
    if len(train_blocks) < cfg.data.train_batch_size:
        raise ConfigError(f"{cfg.source_path}: data.train_batch_size: {cfg.data.train_batch_size} is more than "
                          f"the {len(train_blocks)} train blocks; lower it or use more data")
    eval_dl = None
    if eval_blocks is not None:
        eval_dl = dataloader(eval_blocks, per_device_batch(cfg, "eval_batch_size", cfg.data.eval_batch_size),
                             shuffle=False, seed=cfg.run.seed)
    micro = cfg.run.device_batch_size
    if micro == "auto":
        micro = "auto" if device == "gpu" else train_bs
    composer_model = ComposerLM(model)
    return dict(
        model=composer_model,
        train_dataloader=dataloader(train_blocks, train_bs, shuffle=True, seed=cfg.run.seed),
        eval_dataloader=eval_dl,
        eval_interval=_eval_interval(cfg) if eval_dl is not None else 0,
        max_duration=cfg.run.max_duration,
        optimizers=build_optimizer(cfg, composer_model),
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
