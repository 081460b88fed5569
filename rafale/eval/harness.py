"""`rafale eval --tasks`: lm-evaluation-harness tasks, found offline, run through rafale's adapter.

    out = run_tasks("runs/quickstart", ["stories_cloze", "stories_ppl"])
    out["results"]["stories_cloze"]["acc,none"]          # lm-eval's own results dict, unchanged

Tasks are lm-eval YAML tasks, looked for in this order: the ones shipped in rafale/eval/tasks/ (made from
the embedded story corpus), the folder given as include_path, and only when a name is found in neither,
lm-eval's ~15,000 built-in tasks (indexing them takes seconds, and their data come from the hub).
Every problem (an unknown name, a YAML lm-eval rejects, more few-shot examples than a task has, an
encoder) is found before the model scores anything, and said in one line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from rafale.errors import ConfigError, ModelError

SHIPPED_TASKS = Path(__file__).resolve().parent / "tasks"


def lm_eval_missing() -> ConfigError:
    return ConfigError("lm-eval tasks need the lm-eval package, which is not installed; pip install lm-eval==0.4.13 "
                       "(it is in cpu-requirements.txt)")


def task_manager(names: list[str], include_path: Optional[str | Path] = None):
    """An lm-eval TaskManager that knows every name in `names`: over the shipped tasks and include_path, and
    over lm-eval's built-in tasks only when one of the names is in neither.

    Raises:
        ConfigError: include_path is not a folder; a name is nowhere (with close matches and the places looked in).
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise lm_eval_missing() from None
    paths = [SHIPPED_TASKS]
    if include_path is not None:
        include = Path(include_path).expanduser()
        if not include.is_dir():
            raise ConfigError(f"--include-path {include_path}: no such folder; expected a folder of lm-eval task YAML "
                              f"files")
        paths.append(include)
    try:
        manager = TaskManager(include_defaults=False, include_path=[str(p) for p in paths])
    except Exception as e:  # lm-eval raises plain exceptions for YAML it cannot index
        raise ConfigError(f"lm-eval rejected a task in {', '.join(map(str, paths))}: {_first_line(e)}") from None
    if all(name in manager.all_tasks for name in names):
        return manager
    local = set(manager.all_tasks)
    manager = TaskManager(include_defaults=True, include_path=[str(p) for p in paths])
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(local), n=3) or \
            difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"--tasks: unknown task {name!r}{hint} (looked in {', '.join(map(str, paths))} and "
                          f"lm-eval's built-in tasks)")
    return manager


def load_tasks(manager, names: list[str], num_fewshot: Optional[int] = None) -> dict:
    """{name: lm-eval Task}, each loaded with its data; a YAML or data lm-eval rejects names its file.

    Raises:
        ConfigError: lm-eval cannot build a task (its reason and the task's YAML file), or num_fewshot asks
            for more examples than the task's few-shot split holds.
    """
    tasks = {}
    for name in names:
        where = _yaml_of(manager, name)
        try:
            loaded = manager.load([name])["tasks"]
        except Exception as e:  # lm-eval and datasets raise many kinds for a bad task: all are the task's fault
            raise ConfigError(f"{where}: lm-eval rejected task {name!r}: {_first_line(e)}") from None
        for task_name, task in loaded.items():
            if num_fewshot:
                check_fewshot(task_name, task, num_fewshot, _yaml_of(manager, task_name))
            tasks[task_name] = task
    return tasks


def check_fewshot(name: str, task, k: int, where: str) -> None:
    c = task.config
    split = c.fewshot_split or c.training_split or c.validation_split or c.test_split
    pool = task.fewshot_docs()
    available = len(pool) if pool is not None else 0
    if split is not None and split == (c.test_split or c.validation_split):
        available -= 1  # the document being asked about is never its own example
    if k > available:
        raise ConfigError(f"--num-fewshot {k}: task {name!r} has only {max(available, 0)} few-shot examples "
                          f"(split {split!r}, {where}); use at most {max(available, 0)}")


