"""From a Plan, a model and prepared data to a Composer Trainer: dataloaders, optimizer, schedule, loggers.

Which model trains on which pipeline, and through which Composer wrapper:

    causal_lm, sft     a decoder or a RetNet (ComposerLM) or a transformers causal LM (`model.hf`, HuggingFaceModel)
    classification     an encoder with a classification head, num_labels from the data (ComposerClassifier)
    mlm                an encoder with its masked-LM head (ComposerMLM)
"""

from __future__ import annotations

import re
import warnings

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.core import Time
from composer.models import ComposerModel
from composer.optim import (ConstantScheduler, ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler,
                            DecoupledAdamW, LinearWithWarmupScheduler)
from composer.utils import collect_env, create_interval_scheduler, dist

from rafale.config import Config
from rafale.train.mfu import cpu_name

# Composer asks py-cpuinfo for the CPU's name, at every Trainer init and every checkpoint save, to store it in
# the checkpoint's metadata; py-cpuinfo starts a Python subprocess for it, 1.1 s each time here. /proc/cpuinfo
# gives the same name (py-cpuinfo's brand_raw on Linux) at once.
collect_env.get_cpu_model = cpu_name

# Composer warns when the last eval batch is smaller than the eval microbatch: expected, and harmless.
warnings.filterwarnings("ignore", message="Cannot split tensor of length")
# A warmup fraction of a very short run rounds to 0 batches; Composer then warns once per step.
warnings.filterwarnings("ignore", message="The warmup duration is 0")

LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)\.")  # a block's parameters (rafale's and HF's names)


def num_params(model: torch.nn.Module) -> int:
    """Parameters of any model (rafale's, or transformers' under Composer); a tied matrix counts once."""
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def composer_model(model: torch.nn.Module) -> ComposerModel:
    """The Composer wrapper that turns this model's batches into a loss and metrics."""
    from rafale.models import CAUSAL_LMS, EncoderForMaskedLM, EncoderForSequenceClassification
    from rafale.train.composer_encoder import ComposerClassifier, ComposerMLM
    from rafale.train.composer_lm import ComposerLM

    if isinstance(model, ComposerModel):  # model.hf: already a HuggingFaceModel
        return model
    if isinstance(model, CAUSAL_LMS):
        return ComposerLM(model)
    if isinstance(model, EncoderForSequenceClassification):
        return ComposerClassifier(model)
    if isinstance(model, EncoderForMaskedLM):
        return ComposerMLM(model)
    raise TypeError(f"no Composer wrapper for {type(model).__name__}")


def depth(name: str, n_layer: int) -> int:
    """Where a parameter sits, bottom to top: 0 the embeddings, i + 1 block i, n_layer + 1 the rest (the final
    norm and the heads)."""
    m = LAYER.search(name)
    if m:
        return int(m.group(1)) + 1
    return 0 if "emb" in name or "wte" in name else n_layer + 1


def depth_name(d: int, n_layer: int) -> str:
    return "embeddings" if d == 0 else "head" if d > n_layer else f"block {d - 1}"


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float = 1.0, layerwise_decay: float = 1.0) -> list[dict]:
    """The trainable parameters (frozen ones never reach the optimizer, nor its state), in groups.

    Weight decay on matrices only: not on norms, biases or embeddings. With layerwise_decay < 1, one pair of
    groups per depth: the head and the top block train at `lr`, each block below at decay times the one
    above, the embeddings at lr * decay^n_layer (each group's "name" says which). Schedules scale every
    group's lr by the same factor, so the ratios hold throughout.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_layer = 1 + max((int(m.group(1)) for n, _ in named if (m := LAYER.search(n))), default=-1)
    groups: dict[tuple, dict] = {}
    for name, p in named:
        decays = p.ndim >= 2 and "emb" not in name and "wte" not in name
        d = depth(name, n_layer) if layerwise_decay != 1 else n_layer + 1
        key = (d, decays)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decays else 0.0}
            if layerwise_decay != 1:
                groups[key] |= {"lr": lr * layerwise_decay ** max(0, n_layer - d), "name": depth_name(d, n_layer)}
        groups[key]["params"].append(p)
    if layerwise_decay == 1:  # the two groups, even when one is empty
        return [groups.get((n_layer + 1, True), {"params": [], "weight_decay": weight_decay}),
                groups.get((n_layer + 1, False), {"params": [], "weight_decay": 0.0})]
    return [groups[k] for k in sorted(groups)]


def group_lrs(cfg: Config, model: torch.nn.Module) -> dict[str, float]:
    """{group name: peak lr} under optim.layerwise_decay, bottom to top (empty when it is off)."""
    if cfg.optim.layerwise_decay == 1:
        return {}
    groups = param_groups(model, 0.0, cfg.optim.lr, cfg.optim.layerwise_decay)
    return {g["name"]: g["lr"] for g in groups}


def build_optimizer(cfg: Config, model: torch.nn.Module, weight_decay: float | None = None) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay if weight_decay is None else weight_decay, o.lr, o.layerwise_decay)
    if o.name == "adamw":
        # the fused kernel (CPU and CUDA) runs one pass over all parameters instead of one per tensor
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
    if o.name == "decoupled_adamw":
        return DecoupledAdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0])


def build_scheduler(cfg: Config):
    o = cfg.optim
    if o.schedule == "constant":
        return ConstantScheduler() if Time.from_timestring(o.warmup).value == 0 else \
            ConstantWithWarmupScheduler(t_warmup=o.warmup)
    if o.schedule == "linear-warmup":
        return LinearWithWarmupScheduler(t_warmup=o.warmup, alpha_f=o.final_lr_fraction)
    return CosineAnnealingWithWarmupScheduler(t_warmup=o.warmup, alpha_f=o.final_lr_fraction)


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


def collate_fn(cfg: Config, data, model, split: str):
    """The pipeline's collator: mlm masks here (fresh masks every train epoch), others stack arrays."""
    from composer.models import HuggingFaceModel

    if data.meta["pipeline"] == "mlm":
        collate = data.collator(probability=cfg.data.mlm_probability,
                                generator=torch.Generator().manual_seed(cfg.run.seed))
        return SameMasks(collate, cfg.run.seed) if split == "eval" else collate
    collate = data.collator()
    return WithLabels(collate) if isinstance(model, HuggingFaceModel) else collate


