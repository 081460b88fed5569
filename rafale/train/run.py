"""`rafale run`: plan, prepare the data, build the model and the trainer, fit, export, summarise.

    code = run(load_config("configs/quickstart.yaml"))

Everything the run will do is resolved first, once, into a Plan (plan.py), with every pre-flight check; the
steps below only read it. The run directory (rundir.py) is owned by one process while it trains.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
from composer.utils import dist
from rich.console import Console
from rich.table import Table

from rafale import signals
from rafale.config import Config, dump_config
from rafale.data.prepare import PreparedData, prepare
from rafale.errors import DataError, RunStateError
from rafale.files import replace_dir, write_json
from rafale.train import callbacks as cb
from rafale.train import guards, preflight
from rafale.train.checkpoints import batches_done, harden_composer, latest_checkpoint, unreadable
from rafale.train.energy import EnergyTracker, summary_line
from rafale.train.plan import Plan, make_plan
from rafale.train.rundir import clear_run_dir, run_lock, write_manifest
from rafale.train.trainer import dataloaders, eval_indices, final_eval, group_lrs, num_params, trainer_kwargs


def run(cfg: Config, *, debug: bool = False, force: bool = False, console: Console | None = None) -> int:
    """Train as `cfg` says (or, with debug, overfit one batch). Returns the process exit code."""
    signals.install()  # again: importing Composer replaced the handlers
    harden_composer()  # atomic checkpoint writes; weights_only loading
    rank0 = dist.get_global_rank() == 0
    console = console or Console()
    say = console if rank0 else Console(quiet=True)
    plan = make_plan(cfg, debug=debug, force=force, log=say.print)
    if has_eval(cfg) and not debug:
        from rafale.eval.run import check_eval_config

        check_eval_config(cfg.eval)  # unknown tasks or a missing eval.data fail now, not after training
    if debug:
        from rafale.train.debug import debug_run

        data = prepare(cfg.data, console=say, fingerprint=plan.fingerprint, tokenizer=plan.tokenizer)
        return debug_run(plan, build_model(plan, data, say), data, console)
    rd = plan.run_dir
    with run_lock(rd.path, say.print) if rank0 else contextlib.nullcontext():
        if rd.start_over and rank0:
            clear_run_dir(rd.path)
        data = prepare(cfg.data, console=say, fingerprint=plan.fingerprint, tokenizer=plan.tokenizer)
        preflight.check_data(plan, data)
        model = build_model(plan, data, say)
        stats = cb.RunStats()
        progress = cb.RichProgress(stats, console) if "console" in cfg.logging.loggers else None
        if rank0:
            start_run_dir(plan, data, model, say)
        energy = EnergyTracker(cfg.logging.energy_country) if cfg.logging.energy else None
        trainer, compiled = build_trainer(plan, model, data, stats, [*([progress] if progress else []),
                                                                     *file_logger(plan, stats),
                                                                     guards.Guard(rd.checkpoints,
                                                                                  cfg.run.save_interval, cfg.optim.lr),
                                                                     *([energy] if energy else [])], say)
        from rafale.data.resume import skip_replay

        if rd.resume_from and (note := skip_replay(trainer)):
            say.print(note)
        try:
            fit(plan, trainer, data, say)
            final_eval(trainer)
        finally:
            if progress:
                progress.stop()
            trainer.close()
        if not rank0:
            return 0
        summary = summarize(plan, trainer, stats, data, model, export_final(model, data, rd.path, plan.lora))
        summary["compile"] = compiled.summary()
        if energy is not None:
            summary["energy"] = energy.summary()
        if has_eval(cfg):
            from rafale.eval.run import evaluate_config

            summary["eval"] = evaluate_config(rd.path / "final", cfg.eval, console)
        if "file" in cfg.logging.loggers:
            from rafale.train.plot import plot_runs

            summary["loss_plot"] = str(plot_runs([rd.path], rd.path / "loss.png"))
        write_manifest(rd.path, cfg, data, "finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary)
    print_summary(console, summary)
    return 0


def has_eval(cfg: Config) -> bool:
    return bool(cfg.eval.tasks) or cfg.eval.data is not None


def build_model(plan: Plan, data: PreparedData, say: Console):
    """The model the plan names: rafale's (fresh or from weights, with the pipeline's head) or model.hf's."""
    cfg = plan.cfg
    if cfg.model.hf is not None:
        from rafale.train.hf_backend import build_hf_model
        from rafale.train.plan import check_fits

        model = build_hf_model(cfg.model.hf)
        hf = model.model
        check_fits(cfg, hf.get_input_embeddings().num_embeddings, getattr(hf.config, "max_position_embeddings", None),
                   data.tokenizer.vocab_size)
        return model
    from rafale.models import build_model as build

    labels = data.meta.get("labels") if plan.head == "classification" else None
    model, report = build(plan.model_config, head=plan.head, weights=cfg.model.weights,
                          num_labels=len(labels) if labels else None, seed=cfg.run.seed)
    if report is not None and report.initialized:
        say.print(f"[yellow]model.weights {cfg.model.weights} has no {report.head} head[/]; initialised fresh: "
                  f"{', '.join(report.initialized)}")
    if plan.lora is not None:
        from rafale.models.lora import apply_lora

        fresh = [name.rpartition(".")[0] for name in (report.initialized if report else [])]  # trained fully
        lo = plan.lora
        apply_lora(model, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, targets=lo.targets,
                   modules_to_save=list(dict.fromkeys([*lo.modules_to_save, *fresh])))
    return model


