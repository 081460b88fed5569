"""The classification pipeline: text (or a text pair) + label -> `[CLS] a [SEP] (b [SEP])` + label id.

The label set is `data.labels` when given (in id order), else every label seen in the train split,
sorted (numerically when all are integers). It is stored in meta.json (`labels`), so a model's output
index maps back to a name. An eval label outside the set is an error, not a silent new class. Texts
longer than the block are cut, the longer text of a pair first, and counted (`truncated`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rafale.config import DataConfig
from rafale.data import examples
from rafale.data.causal_lm import token_dtype
from rafale.data.tokenizer import CLS_CANDIDATES, SEP_CANDIDATES, TokenizerInfo
from rafale.errors import DataError

dataset, collator, file_sizes = examples.dataset, examples.collator, examples.file_sizes


def fields(cfg: DataConfig) -> list[str]:
    return [cfg.text_field] + ([cfg.text_pair_field] if cfg.text_pair_field else []) + [cfg.label_field]


def params(cfg: DataConfig) -> dict:
    return {"text_field": cfg.text_field, "text_pair_field": cfg.text_pair_field,
            "label_field": cfg.label_field, "labels": cfg.labels}


def texts_for_tokenizer(cfg: DataConfig, train: dict) -> list[str]:
    texts = list(map(str, train[cfg.text_field]))
    return texts + (list(map(str, train[cfg.text_pair_field])) if cfg.text_pair_field else [])


def label_set(cfg: DataConfig, train_labels: list) -> list[str]:
    if cfg.labels is not None:
        return list(cfg.labels)
    seen = {str(x) for x in train_labels}
    numeric = all(s.lstrip("-").isdigit() for s in seen)
    return sorted(seen, key=int) if numeric else sorted(seen)


def _fit(a: list[int], b: list[int] | None, room: int) -> tuple[list[int], list[int] | None, bool]:
    """Cut the longer of a and b, one token at a time, until both fit in `room`."""
    cut = False
    while len(a) + (len(b) if b is not None else 0) > room:
        cut = True
        if b is not None and len(b) > len(a):
            b = b[: len(b) - 1]
        else:
            a = a[: len(a) - 1]
    return a, b, cut


def build(cfg: DataConfig, splits: dict, tok: TokenizerInfo, out: Path, progress) -> dict:
    cls, sep = tok.special(CLS_CANDIDATES, "[CLS]"), tok.special(SEP_CANDIDATES, "[SEP]")
    pad = tok.pad_id if tok.pad_id is not None else sep
    labels = label_set(cfg, splits["train"][cfg.label_field])
    index = {name: i for i, name in enumerate(labels)}
    meta = {"format": "examples", "labels": labels, "splits": {}, "notes": [], "pad_id": pad,
            "arrays": ["input_ids", "attention_mask", "labels"]}
    t0, total = time.perf_counter(), 0
    enc = lambda xs: [e.ids for e in tok.tokenizer.encode_batch_fast([str(x) for x in xs],
                                                                     add_special_tokens=False)]
    for split in ("train", "eval"):
        cols = splits[split]
        n = len(cols[cfg.label_field])
        task = progress.add_task(f"tokenizing {split}", total=n, tps="-")
        unknown = sorted({str(x) for x in cols[cfg.label_field]} - set(index))
        if unknown:
            where = "data.labels" if cfg.labels is not None else "the train split"
            raise DataError(f"data.label_field: {split} has labels {', '.join(map(repr, unknown[:5]))} not in "
                            f"{where} ({', '.join(labels[:10])})")
        a_ids = enc(cols[cfg.text_field])
        b_ids = enc(cols[cfg.text_pair_field]) if cfg.text_pair_field else [None] * n
        ids_arr = np.full((n, cfg.block_size), pad, dtype=token_dtype(tok))
        mask = np.zeros((n, cfg.block_size), dtype=np.uint8)
        truncated = 0
        for r, (a, b) in enumerate(zip(a_ids, b_ids)):
            a, b, cut = _fit(a, b, cfg.block_size - (2 if b is None else 3))
            truncated += cut
            row = [cls] + a + [sep] + ([] if b is None else b + [sep])
            ids_arr[r, : len(row)] = row
            mask[r, : len(row)] = 1
            total += len(row)
        y = np.array([index[str(x)] for x in cols[cfg.label_field]], dtype=np.int64)
        examples.save(out, split, {"input_ids": ids_arr, "attention_mask": mask, "labels": y})
        progress.update(task, advance=n, tps=f"{total / max(time.perf_counter() - t0, 1e-9):,.0f}")
        meta["splits"][split] = {"documents": n, "examples": n, "tokens": int(mask.sum()), "truncated": truncated}
        if truncated:
            meta["notes"].append(f"{split}: {truncated} examples cut to block_size {cfg.block_size}")
    meta["tokens_per_second"] = total / max(time.perf_counter() - t0, 1e-9)
    return meta
