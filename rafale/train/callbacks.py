"""Composer callbacks: the rich progress bar (logger `console`) and metrics.jsonl (logger `file`).

Both run on rank 0 only. Throughput counts training time alone (evaluation and checkpointing excluded).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rafale.files import write_text


def total_batches(state: State) -> int | None:
    """The run's length in batches, from max_duration and the dataloader length."""
    d = state.max_duration
    if d is None:
        return None
    if d.unit == TimeUnit.BATCH:
        return int(d.value)
    if d.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
        return int(d.value) * int(state.dataloader_len)
    if d.unit == TimeUnit.TOKEN and state.timestamp.batch.value > 0:
        tokens_per_batch = state.timestamp.token.value / state.timestamp.batch.value
        return int(d.value / tokens_per_batch)
    return None


EVAL_NAMES = {"MulticlassAccuracy": "accuracy", "MaskedAccuracy": "masked_accuracy"}


class RunStats(Callback):
    """Tracks training throughput and the latest losses; everything else reads from here."""

    def __init__(self):
        self.train_seconds, self.tokens, self._t0 = 0.0, 0, 0.0  # training time and tokens (eval excluded)
        self.batch_seconds: list[float] = []  # each batch of this process's fit (compiling.StepTimes reads it)
        self.train_loss: float | None = None
        self.eval_loss: float | None = None
        self.eval_ppl: float | None = None
        self.eval_extra: dict[str, float] = {}  # other eval metrics, e.g. {"accuracy": 0.93}
        self.lr: float | None = None
        self._tokens_before = 0

    def batch_start(self, state: State, logger: Logger) -> None:
        self._tokens_before = state.timestamp.token.value
        self._t0 = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        seconds = time.perf_counter() - self._t0
        self.train_seconds += seconds
        self.batch_seconds.append(seconds)
        self.tokens += state.timestamp.token.value - self._tokens_before  # Composer has advanced it already
        losses = state.loss if isinstance(state.loss, (list, tuple)) else [state.loss]
        self.train_loss = sum(float(l) for l in losses) / len(losses)
        self.lr = state.optimizers[0].param_groups[0]["lr"]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    def eval_end(self, state: State, logger: Logger) -> None:
        metrics = next(iter(state.eval_metrics.values()), {})
        for name, metric in metrics.items():  # names as the Composer wrappers (and HuggingFaceModel) give them
            value = float(metric.compute())
            if name.endswith("CrossEntropy"):
                self.eval_loss = value
            elif name.endswith("Perplexity"):
                self.eval_ppl = value
            else:
                self.eval_extra[EVAL_NAMES.get(name, name.lower())] = value


class RichProgress(Callback):
    def __init__(self, stats: RunStats, console):
        self.stats = stats
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} ba"),
                   TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        self.progress = Progress(*columns, console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_batches(state), loss="-", lr="-", tps="-",
                                           completed=state.timestamp.batch.value)

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.progress is None:
            return
        s = self.stats
        total = total_batches(state)
        self.progress.update(self.task, completed=state.timestamp.batch.value, total=total,
                             loss=f"{s.train_loss:.3f}", lr=f"{s.lr:.2e}", tps=f"{s.tokens_per_second:,.0f}")

    def eval_end(self, state: State, logger: Logger) -> None:
        s = self.stats
        if dist.get_global_rank() == 0 and s.eval_loss is not None:  # the final evaluation comes after fit_end
            more = ([f"perplexity {s.eval_ppl:.2f}"] if s.eval_ppl is not None else []) + \
                   [f"{k} {v:.4f}" for k, v in s.eval_extra.items()]
            console = self.progress.console if self.progress is not None else self.console
            console.print(f"  step {state.timestamp.batch.value}: eval loss {s.eval_loss:.4f}"
                          + "".join(f", {m}" for m in more))

    def fit_end(self, state: State, logger: Logger) -> None:
        self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class MetricsFile(Callback):
    """Appends one JSON line per logged training step and per evaluation to metrics.jsonl."""

    def __init__(self, path: Path, stats: RunStats, log_interval: int, flops_per_token: int | None = None,
                 peak_flops: float | None = None):
        self.path = Path(path)
        self.stats = stats
        self.log_interval = max(1, log_interval)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops  # all processes together

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0 or not self.path.exists():
            return
        # On resume, drop lines written after the checkpoint we resumed from: they will be written again.
        # A process killed mid-write can leave a torn last line; it goes too.
        step = state.timestamp.batch.value
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        write_text(self.path, "".join(l + "\n" for l in kept))

    def _write(self, record: dict) -> None:
        if dist.get_global_rank() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def batch_end(self, state: State, logger: Logger) -> None:
        step = state.timestamp.batch.value
        if step % self.log_interval == 0 or step == total_batches(state):
            s = self.stats
            record = {"step": step, "tokens": state.timestamp.token.value, "train/loss": s.train_loss, "lr": s.lr,
                      "tokens_per_s": round(s.tokens_per_second, 1)}
            if self.flops_per_token and self.peak_flops:
                record["mfu"] = round(s.tokens_per_second * self.flops_per_token / self.peak_flops, 4)
            self._write({**record, "time": round(time.time(), 3)})

    def eval_end(self, state: State, logger: Logger) -> None:
        s = self.stats
        if s.eval_loss is not None:
            self._write({"step": state.timestamp.batch.value,
                         "tokens": state.timestamp.token.value,
                         "eval/loss": s.eval_loss, "eval/perplexity": s.eval_ppl,
                         **{f"eval/{k}": v for k, v in s.eval_extra.items()}, "time": round(time.time(), 3)})