def file_logger(plan: Plan, stats: cb.RunStats) -> list:
    if "file" not in plan.cfg.logging.loggers:
        return []
    from composer.core import Time

    interval = Time.from_timestring(plan.cfg.run.log_interval)
    every = int(interval.value) if interval.unit.value == "ba" else 1
    return [cb.MetricsFile(plan.run_dir.path / "metrics.jsonl", stats, every, plan.flops_per_token, plan.peak_flops)]


def start_run_dir(plan: Plan, data: PreparedData, model, say: Console) -> None:
    rd = plan.run_dir
    rd.checkpoints.mkdir(parents=True, exist_ok=True)
    (rd.path / "config.yaml").write_text(dump_config(plan.cfg, run_only=True))
    write_manifest(rd.path, plan.cfg, data, "running", data_fingerprint=plan.fingerprint)
    if rd.resume_from:
        say.print(f"resuming {rd.path} from checkpoint {rd.resume_from.name}: {rd.why}")
    else:
        say.print(f"training {plan.model_name} ({params_line(plan, model)}) -> {rd.path}")
    lrs = group_lrs(plan.cfg, model)
    if lrs:
        say.print(f"optim.layerwise_decay {plan.cfg.optim.layerwise_decay}: peak lr "
                  + ", ".join(f"{name} {lr:.3g}" for name, lr in lrs.items()))


def params_line(plan: Plan, model) -> str:
    """'1,234 parameters', or with LoRA the trainable share: '12,288 of 1,234,567 parameters trainable (1.00%)'."""
    if plan.lora is None:
        return f"{num_params(model):,} parameters"
    from rafale.models.lora import trainable_counts

    trainable, total = trainable_counts(model)
    return (f"LoRA rank {plan.lora.rank} on {len(plan.lora.targets)} modules: {trainable:,} of {total:,} "
            f"parameters trainable ({trainable / total:.2%})")


