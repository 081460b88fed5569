"""Run the points of a sweep one at a time, skip the finished ones, record how each attempt ended.

    plan = plan_sweep("configs/retnet-vs-transformer.yaml", ["optim.lr=1e-3,3e-3"], [])
    code = run_sweep(plan, console=console)          # 0 when every point finished, 1 when one failed

Each point is an ordinary run in `<run.output_dir>/<sweep name>/<point>/`, so its resume logic is the run
directory's: a point whose manifest says `finished` (with the same config) is skipped, one that stopped part
way resumes from its checkpoint; a finished one whose config differs only in its `eval:` section is evaluated
again, not retrained. The sweep's own files are in `sweeps/<sweep name>/` beside run.output_dir
(`runs/` -> `sweeps/`): sweep.json (the points), points/<point>.json (how its last attempt ended),
results.csv and results.png, rebuilt from every point's files after each point, under a lock, so that
several `--point K` processes (a Slurm array) can finish at the same time.

Points run in this process by default: the imports (Composer, torch) are paid once, and a failing point
is caught, recorded and the next one starts. `launcher="torchrun"` starts each point as
`python -m torch.distributed.run --nproc_per_node N -m rafale run -c sweeps/<name>/points/<point>.yaml`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from rafale.config import Config, dump_config, load_config
from rafale.errors import ConfigError, Interrupted, RafaleError
from rafale.files import write_json, write_text
from rafale.sweep.points import Point, check_grid, grid_size, make_points, parse_grid, point_configs, yaml_grid

LAUNCHERS = ("inprocess", "torchrun")


@dataclass(frozen=True)
class SweepPlan:
    source: str  # the config file
    name: str
    grid: dict  # key -> [Value]: the keys in order, the first one groups the results
    points: list[Point]
    configs: list[Config]  # one per point, validated
    sweep_dir: Path  # sweeps/<name>
    total: int  # points in the full grid (more than len(points) with random)

    def run_dir(self, i: int) -> Path:
        return Path(self.configs[i].run.output_dir) / self.configs[i].run.name


def sweeps_dir(output_dir: str, name: str) -> Path:
    """sweeps/<name> beside run.output_dir: runs/ -> sweeps/<name>, /scratch/me/runs -> /scratch/me/sweeps/<name>."""
    return Path(output_dir).parent / "sweeps" / name


def plan_sweep(config: str | Path, grid_items: list[str], overrides: list[str], *, random: int | None = None,
               seed: int | None = None, name: str | None = None) -> SweepPlan:
    """Everything the sweep will run, every point's config validated; nothing written.

    Raises:
        RafaleError: a bad grid key or value, --random larger than the grid, a point whose config or model
            is invalid (naming the file, the point and the key).
    """
    base = load_config(config, overrides)
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    grid = {**yaml_grid(base.sweep.grid), **parse_grid(grid_items)}  # --grid replaces the file's values of a key
    check_grid(grid, overrides)
    name = name or base.sweep.name or base.run.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"--name {name!r}: expected a plain directory name (letters, digits, '_', '-', '.')")
    points = make_points(grid, base.sweep.random if random is None else random,
                         base.sweep.seed if seed is None else seed)
    out = Path(base.run.output_dir) / name
    configs = point_configs(str(config), raw, overrides, points, out)
    if any(c.eval.tasks or c.eval.data is not None for c in configs):
        from rafale.eval.run import check_eval_config

        for e in {json.dumps(c.to_dict()["eval"], sort_keys=True): c.eval for c in configs}.values():
            try:
                check_eval_config(e)  # unknown tasks fail now, not after the first point has trained
            except RafaleError as err:
                raise type(err)(f"{config}: {err}") from None
    return SweepPlan(str(config), name, grid, points, configs, sweeps_dir(base.run.output_dir, name),
                     grid_size(grid))


# ---- running --------------------------------------------------------------------------------------------
def run_sweep(plan: SweepPlan, *, launcher: str = "inprocess", nproc: int = 1, point: int | None = None,
              console: Console | None = None) -> int:
    """Run the points (or only point number `point`, 0-based as `--list` shows), in order. Returns 0 when each
    one run finished, 1 when one failed (the others still ran). Ctrl-C or SIGTERM stops the sweep (the point
    saves its checkpoint); running the same command again resumes it."""
    from rafale.sweep import results

    console = console or Console()
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher}: expected one of {', '.join(LAUNCHERS)}")
    if nproc > 1 and launcher != "torchrun":
        raise ConfigError(f"--nproc {nproc}: needs --launcher torchrun (in-process points run in one process)")
    todo = list(range(len(plan.points)))
    if point is not None:
        if not 0 <= point < len(plan.points):
            raise ConfigError(f"--point {point}: the sweep has {len(plan.points)} points, 0 to "
                              f"{len(plan.points) - 1} (`rafale sweep ... --list` names them)")
        todo = [point]
    with results_lock(plan.sweep_dir):
        write_json(plan.sweep_dir / "sweep.json", {
            "config": plan.source, "name": plan.name, "grid": {k: [v.text for v in vs] for k, vs in plan.grid.items()},
            "points": [{"index": p.index, "name": p.name, "values": {k: v.text for k, v in p.values.items()},
                        "run_dir": str(plan.run_dir(i))} for i, p in enumerate(plan.points)]})
    failed = 0
    for n, i in enumerate(todo, 1):
        p, run_dir = plan.points[i], plan.run_dir(i)
        console.rule(f"[bold][{n}/{len(todo)}] point {p.index}[/] {p.name}", align="left")
        status, error = finished_state(plan.configs[i], run_dir)
        if status == "finished":
            console.print(f"{p.name}: finished before; skipped ({run_dir})", highlight=False, markup=False)
            forget_failure(plan, p)
            continue
        if status == "evaluate":
            console.print(f"{p.name}: finished before with another eval: section; evaluating it again",
                          highlight=False, markup=False)
            t0 = time.perf_counter()
            status, error = evaluate_again(plan.configs[i], run_dir, console)
            record(plan, p, status, error, time.perf_counter() - t0)
        elif status is None:
            status, error = attempt(plan, i, launcher, nproc, console)
        else:
            record(plan, p, status, error, 0.0)
        failed += status != "finished"
        console.print(f"{p.name}: {status}" + (f": {error}" if error else ""), highlight=False, markup=False,
                      style="green" if status == "finished" else "red")
        with results_lock(plan.sweep_dir):
            results.write_results(plan)
    with results_lock(plan.sweep_dir):
        rows = results.write_results(plan)
    results.print_summary(console, plan, rows)
    return 1 if failed else 0


def attempt(plan: SweepPlan, i: int, launcher: str, nproc: int, console: Console) -> tuple[str, str | None]:
    """Run (or resume) point i and record how it ended; an interrupt is recorded, then goes on up."""
    from rafale.sweep import results

    p, cfg, t0 = plan.points[i], plan.configs[i], time.perf_counter()
    try:
        if launcher == "torchrun":
            status, error = run_torchrun(cfg, plan.sweep_dir, nproc)
        else:
            status, error = run_inprocess(cfg, console)
    except KeyboardInterrupt:
        record(plan, p, "interrupted", None, time.perf_counter() - t0)
        with results_lock(plan.sweep_dir):
            results.write_results(plan)
        raise
    record(plan, p, status, error, time.perf_counter() - t0)
    return status, error


def finished_state(cfg: Config, run_dir: Path) -> tuple[str | None, str | None]:
    """("finished", None) for a point that finished with this config, ("evaluate", None) for one that finished
    with another `eval:` section only (evaluated again, not retrained), ("failed", why) for one that finished
    with another config (it is not retrained over), (None, None) for one to run or resume."""
    try:
        status = json.loads((run_dir / "manifest.json").read_text()).get("status")
    except (OSError, ValueError):
        return None, None
    if status != "finished":
        return None, None
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        old = {}
    changed = _differ(old, cfg.to_dict())
    if changed and all(k.startswith("eval.") for k in changed):
        return "evaluate", None
    if changed:
        return "failed", (f"{run_dir} finished with another config (it differs in {', '.join(changed[:5])}); "
                          f"remove the directory to train it again, or give the sweep another --name")
    return "finished", None


def _differ(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in dict.fromkeys([*a, *b]):
        if not prefix and k == "sweep":
            continue
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict) and k != "overrides":
            out += _differ(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def evaluate_again(cfg: Config, run_dir: Path, console: Console) -> tuple[str, str | None]:
    """A finished point under its new `eval:` section: its final/ evaluated as the section says, the results
    in its manifest's summary (none without a section) and the section in its config.yaml."""
    from rafale.eval.run import evaluate_config
    from rafale.train.run import has_eval

    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        summary = manifest.setdefault("summary", {})
        summary.pop("eval", None)
        if has_eval(cfg):
            summary["eval"] = evaluate_config(run_dir / "final", cfg.eval, console)
    except RafaleError as e:
        return "failed", one_line(str(e))
    write_json(run_dir / "manifest.json", manifest)
    write_text(run_dir / "config.yaml", dump_config(cfg, run_only=True))
    return "finished", None


