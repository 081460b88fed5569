"""bf16 mixed precision on a CPU: Composer's amp_bf16 autocasts on CUDA only and refuses a CPU device, so a
CPU run under run.precision amp_bf16 trains with Composer's fp32 and this autocast around the model's own
forward, loss and eval_forward instead. Weights, gradients and optimizer state stay fp32, as under amp.
"""

from __future__ import annotations

import functools

import torch

METHODS = ("forward", "loss", "eval_forward")


def _under_autocast(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args, **kwargs)

    wrapped.rafale_autocast = True
    return wrapped


def autocast_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """Run `model`'s forward, loss and eval_forward (a Composer model's) under CPU bf16 autocast, in place."""
    for name in METHODS:
        fn = getattr(model, name, None)
        if fn is not None and not getattr(fn, "rafale_autocast", False):
            setattr(model, name, _under_autocast(fn))
    return model


def is_autocast(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "forward", None), "rafale_autocast", False)