def build_trainer(plan: Plan, model, data: PreparedData, stats: cb.RunStats, callbacks: list, say: Console):
    """The Composer Trainer (with `stats` first among its callbacks), and the run.compile decision it trains
    under (said on the console)."""
    from composer import Trainer

    from rafale.train.compiling import StepTimes, decide, planned_steps

    cfg, rd = plan.cfg, plan.run_dir
    train_dl, eval_dl = dataloaders(plan, data, model)
    done = batches_done(rd.resume_from) if rd.resume_from else 0
    per_epoch = None if cfg.data.streaming else len(train_dl)  # a stream's length is unknown
    steps = planned_steps(cfg.run.max_duration, per_epoch, cfg.data.train_batch_size * cfg.data.block_size, done)
    compiled = decide(plan, steps)
    say.print(compiled.why, highlight=False)
    kwargs = trainer_kwargs(plan, model, train_dl, eval_dl, callbacks=[stats, *callbacks, StepTimes(plan, compiled.compile, stats)],
                            save_folder=str(rd.checkpoints), load_path=str(rd.resume_from) if rd.resume_from else None,
                            log_dir=str(rd.path / "tensorboard"), compile=compiled.compile)
    try:
        return Trainer(**kwargs), compiled
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError, ValueError) as e:
        if rd.resume_from is None:
            raise
        raise unreadable(rd.resume_from, rd.path, e) from e


def fit(plan: Plan, trainer, data: PreparedData, say: Console) -> None:
    """trainer.fit(), recording in the manifest how it ended when it did not finish."""
    cfg, rd, rank0 = plan.cfg, plan.run_dir, dist.get_global_rank() == 0
    try:
        trainer.fit()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (rafale/signals.py): save, mark, say how to resume
        saved = guards.saved_on_interrupt(trainer, rd.checkpoints) if getattr(e, "at_batch_end", False) else None
        if rank0:
            step = trainer.state.timestamp.batch.value
            latest = saved or latest_checkpoint(rd.checkpoints)
            write_manifest(rd.path, cfg, data, "interrupted", interrupted_at_step=step,
                           resume_checkpoint=str(latest) if latest else None)
            say.print(f"interrupted at step {step}; "
                      + (f"saved checkpoint {saved}" if saved else f"latest checkpoint: {latest or 'none yet'}")
                      + f"\nresume with: {guards.resume_command()}", highlight=False, markup=False)
        raise
    except DataError as e:  # a stream that fails part way: the checkpoints stay; fix the file and resume
        if rank0:
            write_manifest(rd.path, cfg, data, "data_error", data_error=str(e),
                           data_error_file=getattr(e, "path", None))
        raise
    except guards.TrainingDiverged:
        if rank0:
            write_manifest(rd.path, cfg, data, "diverged", diverged_at_step=trainer.state.timestamp.batch.value)
        raise
    except OSError as e:  # a full disk while checkpointing: the checkpoint files are written atomically
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RunStateError(f"{rd.checkpoints}: no space left on the device while saving; the latest complete "
                            f"checkpoint is {latest_checkpoint(rd.checkpoints) or 'none'}; free some space and "
                            f"run the same command to resume") from e


def export_final(model, data: PreparedData, run_dir: Path, lora=None) -> Path:
    """final/: the weights in HF layout (rafale's export, or save_pretrained for model.hf) + the tokenizer.

    With LoRA (`lora`, the plan's), final/adapter/ holds the adapter in PEFT's layout, and the model is
    merged in place (W + (alpha/rank) B A) and exported beside it, unless model.lora.merge is false.
    """
    from composer.models import HuggingFaceModel

    from rafale.models import CAUSAL_LMS, export_model

    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if lora is not None:
        from rafale.models.lora import merge_lora, save_adapter

        save_adapter(model, tmp / "adapter", base=lora.base)
        merge_lora(model)  # the sample at the end decodes with the merged model either way
    if isinstance(model, HuggingFaceModel):
        model.model.save_pretrained(tmp, safe_serialization=True)
    elif lora is None or lora.merge:
        export_model(model, tmp)
    shutil.copyfile(data.path / "tokenizer.json", tmp / "tokenizer.json")
    if isinstance(model, (*CAUSAL_LMS, HuggingFaceModel)):
        write_json(tmp / "generation_config.json", {"eos_token_id": data.tokenizer.eos_id,
                                                    "pad_token_id": data.tokenizer.pad_id})
    if "labels" in data.meta and (tmp / "config.json").exists():  # classification: index -> label name
        hf_config = json.loads((tmp / "config.json").read_text())
        hf_config["id2label"] = dict(enumerate(data.meta["labels"]))
        hf_config["label2id"] = {name: i for i, name in enumerate(data.meta["labels"])}
        write_json(tmp / "config.json", hf_config)
    replace_dir(tmp, final)
    return final