def dataloader(dataset, batch_size: int, shuffle: bool, seed: int, collate) -> torch.utils.data.DataLoader:
    """A process's loader. Train data resumes where a checkpoint left off without replaying batches: a stream
    (data.streaming) restores its own position, a cached dataset gets a sampler that skips (data/resume.py)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):  # already this process's share; no workers
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, drop_last=True)
    if not shuffle:
        sampler = dist.get_sampler(dataset, shuffle=False, drop_last=False, seed=seed)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    from rafale.data.resume import Resumable, ResumableSampler

    dataset = Resumable(dataset)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=ResumableSampler(dataset, True, seed),
                                       collate_fn=collate, drop_last=True)


def eval_indices(n: int, max_tokens: int | None, block_size: int) -> range | list[int]:
    """Which of the n held-out examples are evaluated: all, or at most max_tokens // block_size of them, evenly
    spaced through the split (a source's own eval file is often ordered), the same ones every time."""
    k = n if max_tokens is None else min(n, max_tokens // block_size)
    return range(n) if k == n else [i * n // k for i in range(k)]


def capped_eval(dataset, cfg: Config):
    """The held-out split as evaluated: data.eval_max_tokens caps it (the prepared files keep all of it)."""
    if dataset is None or not hasattr(dataset, "__len__"):  # a stream is capped where it is read
        return dataset
    idx = eval_indices(len(dataset), cfg.data.eval_max_tokens, cfg.data.block_size)
    return dataset if len(idx) == len(dataset) else torch.utils.data.Subset(dataset, idx)


def dataloaders(plan, data, model) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """(train, eval) loaders of the prepared data, each process taking its share of every batch."""
    cfg = plan.cfg
    train = dataloader(data.dataset("train"), plan.train_batch, shuffle=True, seed=cfg.run.seed,
                       collate=collate_fn(cfg, data, model, "train"))
    evals = capped_eval(data.dataset("eval"), cfg)
    if evals is not None:
        evals = dataloader(evals, plan.eval_batch, shuffle=False, seed=cfg.run.seed,
                           collate=collate_fn(cfg, data, model, "eval"))
    return train, evals


def periodic_eval(interval: str):
    """When Composer evaluates during fit: every `interval`, but not at the end of training, which final_eval
    covers with the whole held-out split (periodic evaluations take only run.eval_batches)."""
    every = create_interval_scheduler(interval, include_end_of_training=False, checkpoint_events=False)

    def due(state, event) -> bool:
        return every(state, event) and state.get_elapsed_duration().value < 1

    return due


def trainer_kwargs(plan, model: torch.nn.Module, train_dl, eval_dl, *, callbacks: list, save_folder: str | None = None,
                   load_path: str | None = None, log_dir: str | None = None, compile: bool | None = None) -> dict:
    """Everything the plan says, as Composer Trainer arguments (a dict: DEBUG=1 changes a few of them).

    `compile` is the run.compile decision (compiling.decide); None takes run.compile true as yes, else no.
    On a CPU, amp_bf16 is rafale's own autocast around the model (cpu_autocast.py) under Composer's fp32.
    """
    from rafale.train.compiling import compile_config

    cfg = plan.cfg
    wrapped = composer_model(model)
    precision = plan.precision
    if plan.device == "cpu" and precision == "amp_bf16":
        from rafale.train.cpu_autocast import autocast_bf16

        autocast_bf16(wrapped)
        precision = "fp32"
    if plan.lora is not None:  # checkpoints: the adapter, its optimizer state and the base's fingerprint
        from rafale.train.checkpoints import LoraBase, keep_trainable_only

        keep_trainable_only(wrapped)
        callbacks = [*callbacks, LoraBase(plan.lora.base_fingerprint)]
    periodic = eval_dl is not None and Time.from_timestring(cfg.run.eval_interval).value > 0  # 0ba: only at the end
    return dict(
        model=wrapped,
        train_dataloader=train_dl,
        eval_dataloader=eval_dl,
        eval_interval=periodic_eval(cfg.run.eval_interval) if periodic else 0,
        eval_subset_num_batches=(cfg.run.eval_batches or -1) if eval_dl is not None else -1,
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
        device=plan.device,
        precision=precision,
        device_train_microbatch_size=plan.microbatch,
        seed=cfg.run.seed,
        python_log_level=None,
        compile_config=compile_config(cfg.run.compile is True if compile is None else compile),
        parallelism_config=plan.parallelism,
    )


def final_eval(trainer) -> None:
    """The evaluation at the end of a run: every batch of the held-out split (data.eval_max_tokens caps the split;
    run.eval_batches only the periodic evaluations). Every process calls it. Composer's eval() reads -1 as "the
    trainer's eval_subset_num_batches", so the full length is passed."""
    evaluators = trainer.state.evaluators
    if evaluators:
        trainer.eval(subset_num_batches=max(len(e.dataloader.dataloader) for e in evaluators))
