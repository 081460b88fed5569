"""DEBUG=1: overfit one small batch as a sanity check of the model, the loss and the optimizer.

A healthy setup drives the loss on a single batch it sees over and over close to zero. The run trains
through the same Composer path as a real run, with a few trainer settings changed (one batch as the whole
dataset, EPOCHS epochs, constant LR, no weight decay, no evaluation, no checkpoints, no run directory),
and exits 0 when the final loss is under THRESHOLD of the first one, 1 otherwise. The batch is collated
once, so an mlm batch keeps the same masked positions at every step.
"""

from __future__ import annotations

import itertools

import torch
from composer import Trainer
from composer.optim import ConstantScheduler
from composer.utils import dist

from rafale.train.trainer import build_optimizer, collate_fn, trainer_kwargs

THRESHOLD = 0.10
BATCH = 4  # examples in the overfit batch
EPOCHS = 60


def _loss(wrapped, batch) -> float:
    wrapped.eval()
    with torch.no_grad():
        loss = wrapped.loss(wrapped(batch), batch)
    wrapped.train()
    return float(loss)


def debug_run(plan, model, data, console) -> int:
    cfg = plan.cfg
    train = data.dataset("train")
    if isinstance(train, torch.utils.data.IterableDataset):  # data.streaming: the stream's first blocks
        train = list(itertools.islice(train, min(BATCH, cfg.data.train_batch_size)))
    n = min(BATCH, len(train), cfg.data.train_batch_size)
    batch = collate_fn(cfg, data, model, "train")([train[i] for i in range(n)])
    rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]  # default_collate stacks them back
    loader = torch.utils.data.DataLoader(rows, batch_size=n, collate_fn=torch.utils.data.default_collate)
    kwargs = trainer_kwargs(plan, model, loader, None, callbacks=[])
    wrapped = kwargs["model"]
    kwargs.update(max_duration=f"{EPOCHS}ep", device_train_microbatch_size=n, schedulers=ConstantScheduler(),
                  optimizers=build_optimizer(cfg, wrapped, weight_decay=0.0))
    before = _loss(wrapped, batch)
    console.print(f"DEBUG: overfitting one batch of {n} x {cfg.data.block_size} tokens for {EPOCHS} steps "
                  f"(lr {cfg.optim.lr:g}, constant)")
    trainer = Trainer(**kwargs)
    trainer.fit()
    trainer.close()
    device = next(wrapped.parameters()).device
    after = _loss(wrapped, {k: v.to(device) for k, v in batch.items()})
    ok = after < THRESHOLD * before
    if dist.get_global_rank() == 0:
        verdict = "[green]PASS[/]" if ok else "[red]FAIL[/]"
        console.print(f"DEBUG: loss {before:.4f} -> {after:.4f} ({after / before:.1%} of the start; "
                      f"pass below {THRESHOLD:.0%}): {verdict}")
    return 0 if ok else 1
