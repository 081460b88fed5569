"""A model for a resolved config: fresh and seeded, or filled from a checkpoint.

    model, report = build_model(config, head="mlm", weights=None, seed=42)

`config` is what the run resolved (rafale/train/plan.py): a registry entry, or a checkpoint's shapes, with
the overrides applied. `head` is what the pipeline trains: "lm" for decoders, "mlm" or "classification"
(with `num_labels`) for encoders; a checkpoint without that head gets a fresh one, listed in the report.
"""

from __future__ import annotations

import dataclasses

import torch

from rafale.models import LoadReport, load_pretrained, model_from_config


def build_model(config, *, head: str = "lm", weights=None, num_labels: int | None = None,
                seed: int = 0) -> tuple[torch.nn.Module, LoadReport | None]:
    """(the model in train mode, the LoadReport of its checkpoint or None when trained from scratch)."""
    if num_labels is not None:
        config = dataclasses.replace(config, num_labels=num_labels)
    if weights is not None:
        model, report = load_pretrained(weights, head=head, num_labels=num_labels, config=config)
        return model.train(), report
    torch.manual_seed(seed)
    return model_from_config(config, head=head).train(), None
