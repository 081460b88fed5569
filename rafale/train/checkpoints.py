"""Composer checkpoint files: where the latest is, written whole, read without unpickling objects.

    latest_checkpoint(folder)   the checkpoint the `latest-rank0.pt` link points at, or None
    harden_composer()           checkpoints are written to a temporary file and renamed (never half-written
                                under a final name) and read with torch.load(weights_only=True)
    unreadable(path, run, e)    the one error for a checkpoint a run cannot resume from

A LoRA run's checkpoints hold only what trains (the adapters, the modules trained fully, and their
optimizer state: keep_trainable_only) and the fingerprint of the base the frozen weights come from
(LoraBase); a resume rebuilds the frozen part from the base, after check_same_base found it unchanged.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from composer.core import Callback

from rafale.errors import RunStateError
from rafale.files import atomic_path

LATEST = "latest-rank0.pt"  # the link Composer keeps to the newest checkpoint of rank 0


def latest_checkpoint(folder: Path) -> Path | None:
    link = Path(folder) / LATEST
    return link.resolve() if link.exists() else None


def batches_done(path: Path) -> int:
    """The batches a checkpoint (or the latest-rank0.pt link to it) had trained, from its name (ep3-ba120-...)."""
    m = re.search(r"-ba(\d+)-", Path(path).resolve().name)
    return int(m.group(1)) if m else 0


def describe_error(e: BaseException) -> str:
    """What is wrong with a checkpoint that cannot be read: truncated, corrupted, or holding arbitrary objects."""
    text = str(e)
    if "Weights only load failed" in text or "Unsupported global" in text:
        return "it holds objects other than tensors and plain data, which rafale does not unpickle"
    if isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in text or "PytorchStreamReader" in text:
        return "it is truncated or corrupted"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def unreadable(path: Path, run_dir: Path, e: BaseException) -> RunStateError:
    # the checkpoint is kept as it is: it may be worth inspecting, and it is the user's to delete
    return RunStateError(f"{path}: cannot resume {run_dir}: the checkpoint is unreadable ({describe_error(e)}); "
                         f"FORCE=1 starts the run over, or point checkpoints/{LATEST} at an older checkpoint")


def check_readable(path: Path, run_dir: Path) -> None:
    """A checkpoint to resume from is a whole file: the zip directory torch.save writes last is readable."""
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise unreadable(path, run_dir, e) from None


def safe_globals() -> list:
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


def harden_composer() -> None:
    """Patch two Composer 0.32 internals (idempotent). Raises when they are missing: a Composer upgrade must
    not silently drop atomic writes or the weights_only guarantee.

    - `_write_checkpoint_file` writes under a temporary name and renames into place, so a kill or a full
      disk never leaves a partial file under a checkpoint's name;
    - `_torch_load_with_validation` (behind `load_checkpoint`/`safe_torch_load`) loads with
      `weights_only=True` and an allow-list of the few plain types a checkpoint holds.
    """
    import torch
    from composer.utils import checkpoint as ck

    write, load = getattr(ck, "_write_checkpoint_file", None), getattr(ck, "_torch_load_with_validation", None)
    if getattr(write, "rafale_hardened", False):
        return
    if write is None or load is None or not hasattr(ck, "_ensure_valid_checkpoint"):
        import composer

        raise RuntimeError(f"composer {composer.__version__} lacks the checkpoint functions rafale hardens "
                           f"(_write_checkpoint_file, _torch_load_with_validation); rafale needs composer 0.32")

    def atomic_write(state_dict, filename: str) -> None:
        if ck.is_tar(filename) or ck.is_compressed_pt(filename):
            return write(state_dict, filename)
        with atomic_path(filename, fsync=True) as tmp:
            with open(tmp, "wb") as f:
                torch.save(state_dict, f)

    def weights_only_load(checkpoint_filepath, map_location: str):
        path = ck._ensure_valid_checkpoint(checkpoint_filepath)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    atomic_write.rafale_hardened = True
    ck._write_checkpoint_file = atomic_write
    ck._torch_load_with_validation = weights_only_load


# ---- LoRA runs: the adapter in the checkpoint, the base by its fingerprint ------------------------------------
def keep_trainable_only(model) -> None:
    """`model.state_dict()` (what Composer checkpoints) leaves out frozen parameters; Composer loads a
    checkpoint non-strictly, so on resume they keep what the base gave them."""

    def drop_frozen(module, state_dict, prefix, local_metadata):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                state_dict.pop(prefix + name, None)

    model.register_state_dict_post_hook(drop_frozen)


class LoraBase(Callback):
    """A Composer callback whose only state is the base's fingerprint, so that each checkpoint records it."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        pass  # compared before the run starts, by check_same_base


def check_same_base(path: Path, run_dir: Path, weights: str, fingerprint: str) -> None:
    """A LoRA checkpoint resumes only on the base it was trained on.

    Raises:
        RunStateError: the base's weight files changed since the checkpoint, or the checkpoint holds no
            fingerprint, or cannot be read.
    """
    import torch

    try:
        with torch.serialization.safe_globals(safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)["state"]
    except Exception as e:  # noqa: BLE001 - every failure to read is the same error for the user
        raise unreadable(path, run_dir, e) from None
    recorded = state.get("callbacks", {}).get("LoraBase", {}).get("fingerprint")
    if recorded != fingerprint:
        was = f"sha256 {recorded[:12]}..." if recorded else "no fingerprint"
        raise RunStateError(f"{path}: cannot resume {run_dir}: model.weights {weights} is not the base this LoRA "
                            f"checkpoint was trained on (its weights now hash to {fingerprint[:12]}..., the "
                            f"checkpoint recorded {was}); restore that base, or FORCE=1 to start over")