def run_inprocess(cfg: Config, console: Console) -> tuple[str, str | None]:
    """One point as `rafale run` would run it, in this process. ("finished", None) or ("failed", one line)."""
    from rafale.train.run import run

    try:
        code = run(cfg, console=console)
    except RafaleError as e:
        return "failed", one_line(str(e))
    except Exception as e:  # a bug shows its traceback, and the other points still run
        console.print_exception()
        return "failed", one_line(f"{type(e).__name__}: {e}")
    finally:
        gc.collect()
    return ("finished", None) if code == 0 else ("failed", f"exit code {code}")


def run_torchrun(cfg: Config, sweep_dir: Path, nproc: int) -> tuple[str, str | None]:
    """One point under the distributed launcher, from its resolved config in sweeps/<name>/points/."""
    path = sweep_dir / "points" / f"{cfg.run.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, dump_config(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "rafale", "run", "-c", str(path)]
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "DEBUG", "FORCE")}  # a point is a plain run
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    error = None
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.startswith("error: "):
                error = line[len("error: "):].strip()
        code = proc.wait()
    except KeyboardInterrupt as e:  # Ctrl-C reached the point's processes too; a scheduler's SIGTERM may not
        if getattr(e, "signum", signal.SIGINT) != signal.SIGINT:
            proc.send_signal(e.signum)
        proc.wait()
        raise
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise Interrupted(code - 128)
    return ("finished", None) if code == 0 else ("failed", error or f"exit code {code}")


