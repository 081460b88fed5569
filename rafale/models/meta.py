"""Build a model on the meta device (shapes only, no memory) without running its random initialisation.

    with on_meta():
        model = Decoder(config)   # parameters are meta tensors; model.to_empty(device=...) materialises them

A meta tensor has no values, so initialising one does nothing useful; but torch implements `normal_` on
the meta device through a path that imports torch.compile's machinery (torch._dynamo, ~2 s) the first time.
Skipping the random fills here keeps `rafale models`, `generate`, `export` and `eval` from paying that.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

# in-place random fills (torch.nn.init's and the Tensor methods they call)
RANDOM_FILLS = frozenset({"normal_", "trunc_normal_", "uniform_", "kaiming_normal_", "kaiming_uniform_",
                          "xavier_normal_", "xavier_uniform_", "orthogonal_"})


class _SkipMetaRandomFills(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in RANDOM_FILLS:
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta():
    """Modules built inside get meta parameters and buffers, and no random initialisation."""
    with torch.device("meta"), _SkipMetaRandomFills():
        yield


def to_empty(model: nn.Module, device) -> nn.Module:
    """`model.to_empty(device=device)`, allocating each tensor with `torch.empty` from its shape.

    Same result (every parameter and buffer uninitialised on `device`; tied parameters get separate
    storage), but torch's own to_empty runs `empty_like` on the meta tensors, whose meta implementation
    imports torch.fx's symbolic shapes (sympy: ~1 s) the first time.
    """
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False, remove_duplicate=False)):
            setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                               requires_grad=p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False, remove_duplicate=False)):
            setattr(module, name, torch.empty(b.shape, dtype=b.dtype, device=device))
    return model
