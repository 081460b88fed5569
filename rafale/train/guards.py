"""Guards around a training run: checks before expensive work, signals, non-finite losses, safe checkpoints.

    preflight(cfg)            before any data work: the run directory and the cache are writable and their
                              disks have room for the estimated cache entry and checkpoints
    handle_signals()          SIGTERM behaves like Ctrl-C (KeyboardInterrupt), carrying its signal number
    Guard(checkpoints, cfg)   Composer callback: SIGINT/SIGTERM during fit set a flag, and at the next batch
                              end the run stops with `Interrupted` (run.py then saves a checkpoint); a loss
                              or a weight that is NaN/Inf stops it with `TrainingDiverged`, before that
                              batch can be checkpointed
    harden_composer()         checkpoints are written to a temporary file and renamed (never half-written
                              under a final name); they are read with torch.load(weights_only=True)

Exit codes (rafale/cli.py): a diverged run is a TrainingDiverged (a RafaleError: usually the config's
learning rate or warmup), so exit 2; an interrupted run exits 128 + the signal (130 for SIGINT, 143 for
SIGTERM), as a shell would report it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from composer.core import Callback

from rafale.errors import Interrupted, RafaleError, RunStateError

LATEST = "latest-rank0.pt"
BYTES_PER_PARAM_CHECKPOINT = 12  # fp32 weights + AdamW's two moments (what a Composer checkpoint holds)
MARGIN = 1.1  # room asked for beyond the estimate


class TrainingDiverged(RafaleError):
    """The training loss (or a weight) became NaN or Inf. A RafaleError: the usual cause is the config
    (learning rate, warmup, precision), and the message says what to change."""


# ---- signals -----------------------------------------------------------------------------------------
def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def handle_signals() -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread.

    Composer's engine, when imported, replaces both with `sys.exit(128 + signal)`, which skips the
    `except KeyboardInterrupt` paths; rafale/train/run.py calls this again after importing Composer.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)


def resume_command() -> str:
    """The command line that continues this run: the same one, without --force / FORCE=1."""
    args = [a for a in sys.argv[1:] if a not in ("--force", "--verbose")]
    return " ".join(shlex.quote(a) for a in ["rafale", *args])


# ---- pre-flight ----------------------------------------------------------------------------------------
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


def _source_bytes(fingerprint: dict) -> int:
    """The size of the data source's files (0 when unknown: the embedded corpus, a hub dataset)."""
    return sum(os.path.getsize(f[0]) for f in fingerprint.get("files", []) if os.path.isfile(f[0]))


def estimate_checkpoint_bytes(cfg) -> int:
    """Checkpoints kept (+1 being written) and the final export, from the model's parameter count."""
    import torch

    if cfg.model.weights is not None:
        w = Path(str(cfg.model.weights)).expanduser()
        files = list(w.rglob("*.safetensors")) if w.is_dir() else []
        n_params = sum(f.stat().st_size for f in files) // 4
    elif cfg.model.hf is not None:
        return 0  # a transformers model: its size is known only once it is built
    else:
        from rafale.models import model_from_config
        from rafale.train.trainer import model_config

        vocab = getattr(getattr(cfg.data.tokenizer, "train", None), "vocab_size", None)
        mc = model_config(cfg, vocab)
        try:
            with torch.device("meta"):
                n_params = sum(p.numel() for p in model_from_config(mc).parameters())
        except Exception:  # the model builder reports what is wrong with the config
            return 0
    keep = cfg.run.save_num_checkpoints_to_keep
    n_ckpt = 2 if keep < 0 else keep + 1  # -1 keeps all: ask at least for two
    return n_params * (BYTES_PER_PARAM_CHECKPOINT * n_ckpt + 4)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def check_settings(cfg) -> None:
    """What the Trainer would refuse only after the data is prepared: device, precision, FSDP; a given
    tokenizer that does not fit the model."""
    from rafale.train import trainer as tr

    device = tr.resolve_device(cfg)
    tr.resolve_precision(cfg, device)
    tr.parallelism_config(cfg, device)
    if cfg.data.tokenizer.path and cfg.model.weights is None and cfg.model.hf is None:
        from rafale.data.tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.data.tokenizer.path)
        tr.check_fits(cfg, tr.model_config(cfg, tok.vocab_size), tok.vocab_size, f"model.config {cfg.model.config}")


def check_data(cfg, data) -> None:
    """Right after data preparation, before the run directory is written: enough train blocks for one
    batch; an eval split that was asked for and came out empty."""
    from rafale.errors import ConfigError, DataError

    splits = data.meta.get("splits", {})
    count = lambda split: splits.get(split, {}).get("examples", splits.get(split, {}).get("blocks", 0))  # noqa: E731
    n_train = count("train")
    if n_train < cfg.data.train_batch_size:
        raise ConfigError(f"{cfg.source_path}: data.train_batch_size: {cfg.data.train_batch_size} is more than "
                          f"the {n_train} train blocks in {data.path}; lower it or use more data")
    if cfg.data.eval_split > 0 and "eval" in splits and not count("eval"):
        raise DataError(f"{cfg.source_path}: data.eval_split: {cfg.data.eval_split} holds out no whole block of "
                        f"{cfg.data.block_size} tokens; raise eval_split, use more data, or set it to 0")


def preflight(cfg) -> None:
    """Fail before any data work when the run directory or the cache cannot be written or has no room."""
    from rafale.data import sources
    from rafale.data.cache import cache_root

    check_settings(cfg)
    fingerprint = sources.fingerprint(cfg.data)  # a missing source fails here, before FORCE=1 removes a run

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_base = check_writable(run_dir, "the run directory", "run.output_dir")
    cache = cache_root() / "data"
    cache_base = check_writable(cache, "the data cache", "RAFALE_CACHE")
    need_ckpt = estimate_checkpoint_bytes(cfg)
    need_cache = _source_bytes(fingerprint)  # tokens take about as many bytes as the text they come from
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


