"""Exact mid-epoch resume of a map-style (cached, memory-mapped) dataset, without replaying batches.

Composer saves `dataset.state_dict(samples_in_epoch, True)` in each checkpoint and, on resume, calls
`dataset.load_state_dict(state)`; a dataset that has both makes Composer skip its "spin" through every
batch already seen. `Resumable` wraps a dataset with those two methods; `ResumableSampler` is the usual
distributed sampler (same seed, same epoch, same order) that, after a load, starts its next epoch's
indices where the checkpoint left off. Resuming at step N so costs O(1) instead of N batches.
"""

from __future__ import annotations

import torch
from composer.utils import dist


class Resumable(torch.utils.data.Dataset):
    """`dataset`, plus Composer's resume protocol: the position is the samples already used this epoch."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.resume_at = 0  # samples of the current epoch (all processes') that a loaded checkpoint used

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getattr__(self, name):  # the wrapped dataset's own attributes (tokens, block_size, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def state_dict(self, num_samples: int, from_beginning: bool = True) -> dict:
        return {"samples_in_epoch": int(num_samples)}

    def load_state_dict(self, state: dict | None) -> None:
        self.resume_at = int(state["samples_in_epoch"]) if state else 0


class ResumableSampler(torch.utils.data.DistributedSampler):
    """Composer's distributed sampler, which skips what a loaded checkpoint had used of its epoch."""

    def __init__(self, dataset: Resumable, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=dist.get_world_size(), rank=dist.get_global_rank(), shuffle=shuffle,
                         seed=seed, drop_last=shuffle)
        self.resumable = dataset

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.resumable.resume_at = self.resumable.resume_at // self.num_replicas, 0
        return iter(indices[skip:])


def skip_replay(trainer) -> str | None:
    """After a Trainer loaded a checkpoint: when the train dataset took its position (no replay), restore the
    random state where Composer's replay would have (after the next batch is fetched), and say so."""
    from composer.core import Callback
    from composer.utils import reproducibility

    state = trainer.state
    if not state.dataset_resumption.get("train"):
        return None
    saved, trainer._rng_state = trainer._rng_state, None  # Composer restores it only at the end of its replay

    class RestoreRng(Callback):
        def after_dataloader(self, state, logger) -> None:
            nonlocal saved
            if saved is not None:
                reproducibility.load_rng_state(saved)
                saved = None

    if saved is not None and int(state.timestamp.batch_in_epoch):
        state.callbacks.append(RestoreRng())
    else:
        trainer._rng_state = saved  # at an epoch boundary Composer restores it itself
    ts = state.timestamp
    return (f"data: resuming at sample {int(ts.sample_in_epoch):,} of epoch {int(ts.epoch)} from the checkpoint's "
            f"position, without replaying {int(ts.batch_in_epoch):,} batches")
