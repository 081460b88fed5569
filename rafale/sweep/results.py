"""A sweep's results, rebuilt from its points' files: results.csv, results.png and the best point per group.

Every row comes from what the point left on disk (its manifest.json and final/, and the sweep's
points/<point>.json for a failed attempt), never from memory, so any process can rebuild the whole file:
the sweep after each point, and each task of a Slurm array.

Columns: the grid keys (as their dotted names), family, parameters, status, train_loss, eval_loss,
eval_perplexity, eval_bits_per_byte, tokens, tokens_per_second, wall_seconds (training time), energy_kwh
(when logging.energy tracked it), then the metrics of an `eval:` section (`<task>/<metric>`,
`eval.data/<metric>`), then run_dir and error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rafale.files import atomic_path, write_text

COLUMNS = ["family", "parameters", "status", "train_loss", "eval_loss", "eval_perplexity", "eval_bits_per_byte",
           "tokens", "tokens_per_second", "wall_seconds", "energy_kwh"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def count_parameters(safetensors_file: Path) -> int | None:
    """Elements in a safetensors file, from its header alone (no tensor is read)."""
    try:
        with open(safetensors_file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def eval_columns(payload: dict | None) -> dict[str, float]:
    """An `eval:` section's results (summary["eval"]) as CSV columns."""
    if not payload:
        return {}
    out = {}
    for key in ("loss", "perplexity", "bits_per_byte", "accuracy"):
        if (payload.get("data") or {}).get(key) is not None:
            out[f"eval.data/{key}"] = payload["data"][key]
    if payload.get("results"):
        from rafale.eval.harness import metric_rows

        out.update({f"{task}/{metric}": value for task, metric, value, _ in metric_rows(payload["results"])})
    return out


def point_row(plan, i: int) -> dict:
    p, run_dir = plan.points[i], plan.run_dir(i)
    manifest = _read_json(run_dir / "manifest.json")
    attempt = _read_json(plan.sweep_dir / "points" / f"{p.name}.json")
    s = manifest.get("summary") or {}
    if manifest.get("status") == "finished" and attempt.get("status") != "failed":
        status, error = "finished", None
    elif attempt:
        status, error = attempt.get("status"), attempt.get("error")
    else:
        status, error = manifest.get("status", "pending"), None
    row = {key: v.text for key, v in p.values.items()}
    final = run_dir / "final"
    row["family"] = _read_json(final / "config.json").get("model_type") if s else None
    row["parameters"] = count_parameters(final / "model.safetensors") if s else None
    evals = s.get("eval") or {}
    row.update(status=status, train_loss=s.get("train_loss"), eval_loss=s.get("eval_loss"),
               eval_perplexity=s.get("eval_perplexity"),
               eval_bits_per_byte=s.get("eval_bits_per_byte", (evals.get("data") or {}).get("bits_per_byte")),
               tokens=s.get("tokens"), tokens_per_second=s.get("tokens_per_second"),
               wall_seconds=s.get("train_seconds"), energy_kwh=(s.get("energy") or {}).get("kwh"))
    row.update(eval_columns(evals))
    row.update(run_dir=str(run_dir), error=error)
    return row


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_results(plan) -> list[dict]:
    """Rebuild results.csv and results.png from every point's files (atomically); return the rows."""
    rows = [point_row(plan, i) for i in range(len(plan.points))]
    extra = [k for r in rows for k in r if k not in (*plan.grid, *COLUMNS, "run_dir", "error")]
    header = [*plan.grid, *COLUMNS, *dict.fromkeys(extra), "run_dir", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in header})
    write_text(plan.sweep_dir / "results.csv", buf.getvalue())
    if any(r["eval_loss"] is not None for r in rows):
        plot(plan, rows, plan.sweep_dir / "results.png")
    return rows


def best_per_group(plan, rows: list[dict]) -> dict[str, int]:
    """{value of the first grid key: the row index with the lowest eval loss} among finished points."""
    first = next(iter(plan.grid))
    best: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["status"] == "finished" and r["eval_loss"] is not None:
            g = r[first]
            if g not in best or r["eval_loss"] < rows[best[g]]["eval_loss"]:
                best[g] = i
    return best


def plot(plan, rows: list[dict], out: Path) -> Path:
    """Left: eval loss of every point, one bar per value of the first grid key at each setting of the others.
    Right: eval loss against tokens seen for the best point of each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rafale.train.plot import read_metrics

    keys = list(plan.grid)
    first, others = keys[0], keys[1:]
    groups = [v.text for v in plan.grid[first]]
    settings = list(dict.fromkeys(tuple(r[k] for k in others) for r in rows))
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        xs, ys = [], []
        for s, setting in enumerate(settings):
            for r in rows:
                if r[first] == group and tuple(r[k] for k in others) == setting and r["eval_loss"] is not None:
                    xs.append(s + (g - (len(groups) - 1) / 2) * width)
                    ys.append(r["eval_loss"])
        if xs:
            drawn = bars.bar(xs, ys, width=width, color=f"C{g % 10}", label=f"{first}={group}")
            bars.bar_label(drawn, fmt="%.3f", fontsize="x-small")
    bars.set_xticks(range(len(settings)))
    bars.set_xticklabels(["\n".join(f"{k}={v}" for k, v in zip(others, s)) or "" for s in settings], fontsize="small")
    bars.set_ylabel("final eval loss (nats per token)")
    finished = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    if finished:  # losses are close together: start the axis near them, not at zero
        lo, hi = min(finished), max(finished)
        bars.set_ylim(max(0.0, lo - 0.15 * (hi - lo or 1.0)), hi + 0.1 * (hi - lo or 1.0))
    bars.set_title(f"eval loss per point, by {first}", fontsize="medium")
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize="small")
    for g, i in best_per_group(plan, rows).items():
        _, evals = read_metrics(Path(rows[i]["run_dir"]))
        if evals:
            curves.plot(*zip(*evals), marker="o", color=f"C{groups.index(g) % 10}", label=plan.points[i].name)
    curves.set_xlabel("tokens seen")
    curves.set_ylabel("eval loss (nats per token)")
    curves.set_title(f"best point of each {first}", fontsize="medium")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def print_summary(console: Console, plan, rows: list[dict]) -> None:
    """Every point's status, then the best point of each group (the first grid key's values)."""
    f4 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    t = Table("point", "name", "status", "eval loss", "tokens/s", title=f"sweep {plan.name}", title_justify="left")
    for p, r in zip(plan.points, rows):
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        t.add_row(str(p.index), p.name, status, f4(r["eval_loss"]),
                  "-" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:,.0f}")
    console.print(t)
    first = next(iter(plan.grid))
    best = best_per_group(plan, rows)
    if best:
        b = Table(first, "best point", "eval loss", "eval perplexity", "parameters",
                  title="best point per group (lowest eval loss)", title_justify="left")
        for g, i in best.items():
            r = rows[i]
            b.add_row(g, plan.points[i].name, f4(r["eval_loss"]),
                      "-" if r["eval_perplexity"] is None else f"{r['eval_perplexity']:.2f}",
                      "-" if r["parameters"] is None else f"{r['parameters']:,}")
        console.print(b)
    png = plan.sweep_dir / "results.png"
    console.print(f"results: {plan.sweep_dir / 'results.csv'}" + (f", {png}" if png.exists() else ""),
                  highlight=False, markup=False)
