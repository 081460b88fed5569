"""Scaled dot-product attention as rafale's models call it: torch's fused kernel, with one CPU exception.

Under CPU bf16 autocast, SDPA's fused CPU kernel is slower in bf16 than in fp32 for short sequences, so up to
FP32_ATTENTION_MAX_T queries the attention runs in fp32 (its inputs cast up, autocast off around it). Forward
plus backward, bf16 vs fp32 (batch, heads, queries, head size): (8, 4, 256, 32) 14.5 vs 10.6 ms,
(8, 8, 128, 16) 14.6 vs 3.0 ms, (16, 12, 128, 64) 39.8 vs 24.4 ms; from 512 queries on, bf16 is faster
((4, 8, 512, 64) 56.1 vs 61.7 ms). The caller's next matmul casts the output back to bf16, as autocast would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP32_ATTENTION_MAX_T = 256


def sdpa(q, k, v, mask, is_causal: bool, dropout_p: float) -> torch.Tensor:
    """F.scaled_dot_product_attention, in fp32 under CPU bf16 autocast for up to FP32_ATTENTION_MAX_T queries."""
    if q.device.type == "cpu" and q.size(-2) <= FP32_ATTENTION_MAX_T and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=is_causal, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