def check_checkpoint(rd) -> None:
    """A run that resumes: its checkpoint is a whole file (the zip directory torch.save writes at the end is
    readable), checked before the run directory is touched."""
    path = rd.resume_from
    if path is None or not str(path).endswith(".pt"):
        return
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise RunStateError(f"{path}: cannot resume {rd.path}: the checkpoint is unreadable "
                            f"({describe_checkpoint_error(path, e)}); FORCE=1 starts the run over, or point "
                            f"checkpoints/{LATEST} at an older checkpoint") from None


# ---- during fit ----------------------------------------------------------------------------------------
def latest_checkpoint(folder: Path) -> Path | None:
    link = Path(folder) / LATEST
    return link.resolve() if link.exists() else None


class Guard(Callback):
    """Stops training cleanly on SIGINT/SIGTERM (at a batch end) and on a non-finite loss or weight."""

    def __init__(self, checkpoints: Path, cfg):
        self.checkpoints = Path(checkpoints)
        self.cfg = cfg
        self.signum: int | None = None
        self._previous = {}

    # signals: the first one sets a flag, a second one interrupts at once
    def _on_signal(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def fit_start(self, state, logger) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._on_signal)

    def close(self, state, logger) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def batch_end(self, state, logger) -> None:
        # before Event.BATCH_CHECKPOINT: a bad step is never saved
        import torch

        loss = state.loss
        losses = loss if isinstance(loss, (list, tuple)) else [loss]
        bad = next((float(l.detach().float().mean()) for l in losses if not torch.isfinite(l.detach()).all()), None)
        weights_ok = bad is not None or bool(torch.stack(
            [torch.isfinite(p.detach()).all() for p in state.model.parameters()]).all())
        if bad is not None or not weights_ok:
            self.diverged(state, "the training loss became " + str(bad) if bad is not None
                          else "a weight became NaN or Inf")
        if self.signum is not None:
            e = Interrupted(self.signum)
            e.at_batch_end = True  # the state is whole: run.py may checkpoint it
            raise e

    def diverged(self, state, what: str) -> None:
        step = state.timestamp.batch.value
        last = latest_checkpoint(self.checkpoints)
        kept = (f"the last good checkpoint {last} is kept" if last is not None
                else f"no checkpoint was saved before it (run.save_interval {self.cfg.run.save_interval})")
        raise TrainingDiverged(
            f"{self.cfg.source_path}: optim.lr: {what} at step {step}; training stopped there and {kept}; "
            f"lower optim.lr (now {self.cfg.optim.lr:g}) or lengthen optim.warmup, then FORCE=1 to start over")


def saved_on_interrupt(trainer, folder: Path) -> Path | None:
    """Save the state at the batch where the run stopped, through Composer's checkpoint saver (so the
    `latest` link and the rotation stay right). None when it could not be saved: the checkpoint of the
    last interval is then still the latest."""
    before = latest_checkpoint(folder)
    try:
        trainer.save_checkpoint_to_save_folder()
    except Exception:
        return None
    after = latest_checkpoint(folder)
    return after if after != before else None


# ---- Composer checkpoint files -------------------------------------------------------------------------
def checkpoint_safe_globals() -> list:
    """What a Composer checkpoint of a rafale run holds beyond tensors and containers."""
    import datetime

    import numpy as np
    import torch

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    # numeric dtypes only (the RNG states): never object arrays, whose items are arbitrary objects
    not_numeric = {"ObjectDType", "VoidDType", "StrDType", "BytesDType", "StringDType"}
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n not in not_numeric]
    return [datetime.timedelta, torch.torch_version.TorchVersion, _reconstruct, np.ndarray, np.dtype, *dtypes]


_hardened = False


def harden_composer() -> None:
    """Patch two Composer 0.32 internals (idempotent; skipped when they are not found):

    - `_write_checkpoint_file` writes the checkpoint under a temporary name and renames it into place, so
      a kill or a full disk never leaves a partial file under a checkpoint's name;
    - `_torch_load_with_validation` (used by `load_checkpoint`/`safe_torch_load`) loads with
      `weights_only=True` and an allow-list of the few plain types a checkpoint holds (timedelta, numpy
      RNG state, the torch version), instead of unpickling arbitrary objects.
    """
    global _hardened
    if _hardened:
        return
    import torch
    from composer.utils import checkpoint as ck

    write, load = getattr(ck, "_write_checkpoint_file", None), getattr(ck, "_torch_load_with_validation", None)
    if write is not None:
        def _atomic_write(state_dict, filename: str) -> None:
            if ck.is_tar(filename) or ck.is_compressed_pt(filename):
                return write(state_dict, filename)
            tmp = f"{filename}.tmp-{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    torch.save(state_dict, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, filename)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

        ck._write_checkpoint_file = _atomic_write
    if load is not None and hasattr(torch.serialization, "safe_globals"):
        def _weights_only_load(checkpoint_filepath, map_location: str):
            path = ck._ensure_valid_checkpoint(checkpoint_filepath)
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

        ck._torch_load_with_validation = _weights_only_load
    _hardened = True


def describe_checkpoint_error(path: Path, e: BaseException) -> str:
    """One line for a checkpoint that cannot be read: truncated, corrupted, or holding arbitrary objects."""
    text = str(e)
    if "Weights only load failed" in text or "Unsupported global" in text:
        return "it holds objects other than tensors and plain data, which rafale does not unpickle"
    if isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in text or "PytorchStreamReader" in text:
        return "it is truncated or corrupted"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no detail'}"


