"""Checks that fail a run early, with one clear line, instead of late or with a traceback.

    check_room(cfg, n_params, fingerprint)   before any data work: the run directory and the cache can be
                                             written, and their disks have room for what the run will write
    check_data(plan, data)                   after data preparation: one train batch, a non-empty eval split,
                                             and a resumed run's max_duration not reached already

The model, device, batch and run-directory checks happen where those facts are resolved (plan.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rafale.errors import ConfigError, DataError, RunStateError

BYTES_PER_PARAM_CHECKPOINT = 12  # fp32 weights + AdamW's two moments (what a Composer checkpoint holds)
MARGIN = 1.1  # room asked for beyond the estimate


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: Path, what: str, key: str) -> Path:
    """`path` (created later if missing) can be written: a file can be made in its nearest existing parent."""
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise RunStateError(f"{key}: {base} is a file, not a directory; {what} {path} cannot be created there")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".rafale-write-test-"):
            pass
    except OSError as e:
        raise RunStateError(f"{key}: {base} is not writable ({e.strerror}); {what} {path} cannot be created; "
                            f"choose a writable directory") from None
    return base


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def check_room(cfg, n_params: int, fingerprint: dict) -> None:
    """The run directory and the cache can be written and have room: checkpoints kept (+1 being written) and
    the final export, from the parameter count; about as many bytes of tokens as the source has of text."""
    from rafale.data.cache import cache_root

    run_base = check_writable(Path(cfg.run.output_dir) / cfg.run.name, "the run directory", "run.output_dir")
    cache_base = check_writable(cache_root() / "data", "the data cache", "RAFALE_CACHE")
    keep = cfg.run.save_num_checkpoints_to_keep
    n_ckpt = 2 if keep < 0 else keep + 1  # -1 keeps all: ask at least for two
    need_ckpt = n_params * (BYTES_PER_PARAM_CHECKPOINT * n_ckpt + 4)
    need_cache = 0 if cfg.data.streaming else \
        sum(os.path.getsize(f[0]) for f in fingerprint.get("files", []) if os.path.isfile(f[0]))
    same_disk = os.stat(run_base).st_dev == os.stat(cache_base).st_dev
    needs = {run_base: need_ckpt + (need_cache if same_disk else 0)}
    if not same_disk:
        needs[cache_base] = need_cache
    for base, need in needs.items():
        need = int(need * MARGIN)
        free = free_bytes(base)
        if need > free:
            what = ", ".join(s for s, n in (("checkpoints and the final model", need_ckpt), ("the data cache",
                             need_cache)) if n and (base == run_base or s == "the data cache"))
            raise RunStateError(f"{base}: only {_mb(free)} free, but {what} need about {_mb(need)}; free some "
                                f"space, or point run.output_dir / RAFALE_CACHE elsewhere, or keep fewer "
                                f"checkpoints (run.save_num_checkpoints_to_keep)")


def check_data(plan, data) -> None:
    """Enough train examples for one batch; an eval split that was asked for and came out empty."""
    cfg = plan.cfg
    splits = data.meta.get("splits", {})
    count = lambda split: splits.get(split, {}).get("examples", splits.get(split, {}).get("blocks", 0))  # noqa: E731
    if not data.meta.get("streaming") and count("train") < cfg.data.train_batch_size:
        raise ConfigError(f"data.train_batch_size: {cfg.data.train_batch_size} is more than the {count('train')} "
                          f"train blocks in {data.path}; lower it or use more data")
    if cfg.data.eval_split > 0 and "eval" in splits and not count("eval"):
        raise DataError(f"data.eval_split: {cfg.data.eval_split} holds out no whole block of "
                        f"{cfg.data.block_size} tokens; raise eval_split, use more data, or set it to 0")
    resume_from = plan.run_dir.resume_from if plan.run_dir else None
    if resume_from is not None:  # Composer would refuse it with a traceback, after the run directory is rewritten
        from rafale.train.checkpoints import batches_done
        from rafale.train.compiling import planned_steps

        done = batches_done(resume_from)
        per_epoch = None if data.meta.get("streaming") else count("train") // cfg.data.train_batch_size
        if planned_steps(cfg.run.max_duration, per_epoch, cfg.data.train_batch_size * cfg.data.block_size,
                         done) == 0:
            raise ConfigError(f"run.max_duration: {cfg.run.max_duration} ends at or before batch {done}, where the "
                              f"checkpoint {plan.run_dir.path / 'checkpoints' / resume_from.name} stopped; give a "
                              f"longer duration to resume, or FORCE=1 to start over")