def run_tasks(model, names: list[str], *, include_path=None, num_fewshot: Optional[int] = None,
              limit: Optional[float] = None, batch_size: int = 8, device: Optional[str] = None,
              bootstrap_iters: int = 100000) -> dict:
    """Run lm-eval tasks on `model` (a path, or a RafaleLM) and return what `rafale eval -o` writes.

    Returns:
        {"results": lm-eval's results dict unchanged, "model": the path, "rafale_version", "lm_eval_version",
         "num_fewshot", "limit", "task_config_hashes": {task: sha256 of its resolved config},
         "n_samples": lm-eval's, "wall_seconds"}
    Raises:
        ConfigError, ModelError: see task_manager, load_tasks; an encoder model.
    """
    t0 = time.perf_counter()
    manager = task_manager(names, include_path)
    try:
        import lm_eval
    except ImportError:
        raise lm_eval_missing() from None
    from rafale.eval.adapter import RafaleLM

    if not isinstance(model, RafaleLM):
        model = adapter_for(model, names, batch_size=batch_size, device=device)
    quiet_lm_eval()
    tasks = load_tasks(manager, names, num_fewshot)
    out = evaluate_tasks(model, manager, list(tasks.values()), num_fewshot=num_fewshot, limit=limit,
                         bootstrap_iters=bootstrap_iters)
    import rafale

    return {"results": out["results"], "model": model.path, "rafale_version": rafale.__version__,
            "lm_eval_version": lm_eval.__version__, "num_fewshot": num_fewshot, "limit": limit,
            "task_config_hashes": {name: config_hash(cfg) for name, cfg in out.get("configs", {}).items()},
            "n_samples": out.get("n-samples"), "wall_seconds": round(time.perf_counter() - t0, 2)}


def evaluate_tasks(lm, manager, tasks: list, *, num_fewshot: Optional[int], limit, bootstrap_iters: int) -> dict:
    """What lm_eval.simple_evaluate does with a ready model and loaded tasks (its default seeds, the few-shot
    settings, then lm_eval.evaluator.evaluate), without the environment report it appends: torch's
    collect_env, a git call and an import of transformers for its version, ~4 s that nothing here reads."""
    import random

    import numpy as np
    from lm_eval import evaluator
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.utils import set_torch_seed

    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    set_torch_seed(DEFAULT_OTHER_SEED)
    loaded = manager.load(tasks)
    for task in loaded["tasks"].values():
        default = task.get_config("num_fewshot")
        if num_fewshot is not None and default != 0:  # a task that sets 0 keeps it, as in simple_evaluate
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif num_fewshot is None and default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters,
                              log_samples=False, fewshot_as_multiturn=True)


def quiet_lm_eval() -> None:
    """lm-eval logs every task's setup; rafale shows its own bar per scoring pass and the results table
    instead (the CLI also turns off lm-eval's tqdm bars). RAFALE_DEBUG=1 keeps lm-eval's log."""
    import logging
    import os

    if os.environ.get("RAFALE_DEBUG", "0") not in ("", "0"):
        return
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()


def adapter_for(path, names: list[str], batch_size: int = 8, device: Optional[str] = None):
    """RafaleLM on the model at `path`; an encoder is refused, naming the tasks it was given."""
    import torch

    from rafale.eval.adapter import RafaleLM
    from rafale.loading import model_and_tokenizer
    from rafale.models import CAUSAL_LMS
    from rafale.models.weights import hf_model_type

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = model_and_tokenizer(path, device=device)
    if not isinstance(model, CAUSAL_LMS):
        raise ModelError(f"{path} holds an encoder ({hf_model_type(model.config)}); lm-eval tasks "
                         f"({', '.join(names)}) score and generate next tokens, which needs a decoder; evaluate an "
                         f"encoder with --data")
    return RafaleLM(path, batch_size=batch_size, device=device, model=model, tokenizer=tok)


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def metric_rows(results: dict) -> list[tuple[str, str, float, Optional[float]]]:
    """(task, metric, value, stderr or None) for every number in lm-eval's results dict."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "_stderr," in key \
                    or key == "sample_len":
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append((task, metric if filt in ("none", "") else f"{metric} ({filt})", float(value),
                         stderr if isinstance(stderr, (int, float)) else None))
    return rows


def _yaml_of(manager, name: str) -> str:
    entry = manager.task_index.get(name)
    return str(getattr(entry, "yaml_path", None) or name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}"
