"""`rafale run`: prepare data, build the model, train through Composer, export and summarise.

The run directory (`<run.output_dir>/<run.name>/`) holds config.yaml (the resolved config), manifest.json
(versions, data cache key, seed, hardware, git commit, status), checkpoints/, metrics.jsonl and final/.
A finished run is never overwritten without FORCE=1; a run that stopped part way resumes from its latest
checkpoint when started again with a compatible config.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from composer.utils import dist
from rich.console import Console
from rich.table import Table

import rafale
from rafale.config import Config, dump_config
from rafale.data.cache import write_json
from rafale.data.prepare import PreparedData, prepare
from rafale.errors import RunStateError
from rafale.train import callbacks as cb
from rafale.train import guards
from rafale.train import mfu
from rafale.train.trainer import build_model, build_trainer, check_model, num_params, resolve_device, resolve_precision

# Keys a resumed run may change: they do not alter what the checkpoint means.
RESUMABLE_CHANGES = ("run.max_duration", "run.eval_interval", "run.save_interval", "run.log_interval",
                     "run.save_num_checkpoints_to_keep", "run.sample_prompt", "run.sample_tokens",
                     "run.device", "run.device_batch_size", "logging.loggers", "logging.project")
LATEST = "latest-rank0.pt"


@dataclass
class RunDir:
    path: Path
    resume_from: Path | None
    why: str = ""  # why the run resumes (printed), empty for a fresh run

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "overrides":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def open_run_dir(cfg: Config, force: bool) -> RunDir:
    path = Path(cfg.run.output_dir) / cfg.run.name
    manifest = path / "manifest.json"
    if path.exists() and force:
        if dist.get_global_rank() == 0:  # other processes only read; rank 0 owns the run directory
            shutil.rmtree(path)
    elif manifest.exists():
        status = json.loads(manifest.read_text()).get("status")
        latest = path / "checkpoints" / LATEST
        if status == "finished":
            raise RunStateError(f"{path}: run {cfg.run.name!r} already finished; FORCE=1 (or --force) starts it "
                                f"over, run.name=<other> keeps it")
        if latest.exists():
            import yaml

            old = _flatten(yaml.safe_load((path / "config.yaml").read_text()))
            new = _flatten(cfg.to_dict())
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
            if changed:
                raise RunStateError(f"{path}: cannot resume: the config changed in {', '.join(changed)}; "
                                    f"restore them, or FORCE=1 to start over")
            why = (f"it stopped part way (status {status!r}) and its config is unchanged"
                   + (" except resumable keys" if _changed_resumable(old, new) else ""))
            return RunDir(path, latest.resolve(), why)
    return RunDir(path, None)


def _changed_resumable(old: dict, new: dict) -> bool:
    return any(old.get(k) != new.get(k) for k in RESUMABLE_CHANGES)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "processes": dist.get_world_size()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_manifest(rd: RunDir, cfg: Config, data: PreparedData, status: str, **extra) -> None:
    import composer
    import tokenizers

    path = rd.path / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    manifest = {**old, "status": status, "rafale": rafale.__version__, "torch": torch.__version__,
                "composer": composer.__version__, "tokenizers": tokenizers.__version__,
                "python": platform.python_version(), "seed": cfg.run.seed, "data_cache": str(data.path),
                "data_key": data.key, "hardware": hardware(), "git_commit": git_commit(), **extra}
    manifest.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = path.with_suffix(".tmp")
    write_json(tmp, manifest)
    os.replace(tmp, path)


def unigram_eval_loss(data: PreparedData) -> float | None:
    """Cross-entropy of a unigram model (add-one smoothed train counts) on the eval targets (causal_lm only)."""
    if data.meta["pipeline"] != "causal_lm":
        return None
    train, evals = data.dataset("train"), data.dataset("eval")
    if evals is None:
        return None
    vocab = data.tokenizer.vocab_size
    counts = train.unigram_counts(vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = np.asarray(evals.tokens).reshape(-1, evals.block_size)[:, 1:]  # what the model is scored on
    return float(-logp[targets].mean())


def run(cfg: Config, *, debug: bool = False, force: bool = False, console: Console | None = None) -> int:
    """Train as `cfg` says (or, with debug, overfit one batch). Returns the process exit code."""
    console = console or Console()
    rank0 = dist.get_global_rank() == 0
    guards.handle_signals()  # after Composer's import, which replaces the SIGINT/SIGTERM handlers
    # pre-flight: a bad model name or checkpoint, pipeline, block size or run state fails before any data work
    check_model(cfg)
    if not debug:
        guards.preflight(cfg)  # writable run dir and cache, room on their disks (before FORCE deletes anything)
    rd = None if debug else open_run_dir(cfg, force)
    if rd is not None:
        guards.check_checkpoint(rd)  # a truncated checkpoint fails before anything is written
    data = prepare(cfg.data, console=console if rank0 else Console(quiet=True))
    if not debug:
        guards.check_data(cfg, data)  # before the run directory is written
    model, report = build_model(cfg, data)
    if report is not None and report.initialized and rank0:
        console.print(f"[yellow]model.weights {cfg.model.weights} has no {report.head} head[/]; initialised "
                      f"fresh: {', '.join(report.initialized)}")
    if debug:
        from rafale.train.debug import debug_run

        return debug_run(cfg, model, data, console)

    if rank0:
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
        (rd.path / "config.yaml").write_text(dump_config(cfg))
        write_manifest(rd, cfg, data, "running")
        if rd.resume_from:
            console.print(f"resuming {rd.path} from checkpoint {rd.resume_from.name}: {rd.why}")
        else:
            console.print(f"training {model_name(cfg)} ({num_params(model):,} parameters) -> {rd.path}")
    stats = cb.RunStats()
    callbacks = [stats]
    progress = None
    if "console" in cfg.logging.loggers:
        progress = cb.RichProgress(stats, console)
        callbacks.append(progress)
    if "file" in cfg.logging.loggers:
        fpt, peak = _flops(cfg, model)
        callbacks.append(cb.MetricsFile(rd.path / "metrics.jsonl", stats, _batches(cfg.run.log_interval), fpt,
                                        peak * dist.get_world_size() if peak else None))
    callbacks.append(guards.Guard(rd.checkpoints, cfg))  # SIGINT/SIGTERM -> checkpoint; NaN/Inf loss -> stop
    guards.harden_composer()  # atomic checkpoint writes; weights_only loading
    try:
        trainer = build_trainer(cfg, model, data, save_folder=str(rd.checkpoints), callbacks=callbacks,
                                load_path=str(rd.resume_from) if rd.resume_from else None,
                                log_dir=str(rd.path / "tensorboard"))
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError, ValueError) as e:
        if rd.resume_from is None:
            raise
        # the checkpoint is kept as it is: it may be worth inspecting, and it is the user's to delete
        raise RunStateError(f"{rd.resume_from}: cannot resume {rd.path}: the checkpoint is unreadable "
                            f"({guards.describe_checkpoint_error(rd.resume_from, e)}); "
                            f"FORCE=1 starts the run over, or point checkpoints/{LATEST} at an older "
                            f"checkpoint") from e
    try:
        trainer.fit()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (rafale/train/guards.py): save, mark, say how to resume
        if progress:
            progress.stop()
        saved = guards.saved_on_interrupt(trainer, rd.checkpoints) if getattr(e, "at_batch_end", False) else None
        if rank0:
            step = trainer.state.timestamp.batch.value
            latest = saved or guards.latest_checkpoint(rd.checkpoints)
            write_manifest(rd, cfg, data, "interrupted", interrupted_at_step=step,
                           resume_checkpoint=str(latest) if latest else None)
            console.print(f"interrupted at step {step}; "
                          + (f"saved checkpoint {saved}" if saved else f"latest checkpoint: {latest or 'none yet'}")
                          + f"\nresume with: {guards.resume_command()}", highlight=False, markup=False)
        raise
    except guards.TrainingDiverged:
        if progress:
            progress.stop()
        if rank0:
            write_manifest(rd, cfg, data, "diverged", diverged_at_step=trainer.state.timestamp.batch.value)
        raise
    except OSError as e:  # a full disk while checkpointing: the checkpoint files are written atomically
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        latest = guards.latest_checkpoint(rd.checkpoints)
        raise RunStateError(f"{rd.checkpoints}: no space left on the device while saving; the latest complete "
                            f"checkpoint is {latest or 'none'}; free some space and run the same command to "
                            f"resume") from e
    finally:
        trainer.close()
    if not rank0:
        return 0
    final = export_final(model, data, rd)
    summary = summarize(cfg, trainer, stats, data, model, final)
    if "file" in cfg.logging.loggers:
        from rafale.train.plot import plot_runs

        summary["loss_plot"] = str(plot_runs([rd.path], rd.path / "loss.png"))
    write_manifest(rd, cfg, data, "finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary)
    print_summary(console, summary)
    return 0


def _batches(interval: str) -> int:
    return int(float(interval[:-2])) if interval.endswith("ba") else 1


def model_name(cfg: Config) -> str:
    if cfg.model.hf is not None:
        return f"model.hf {cfg.model.hf}"
    return cfg.model.config if cfg.model.weights is None else f"{cfg.model.config} from {cfg.model.weights}"


def export_final(model, data: PreparedData, rd: RunDir) -> Path:
    """final/: the weights in HF layout (rafale's export, or save_pretrained for model.hf) + the tokenizer."""
    from composer.models import HuggingFaceModel

    from rafale.models import Decoder, export_model

    final = rd.path / "final"
    tmp = rd.path / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if isinstance(model, HuggingFaceModel):
        model.model.save_pretrained(tmp, safe_serialization=True)
    else:
        export_model(model, tmp)
    shutil.copyfile(data.path / "tokenizer.json", tmp / "tokenizer.json")
    if isinstance(model, (Decoder, HuggingFaceModel)):
        write_json(tmp / "generation_config.json", {"eos_token_id": data.tokenizer.eos_id,
                                                    "pad_token_id": data.tokenizer.pad_id})
    if "labels" in data.meta:  # classification: output index -> label name, as transformers reads it
        hf_config = json.loads((tmp / "config.json").read_text())
        hf_config["id2label"] = dict(enumerate(data.meta["labels"]))
        hf_config["label2id"] = {name: i for i, name in enumerate(data.meta["labels"])}
        write_json(tmp / "config.json", hf_config)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def summarize(cfg: Config, trainer, stats: cb.RunStats, data, model, final: Path) -> dict:
    from rafale.models import Decoder
    from rafale.models.generate import complete

    ts = trainer.state.timestamp
    model.eval()
    sample = complete(model, data.tokenizer, cfg.run.sample_prompt, cfg.run.sample_tokens) \
        if cfg.run.sample_tokens and isinstance(model, Decoder) else None
    tps = stats.clock.tokens_per_second
    return {"steps": ts.batch.value, "tokens": ts.token.value, "train_loss": stats.train_loss,
            "eval_loss": stats.eval_loss, "eval_perplexity": stats.eval_ppl,
            **{f"eval_{k}": v for k, v in stats.eval_extra.items()},
            "unigram_eval_loss": unigram_eval_loss(data), "tokens_per_second": round(tps, 1),
            "train_seconds": round(stats.clock.train_seconds, 2), **mfu_report(cfg, model, tps),
            "saved": str(final), "sample": sample}


def _flops(cfg: Config, model) -> tuple[int | None, float | None]:
    from rafale.models import Decoder

    if not isinstance(model, Decoder):  # mfu.py counts a decoder's FLOPs; others report none
        return None, None
    device = resolve_device(cfg)
    peak, _ = mfu.peak_flops(device, resolve_precision(cfg, device))
    return mfu.flops_per_token(model, cfg.data.block_size), peak


def mfu_report(cfg: Config, model, tokens_per_second: float) -> dict:
    """Model FLOPs utilisation of this run (all processes together over their summed peaks); decoders only."""
    from rafale.models import Decoder

    if not isinstance(model, Decoder):
        return {}
    device = resolve_device(cfg)
    peak, source = mfu.peak_flops(device, resolve_precision(cfg, device))  # cached: the same figure as above
    fpt = mfu.flops_per_token(model, cfg.data.block_size)
    achieved = fpt * tokens_per_second
    total_peak = peak * dist.get_world_size() if peak else None
    return {"flops_per_token": fpt, "achieved_tflops": round(achieved / 1e12, 4),
            "peak_tflops": round(total_peak / 1e12, 4) if total_peak else None, "peak_source": source,
            "mfu": round(achieved / total_peak, 4) if total_peak else None}


def print_summary(console: Console, s: dict) -> None:
    t = Table(title="run summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    t.add_row("steps", f"{s['steps']:,}")
    t.add_row("tokens seen", f"{s['tokens']:,}")
    t.add_row("train loss", fmt(s["train_loss"], ".4f"))
    t.add_row("eval loss", fmt(s["eval_loss"], ".4f"))
    if s["eval_perplexity"] is not None:
        t.add_row("eval perplexity", fmt(s["eval_perplexity"], ".2f"))
    for key in ("eval_accuracy", "eval_masked_accuracy"):
        if s.get(key) is not None:
            t.add_row(key.replace("_", " "), f"{s[key]:.4f}")
    if s["unigram_eval_loss"] is not None:
        t.add_row("unigram eval loss", fmt(s["unigram_eval_loss"], ".4f") + "  (a model that ignores context)")
    t.add_row("throughput", f"{s['tokens_per_second']:,.0f} tokens/s")
    if s.get("mfu") is not None:
        t.add_row("MFU", f"{s['mfu']:.1%}  ({s['achieved_tflops'] * 1e3:,.1f} of {s['peak_tflops'] * 1e3:,.1f} "
                         f"GFLOP/s, peak: {s['peak_source']})")
    t.add_row("saved", s["saved"])
    if s.get("loss_plot"):
        t.add_row("loss curve", s["loss_plot"])
    if s["sample"] is not None:
        t.add_row("sample", s["sample"])
    console.print(t)