def one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def record(plan: SweepPlan, p: Point, status: str, error: str | None, seconds: float) -> None:
    """points/<point>.json: how the point's last attempt ended (results.csv reads it with the manifest)."""
    (plan.sweep_dir / "points").mkdir(parents=True, exist_ok=True)
    write_json(plan.sweep_dir / "points" / f"{p.name}.json",
               {"status": status, "error": error, "attempt_seconds": round(seconds, 2),
                "ended": time.strftime("%Y-%m-%dT%H:%M:%S")})


def forget_failure(plan: SweepPlan, p: Point) -> None:
    """A point found finished (its config restored after a mismatch) drops a record that says otherwise."""
    path = plan.sweep_dir / "points" / f"{p.name}.json"
    try:
        if json.loads(path.read_text()).get("status") != "finished":
            path.unlink()
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def results_lock(sweep_dir: Path):
    """One process at a time rebuilds results.csv and results.png (the Slurm array's tasks may end together)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "results.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def print_points(console: Console, plan: SweepPlan) -> None:
    """`rafale sweep ... --list`: each point's index (for --point), name, values and run directory."""
    t = Table("point", "name", *plan.grid, "run directory",
              title=f"sweep {plan.name}: {len(plan.points)} of {plan.total} points", title_justify="left")
    for i, p in enumerate(plan.points):
        t.add_row(str(p.index), p.name, *(p.values[k].text for k in plan.grid), str(plan.run_dir(i)))
    console.print(t)
