"""The SFT pipeline: (prompt, response) pairs -> `prompt response EOS` examples of `block_size` tokens.

Labels follow the Hugging Face convention (aligned with input_ids; the loss shifts them): -100 on the
prompt and the padding, the response ids and the EOS elsewhere, so only the response is learned. An
example longer than the block is cut at the block size (counted in meta.json: `truncated`); one whose
prompt alone fills the block has nothing to learn and is dropped (`dropped`).

With `data.packing: true` consecutive examples share a block instead of being padded each. Every
example keeps its own labels (its prompt is still -100, so no position learns to predict one example
from the previous one), and `segment_ids` numbers the examples inside a block (1, 2, ...; 0 is padding)
so a model can keep attention inside each example (block-diagonal causal mask).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rafale.config import DataConfig
from rafale.data import IGNORE_INDEX, examples
from rafale.data.causal_lm import token_dtype
from rafale.data.tokenizer import TokenizerInfo
from rafale.errors import DataError

dataset, collator, file_sizes = examples.dataset, examples.collator, examples.file_sizes


def fields(cfg: DataConfig) -> list[str]:
    return [cfg.prompt_field, cfg.response_field]


def params(cfg: DataConfig) -> dict:
    return {"prompt_field": cfg.prompt_field, "response_field": cfg.response_field, "packing": cfg.packing}


def texts_for_tokenizer(cfg: DataConfig, train: dict) -> list[str]:
    return [f"{p}{r}" for p, r in zip(train[cfg.prompt_field], train[cfg.response_field])]


def encode_pairs(prompts, responses, tok: TokenizerInfo, block_size: int):
    """[(ids, labels)] per example, cut at block_size; plus (truncated, dropped) counts."""
    enc = lambda xs: [e.ids for e in tok.tokenizer.encode_batch_fast([str(x) for x in xs],
                                                                     add_special_tokens=False)]
    out, truncated, dropped = [], 0, 0
    for p, r in zip(enc(prompts), enc(responses)):
        ids = p + r + [tok.eos_id]
        labels = [IGNORE_INDEX] * len(p) + r + [tok.eos_id]
        if len(ids) > block_size:
            truncated += 1
            ids, labels = ids[:block_size], labels[:block_size]
        if all(x == IGNORE_INDEX for x in labels):
            dropped += 1
            continue
        out.append((ids, labels))
    return out, truncated, dropped


def layout(pairs, block_size: int, pad_id: int, packing: bool) -> dict[str, np.ndarray]:
    """Place examples in rows of block_size: one per row, or packed greedily in order."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = block_size
    for ids, labels in pairs:
        if not packing or used + len(ids) > block_size:
            rows.append([])
            used = 0
        rows[-1].append((ids, labels))
        used += len(ids)
    n = len(rows)
    input_ids = np.full((n, block_size), pad_id, dtype=np.int64)
    label_arr = np.full((n, block_size), IGNORE_INDEX, dtype=np.int32)
    segments = np.zeros((n, block_size), dtype=np.uint16)
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, labels) in enumerate(row, start=1):
            input_ids[r, at : at + len(ids)] = ids
            label_arr[r, at : at + len(ids)] = labels
            segments[r, at : at + len(ids)] = s
            at += len(ids)
    arrays = {"input_ids": input_ids, "labels": label_arr, "attention_mask": (segments > 0).astype(np.uint8)}
    if packing:
        arrays["segment_ids"] = segments
    return arrays


def build(cfg: DataConfig, splits: dict, tok: TokenizerInfo, out: Path, progress) -> dict:
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    dtype = token_dtype(tok)
    meta = {"format": "examples", "splits": {}, "notes": [], "pad_id": pad}
    t0, total = time.perf_counter(), 0
    for split in ("train", "eval"):
        cols = splits[split]
        prompts, responses = cols[cfg.prompt_field], cols[cfg.response_field]
        task = progress.add_task(f"tokenizing {split}", total=len(prompts), tps="-")
        pairs, truncated, dropped = encode_pairs(prompts, responses, tok, cfg.block_size)
        n_tok = sum(len(ids) for ids, _ in pairs)
        total += n_tok
        progress.update(task, advance=len(prompts), tps=f"{total / max(time.perf_counter() - t0, 1e-9):,.0f}")
        if split == "train" and not pairs:
            raise DataError(f"data.source: {cfg.source!r} gives no SFT example with a response inside "
                            f"data.block_size {cfg.block_size}")
        arrays = layout(pairs, cfg.block_size, pad, cfg.packing)
        arrays["input_ids"] = arrays["input_ids"].astype(dtype)
        examples.save(out, split, arrays)
        meta["arrays"] = list(arrays)
        meta["splits"][split] = {"documents": len(prompts), "examples": len(arrays["input_ids"]),
                                 "tokens": n_tok, "truncated": truncated, "dropped": dropped}
        if truncated or dropped:
            meta["notes"].append(f"{split}: {truncated} examples cut at block_size {cfg.block_size}, "
                                 f"{dropped} dropped (prompt fills the block)")
    meta["tokens_per_second"] = total / max(time.perf_counter() - t0, 1e-9)
    return meta
