"""Loss curves from metrics.jsonl: train and eval loss against tokens seen, one colour per run.

Written at the end of every run as <run dir>/loss.png, and by `rafale plot RUN_DIR...` to compare runs.
matplotlib draws with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

from rafale.errors import RunStateError
from rafale.files import atomic_path


def read_metrics(run_dir: Path) -> tuple[list, list]:
    """([(tokens, train loss)], [(tokens, eval loss)]) from a run directory's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RunStateError(f"{run_dir}: no metrics.jsonl; expected a run directory of `rafale run` "
                            f"with the file logger")
    train, evals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if "train/loss" in rec:
            train.append((rec["tokens"], rec["train/loss"]))
        if "eval/loss" in rec:
            evals.append((rec["tokens"], rec["eval/loss"]))
    return train, evals


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    names = [Path(r).resolve().name for r in run_dirs]
    for i, run_dir in enumerate(run_dirs):
        train, evals = read_metrics(run_dir)
        colour = f"C{i % 10}"
        name = names[i] if names.count(names[i]) == 1 else str(run_dir)  # same names: tell them apart by path
        if train:
            ax.plot(*zip(*train), color=colour, alpha=0.8, linewidth=1, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals), color=colour, marker="o", linestyle="--", label=f"{name} eval")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
