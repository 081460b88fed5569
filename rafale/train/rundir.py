"""The run directory `<run.output_dir>/<run.name>/`: what state it is in, who owns it, what it records.

    state = inspect_run_dir(cfg, force)   new, resume (and why), or refused: read only, nothing written
    with run_lock(path): ...              one process owns the directory while it trains
    write_manifest(path, cfg, ...)        manifest.json: versions, data key, seed, hardware, status

It holds config.yaml (the resolved config), manifest.json, checkpoints/, metrics.jsonl, loss.png and
final/. A finished run is never overwritten without FORCE=1; a run that stopped part way resumes from its
latest checkpoint when started again with a compatible config.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from rafale.config import Config
from rafale.errors import RunStateError
from rafale.files import write_json
from rafale.train.checkpoints import LATEST

# Keys a resumed run may change: they do not alter what the checkpoint means.
RESUMABLE_CHANGES = ("run.max_duration", "run.eval_interval", "run.save_interval", "run.log_interval",
                     "run.save_num_checkpoints_to_keep", "run.sample_prompt", "run.sample_tokens",
                     "run.device", "run.device_batch_size", "logging.loggers", "logging.project",
                     "logging.energy", "logging.energy_country", "run.eval_batches", "data.eval_max_tokens")
LOCK = "run.lock"


@dataclass(frozen=True)
class RunDirState:
    path: Path
    resume_from: Path | None = None
    why: str = ""  # why the run resumes (printed); empty for a fresh run
    start_over: bool = False  # FORCE=1 on an existing directory: its contents go once the run owns it

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


def inspect_run_dir(cfg: Config, force: bool) -> RunDirState:
    """What starting this run means for its directory. Raises RunStateError when it must not start."""
    path = Path(cfg.run.output_dir) / cfg.run.name
    manifest = path / "manifest.json"
    if force:
        return RunDirState(path, start_over=path.exists())
    if not manifest.exists():
        return RunDirState(path)
    status = json.loads(manifest.read_text()).get("status")
    if status == "finished":
        raise RunStateError(f"{path}: run {cfg.run.name!r} already finished; FORCE=1 (or --force) starts it "
                            f"over, run.name=<other> keeps it")
    latest = path / "checkpoints" / LATEST
    if not latest.exists():
        return RunDirState(path)
    old, new = _flatten(yaml.safe_load((path / "config.yaml").read_text())), _flatten(cfg.to_dict())
    differ = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    changed = sorted(k for k in differ - set(RESUMABLE_CHANGES)
                     if not k.startswith(("eval.", "sweep.")))  # eval: after training; sweep: not the run's
    if changed:
        raise RunStateError(f"{path}: cannot resume: the config changed in {', '.join(changed)}; "
                            f"restore them, or FORCE=1 to start over")
    why = (f"it stopped part way (status {status!r}) and its config is unchanged"
           + (" except resumable keys" if differ else ""))
    return RunDirState(path, latest.resolve(), why)


@contextlib.contextmanager
def run_lock(path: Path, log=print) -> Iterator[None]:
    """One process trains in a run directory at a time: an flock on `run.lock`, which names its pid and host.

    A second process refuses, naming the holder. A process that dies holds nothing, and the next run takes
    over the file it left, with a message. On exit the lock file goes, and the directory too if the run
    wrote nothing else into it.
    """
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK, "a+") as f:
        f.seek(0)
        holder = f.read().strip()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunStateError(f"{path}: another run is training in this directory ({holder or 'another process'}); "
                                f"wait for it to end, or choose another run.name") from None
        if holder:
            log(f"taking over {path / LOCK}, left by a run that is no longer running ({holder})")
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            (path / LOCK).unlink(missing_ok=True)
    if created and not any(path.iterdir()):
        path.rmdir()


def clear_run_dir(path: Path) -> None:
    """FORCE=1: remove what an earlier run left, once this process owns the directory (the lock stays)."""
    for child in path.iterdir():
        if child.name != LOCK:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(path: Path, cfg: Config, data, status: str, **extra) -> None:
    import composer
    import tokenizers
    import torch

    import rafale
    from composer.utils import dist

    file = path / "manifest.json"
    old = json.loads(file.read_text()) if file.exists() else {}
    hardware = {"platform": platform.platform(), "cpus": os.cpu_count(), "processes": dist.get_world_size()}
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
    manifest = {**old, "status": status, "rafale": rafale.__version__, "torch": torch.__version__,
                "composer": composer.__version__, "tokenizers": tokenizers.__version__,
                "python": platform.python_version(), "seed": cfg.run.seed, "data_cache": str(data.path),
                "data_key": data.key, "hardware": hardware, "git_commit": git_commit(), **extra}
    manifest.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(file, manifest)
