"""Greedy decoding with a KV cache (one prompt at a time)."""

from __future__ import annotations

from typing import Iterator

import torch


@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` greedy tokens after `prompt_ids`, stopping after `eos_id`."""
    device = next(model.parameters()).device
    total = min(len(prompt_ids) + max_new_tokens, model.config.max_seq_len)
    cache = model.make_kv_cache(1, total, device=device)
    x = torch.tensor([prompt_ids], device=device)
    for _ in range(total - len(prompt_ids)):
        logits = model(x, kv_cache=cache)
        token = int(logits[0, -1].argmax())
        yield token
        if token == eos_id:
            return
        x = torch.tensor([[token]], device=device)


def complete(model, tok, prompt: str, max_new_tokens: int) -> str:
    """The prompt followed by its greedy continuation, as text (`tok` is a TokenizerInfo)."""
    ids = tok.tokenizer.encode(prompt, add_special_tokens=False).ids
    new = [t for t in greedy(model, ids, max_new_tokens, tok.eos_id) if t != tok.eos_id]
    return prompt + tok.tokenizer.decode(new)