def evaluated_targets(data: PreparedData, max_tokens: int | None) -> np.ndarray | None:
    """The eval targets (examples, block_size - 1) the final evaluation scored: the examples data.eval_max_tokens
    selects (trainer.eval_indices), each block without its first token (causal_lm only)."""
    evals = data.dataset("eval") if data.meta["pipeline"] == "causal_lm" else None
    if evals is None:
        return None
    blocks = np.asarray(evals.tokens).reshape(-1, evals.block_size)
    idx = eval_indices(len(blocks), max_tokens, evals.block_size)
    return (blocks if isinstance(idx, range) else blocks[idx])[:, 1:]


def unigram_eval_loss(data: PreparedData, max_tokens: int | None = None) -> float | None:
    """Cross-entropy of a unigram model (add-one smoothed train counts) on the evaluated targets (causal_lm only)."""
    targets = None if data.meta.get("streaming") else evaluated_targets(data, max_tokens)
    if targets is None:
        return None
    counts = data.dataset("train").unigram_counts(data.tokenizer.vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[targets].mean())


def held_out(plan: Plan, data: PreparedData) -> dict | None:
    """How much of the held-out split the final evaluation covered (data.eval_max_tokens), and the periodic cap."""
    cfg, split = plan.cfg, data.meta.get("splits", {}).get("eval", {})
    n = split.get("examples", split.get("blocks", 0))
    if not n:
        return None
    k = len(eval_indices(n, cfg.data.eval_max_tokens, cfg.data.block_size))
    out = {"examples": n, "evaluated_examples": k, "periodic_batches": cfg.run.eval_batches}
    if "tokens" in split and "blocks" in split:  # causal_lm: every example is one whole block
        out |= {"tokens": split["blocks"] * cfg.data.block_size, "evaluated_tokens": k * cfg.data.block_size}
    return out


def eval_bits_per_byte(data: PreparedData, eval_loss: float | None, max_tokens: int | None) -> float | None:
    """The eval loss in bits per UTF-8 byte (causal_lm only): nats per target token times the tokens per byte of
    the same evaluated targets, measured by decoding them. End-of-text tokens count in the loss but add no
    bytes, as in `rafale eval --data`'s scoring of documents."""
    targets = None if eval_loss is None else evaluated_targets(data, max_tokens)
    if targets is None:
        return None
    texts = data.tokenizer.tokenizer.decode_batch(targets.tolist(), skip_special_tokens=True)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return eval_loss * targets.size / (math.log(2) * n_bytes) if n_bytes else None


