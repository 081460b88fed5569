"""DEBUG=1: overfit one small batch as a sanity check of the model, the loss and the optimizer.

A healthy setup drives the loss on a single batch it sees over and over close to zero. The run trains
through the same Composer path as a real run (constant LR, no warmup, no checkpoints, no run directory)
and exits 0 when the final loss is under THRESHOLD of the first one, 1 otherwise.
"""

from __future__ import annotations

import dataclasses

import torch
from composer.utils import dist

from rafale.config import Config
from rafale.data.causal_lm import collate
from rafale.train.loss import chunked_cross_entropy, shift_targets
from rafale.train.trainer import build_trainer

THRESHOLD = 0.10
BATCH = 4  # blocks in the overfit batch
EPOCHS = 60


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return self.blocks[i]


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        ids = batch["input_ids"]
        loss = chunked_cross_entropy(model.hidden_states(ids), model.lm_head.weight, shift_targets(ids))
    model.train()
    return float(loss)


def debug_run(cfg: Config, model, data, console) -> int:
    train = data.blocks("train")
    n = min(BATCH, len(train), cfg.data.train_batch_size)
    blocks = [train[i] for i in range(n)]
    batch = collate(blocks)
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, max_duration=f"{EPOCHS}ep", device_batch_size=n, save_interval="1000ep"),
        optim=dataclasses.replace(cfg.optim, schedule="constant", warmup="0ba", weight_decay=0.0),
        data=dataclasses.replace(cfg.data, train_batch_size=n),
    )
    before = _loss(model, batch)
    console.print(f"DEBUG: overfitting one batch of {n} x {cfg.data.block_size} tokens for {EPOCHS} steps "
                  f"(lr {cfg.optim.lr:g}, constant)")

    class OneBatch:  # the prepared data, reduced to the one batch (train = eval)
        meta = data.meta

        @staticmethod
        def blocks(split):
            return _Repeat(blocks)

    trainer = build_trainer(cfg, model, OneBatch, save_folder=None, callbacks=[])
    trainer.fit()
    trainer.close()
    after = _loss(model, {k: v.to(next(model.parameters()).device) for k, v in batch.items()})
    ok = after < THRESHOLD * before
    if dist.get_global_rank() == 0:
        verdict = "[green]PASS[/]" if ok else "[red]FAIL[/]"
        console.print(f"DEBUG: loss {before:.4f} -> {after:.4f} ({after / before:.1%} of the start; "
                      f"pass below {THRESHOLD:.0%}): {verdict}")
    return 0 if ok else 1
