"""Next-token cross-entropy computed in chunks, without ever holding the full logits.

The plain loss, `F.cross_entropy(lm_head(h), y)`, keeps a (tokens x vocab) fp32 logits tensor and its
log-softmax for the backward pass: most of a small model's activation memory, and at vocab 50k about a
third of a CPU training step. Here the forward pass walks over row chunks, and for each chunk computes
the logits, the loss, and at once the gradients of the loss with respect to the hidden states and the
output weight (softmax minus one-hot, times the weight or the hidden states). Only one chunk of logits
exists at a time, nothing is recomputed, and the backward pass is a multiplication by the incoming
gradient.
"""

from __future__ import annotations

import torch

from rafale.data import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 23  # logits elements per chunk (32 MB in fp32)
# ...but never fewer rows than this: the chunk's three matmuls have the rows as a dimension, and below a few
# hundred they run far from the peak. At vocab 50304 (2048 tokens, hidden 128, malloc tuned as the CLI does)
# the loss took 0.82 s with 128 rows per chunk, 0.64 s with 256 and 0.60 s with 512 (fp32); 0.33, 0.28 and
# 0.25 s under bf16 autocast. A chunk of 512 rows at vocab 50k is 100 MB of fp32 logits.
MIN_ROWS = 512


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, rows_per_chunk: int, need_h: bool, need_w: bool):
        # hidden (N, C), weight (V, C), targets (N,); returns the mean loss over non-ignored targets.
        # need_h / need_w: which gradients to make (a frozen head, as under LoRA, needs none for its weight)
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        safe_targets = targets.clamp(min=0)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when given fp64
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], rows_per_chunk):
            h = hidden[start : start + rows_per_chunk]
            t = safe_targets[start : start + rows_per_chunk]
            v = valid[start : start + rows_per_chunk]
            logits = (h @ weight.t()).to(acc)  # (n, V)
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            row_max = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(row_max).exp_()  # in place: one pass of exp serves the loss and the gradient
            sums = exps.sum(dim=-1)
            lse = row_max.squeeze(1) + sums.log()
            loss += ((lse - target_logit) * v).sum()
            if need_h or need_w:
                scale = v.to(acc) / n_valid  # d(mean loss)/d(row loss): 0 for ignored rows
                probs = exps.mul_((scale / sums)[:, None])  # softmax, scaled
                probs.scatter_add_(1, t[:, None], -scale[:, None])  # minus one-hot: d(mean loss)/d(logits)
                g = probs.to(h.dtype)
                if need_h:
                    grad_h[start : start + rows_per_chunk] = g @ weight
                if need_w and h.dtype == acc:
                    grad_w.addmm_(g.t(), h)
                elif need_w:  # bf16/fp16: the matmul at that precision (4x fp32 on CPUs with bf16), summed in acc
                    grad_w += g.t() @ h
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None)
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scaled = [None if g is None else g * grad_loss for g in (grad_h, grad_w)]
        return *scaled, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX entries skipped).

    Args:
        hidden: (..., C) final hidden states.
        weight: (V, C) output projection (the LM head, no bias).
        targets: (...) token ids, or IGNORE_INDEX.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # compute the matmuls in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        hidden, w = hidden.to(dtype), weight.to(dtype)
    else:
        w = weight.to(hidden.dtype)
    with torch.autocast(device_type, enabled=False):
        h = hidden.reshape(-1, hidden.shape[-1])
        rows = max(MIN_ROWS, CHUNK_ELEMENTS // weight.shape[0])
        grad = torch.is_grad_enabled()
        return _ChunkedLinearCrossEntropy.apply(h, w, targets.reshape(-1), rows, grad and h.requires_grad,
                                                grad and w.requires_grad)


def shift_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """Targets for next-token prediction: position t predicts input t+1; the last position is ignored."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:]
    return targets