def summarize(plan: Plan, trainer, stats: cb.RunStats, data: PreparedData, model, final: Path) -> dict:
    from rafale.models import CAUSAL_LMS
    from rafale.models.generate import complete

    cfg, ts = plan.cfg, trainer.state.timestamp
    model.eval()
    sample = complete(model, data.tokenizer, cfg.run.sample_prompt, cfg.run.sample_tokens) \
        if cfg.run.sample_tokens and isinstance(model, CAUSAL_LMS) else None
    tps = stats.tokens_per_second
    mfu = {}
    if plan.flops_per_token:
        achieved, peak = plan.flops_per_token * tps, plan.peak_flops
        mfu = {"flops_per_token": plan.flops_per_token, "achieved_tflops": round(achieved / 1e12, 4),
               "peak_tflops": round(peak / 1e12, 4) if peak else None, "peak_source": plan.peak_source,
               "mfu": round(achieved / peak, 4) if peak else None}
    return {"steps": ts.batch.value, "tokens": ts.token.value, "precision": plan.precision,
            **({"precision_why": plan.precision_why} if plan.precision_why else {}), "train_loss": stats.train_loss,
            "eval_loss": stats.eval_loss, "eval_perplexity": stats.eval_ppl,
            "eval_bits_per_byte": eval_bits_per_byte(data, stats.eval_loss, cfg.data.eval_max_tokens),
            **{f"eval_{k}": v for k, v in stats.eval_extra.items()},
            "unigram_eval_loss": unigram_eval_loss(data, cfg.data.eval_max_tokens), "held_out": held_out(plan, data),
            "tokens_per_second": round(tps, 1),
            "train_seconds": round(stats.train_seconds, 2), **mfu, "saved": str(final), "sample": sample,
            **({"group_lrs": lrs} if (lrs := peak_lrs(trainer)) else {})}


def peak_lrs(trainer) -> dict[str, float]:
    """optim.layerwise_decay: {group name: its peak lr}, as the optimizer had them."""
    groups = trainer.state.optimizers[0].param_groups
    return {g["name"]: g.get("initial_lr", g["lr"]) for g in groups if "name" in g}


def print_summary(console: Console, s: dict) -> None:
    f4 = lambda key: "-" if s.get(key) is None else f"{s[key]:.4f}"  # noqa: E731
    rows = [("steps", f"{s['steps']:,}"), ("tokens seen", f"{s['tokens']:,}"), ("train loss", f4("train_loss")),
            ("eval loss", f4("eval_loss"))]
    if s["eval_perplexity"] is not None:
        rows.append(("eval perplexity", f"{s['eval_perplexity']:.2f}"))
    if s.get("eval_bits_per_byte") is not None:
        rows.append(("eval bits per byte", f4("eval_bits_per_byte")))
    rows += [(key.replace("_", " "), f4(key)) for key in ("eval_accuracy", "eval_masked_accuracy")
             if s.get(key) is not None]
    if s.get("held_out"):
        h = s["held_out"]
        tokens = f" ({h['evaluated_tokens']:,} of {h['tokens']:,} tokens)" if "tokens" in h else ""
        periodic = f"; periodic evaluations {h['periodic_batches']} batches" if h["periodic_batches"] else ""
        rows.append(("evaluated on", f"{h['evaluated_examples']:,} of {h['examples']:,} held-out examples{tokens}"
                                     f"{periodic}"))
    if s["unigram_eval_loss"] is not None:
        rows.append(("unigram eval loss", f4("unigram_eval_loss") + "  (a model that ignores context)"))
    rows.append(("throughput", f"{s['tokens_per_second']:,.0f} tokens/s"))
    if s.get("precision"):
        rows.append(("precision", s["precision"] + (f"  ({s['precision_why']})" if s.get("precision_why") else "")))
    if s.get("compile"):
        rows.append(("compile", s["compile"]["why"]))
    if s.get("mfu") is not None:
        rows.append(("MFU", f"{s['mfu']:.1%}  ({s['achieved_tflops'] * 1e3:,.1f} of {s['peak_tflops'] * 1e3:,.1f} "
                            f"GFLOP/s, peak: {s['peak_source']})"))
    if s.get("eval"):
        from rafale.eval.run import summary_rows

        rows += summary_rows(s["eval"])
    if s.get("group_lrs"):
        rows.append(("peak lr by depth", ", ".join(f"{name} {lr:.3g}" for name, lr in s["group_lrs"].items())))
    if s.get("energy"):
        rows.append(("energy", summary_line(s["energy"])))
    rows += [("saved", s["saved"]), ("loss curve", s.get("loss_plot")), ("sample", s["sample"])]
    t = Table(title="run summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for name, value in rows:
        if value is not None:
            t.add_row(name, value)
    console.print(t)
