"""run.compile: torch.compile the model's forward (Composer's compile_config), when it pays for itself.

    true    compile            false   eager
    auto    compile when the run's remaining steps exceed the break-even,
            compile seconds / (eager step - compiled step)

    choice = decide(plan, steps)            # CompileChoice: the decision, the figures, and a line that says why
    StepTimes(plan, choice.compile, stats)  # callback: records this run's steps (RunStats times them) for the next

The figures are measurements where this machine has them: $RAFALE_CACHE/compile_times.json keeps, per run
shape (the model config, the batch and block, the precision, LoRA, the device, torch, threads), the latest
compile seconds and compiled step of a run that compiled, and the eager step of one that did not. A figure
not measured yet is estimated: the eager step from the FLOPs per step at ESTIMATED_MFU of the peak, the
compile time as ESTIMATED_COMPILE_S, the compiled step as the eager one over ESTIMATED_SPEEDUP (on a 2-core
CPU, a pythia-14m-shaped model compiles in ~8 s with a warm inductor cache and ~43 s cold, and steps ~1.08x
faster). So the first run of a shape decides on estimates, and every run after on what the one before saw.

The compile time of the first batch is counted as its time minus a steady compiled step; evaluation's own
compile (no grad, other shapes) is not counted. A compiler that fails (no C++ compiler, an inductor error)
prints one warning line and that graph runs eagerly: the run goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from rafale.files import write_text
from rafale.train.mfu import cpu_name

ESTIMATED_MFU = 0.45  # eager training MFU of a small model on a CPU (0.44-0.52 measured)
ESTIMATED_COMPILE_S = 45.0
ESTIMATED_SPEEDUP = 1.08
RECORDS = "compile_times.json"


@dataclass(frozen=True)
class CompileChoice:
    compile: bool
    why: str  # one line: the decision, the figures and where they come from
    compile_s: float | None = None
    eager_step_s: float | None = None
    compiled_step_s: float | None = None
    break_even_steps: float | None = None  # inf when compiling never pays
    steps: int | None = None  # the steps this run has left

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        if self.compile and COMPILE_FAILED:
            d["why"] += "; the compiler failed, trained eagerly"
        if d["break_even_steps"] is not None:
            d["break_even_steps"] = None if d["break_even_steps"] == float("inf") else round(d["break_even_steps"])
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


# ---- the decision ------------------------------------------------------------------------------------
def decide(plan, steps: int | None) -> CompileChoice:
    """Compile or not, as run.compile says; for auto, from the measured (or estimated) figures."""
    setting = plan.cfg.run.compile
    if setting is not True and setting is not False and steps is not None:
        return auto_choice(plan, steps)
    on = setting is True
    return CompileChoice(on, f"run.compile {str(setting).lower()}: {'compiling' if on else 'eager'}", steps=steps)


def auto_choice(plan, steps: int) -> CompileChoice:
    rec = read_records().get(shape_key(plan), {})
    eager, eager_src = rec.get("eager_step_s"), "measured"
    if eager is None:
        eager, eager_src = estimated_eager_step(plan), "estimated"
    compile_s, compile_src = rec.get("compile_s"), "measured"
    if compile_s is None:
        compile_s, compile_src = ESTIMATED_COMPILE_S, "estimated"
    compiled, compiled_src = rec.get("compiled_step_s"), "measured"
    if compiled is None and eager is not None:
        compiled, compiled_src = eager / ESTIMATED_SPEEDUP, "estimated"
    if eager is None:
        return CompileChoice(False, "run.compile auto: eager (no step time of this run's shape yet; this run "
                                    "measures one)", compile_s=compile_s, steps=steps)
    saved = eager - compiled
    break_even = compile_s / saved if saved > 0 else float("inf")
    on = steps > break_even
    pays = f"pays back after {break_even:,.0f} steps" if saved > 0 else "never pays back"
    why = (f"run.compile auto: {'compiling' if on else 'eager'} (compile {compile_s:.0f} s {compile_src}; step "
           f"{eager * 1e3:,.0f} ms eager {eager_src}, {compiled * 1e3:,.0f} ms compiled {compiled_src}: {pays}; "
           f"this run has {steps:,})")
    return CompileChoice(on, why, compile_s, eager, compiled, break_even, steps)


def estimated_eager_step(plan) -> float | None:
    """Seconds per step from the FLOPs per token at ESTIMATED_MFU of the peak (decoders only)."""
    if not plan.flops_per_token or not plan.peak_flops:
        return None
    per_process_peak = plan.peak_flops / dist.get_world_size()
    return plan.flops_per_token * plan.train_batch * plan.cfg.data.block_size / (per_process_peak * ESTIMATED_MFU)


def planned_steps(max_duration: str, batches_per_epoch: int | None, tokens_per_batch: int, done: int = 0) -> int | None:
    """Batches a run of `max_duration` still has after `done`; None when it cannot be known before training."""
    from composer.core import Time, TimeUnit

    t = Time.from_timestring(max_duration)
    if t.unit == TimeUnit.BATCH:
        total = t.value
    elif t.unit == TimeUnit.EPOCH and batches_per_epoch:
        total = t.value * batches_per_epoch
    elif t.unit == TimeUnit.TOKEN:
        total = t.value // tokens_per_batch
    else:
        return None
    return max(0, int(total) - done)


# ---- the records -------------------------------------------------------------------------------------
def records_path() -> Path:
    return Path(os.environ.get("RAFALE_CACHE", Path.home() / ".rafale_cache")) / RECORDS


def read_records() -> dict:
    try:
        return json.loads(records_path().read_text())
    except (OSError, ValueError):
        return {}


def shape_key(plan) -> str:
    """What a step's time and a compile's time depend on, hashed."""
    mc = plan.model_config
    what = {"model": dataclasses.asdict(mc) if mc is not None else plan.cfg.model.hf, "head": plan.head,
            "batch": plan.train_batch, "microbatch": plan.microbatch, "block": plan.cfg.data.block_size,
            "precision": plan.precision, "lora": plan.lora is not None, "device": plan.device,
            "hardware": torch.cuda.get_device_name(0) if plan.device == "gpu" else cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "world": dist.get_world_size()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(key: str, **figures: float) -> None:
    recs = read_records()
    recs[key] = {**recs.get(key, {}), **figures, "time": time.time()}
    try:
        records_path().parent.mkdir(parents=True, exist_ok=True)
        write_text(records_path(), json.dumps(recs, indent=1))
    except OSError:
        pass  # a read-only cache: the next run estimates again


class StepTimes(Callback):
    """At the end of fit, records the eager step, or the compile seconds and the compiled step, for the next
    run's decision (rank 0), from the batch times `stats` (callbacks.RunStats) took."""

    def __init__(self, plan, compiled: bool, stats):
        self.key, self.compiled, self.stats = shape_key(plan), compiled, stats

    def fit_end(self, state: State, logger: Logger) -> None:
        times = self.stats.batch_seconds
        if dist.get_global_rank() != 0 or len(times) < (3 if self.compiled else 2):
            return
        step = statistics.median(times[1:])  # the first batch warms up (and compiles)
        if self.compiled and not COMPILE_FAILED:
            record(self.key, compile_s=max(0.0, times[0] - step), compiled_step_s=step)
        elif not self.compiled:
            record(self.key, eager_step_s=step)


# ---- compiling, with an eager fallback ---------------------------------------------------------------
COMPILE_FAILED = False


def inductor_or_eager(gm: torch.fx.GraphModule, example_inputs):
    """torch.compile backend: inductor, or, when it fails (no C++ compiler, ...), the graph run eagerly, with
    one warning line for the process."""
    from torch._inductor.compile_fx import compile_fx

    global COMPILE_FAILED
    try:
        return compile_fx(gm, example_inputs)
    except Exception as e:  # noqa: BLE001 - any compiler failure: train on, eagerly
        if not COMPILE_FAILED:
            reason = (str(e).strip().splitlines() or [""])[0][:160]
            print(f"warning: run.compile: torch.compile failed ({type(e).__name__}: {reason}); training eagerly",
                  file=sys.stderr, flush=True)
        COMPILE_FAILED = True
        return gm.forward


def compile_config(compile: bool) -> dict | None:
    """Composer's compile_config for the decision."""
    return {"backend": inductor_or_eager} if compile else None
