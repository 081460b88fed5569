"""The causal-LM pipeline: documents -> tokens (+EOS each) -> one flat array -> blocks of `block_size`.

Prepared data is a cache entry holding `train.bin` and `eval.bin` (flat uint16 tokens when the vocab
allows, else uint32; length a multiple of block_size), `tokenizer.json` and `meta.json`. Reusing it is a
memory map: nothing is re-read or re-tokenized, and a block is served straight from the page cache.

Speed: documents are encoded with the tokenizer's batched Rust encoder in large batches, on a worker
thread (the encoder releases the GIL), while the main thread turns the previous batch's id lists into
one numpy array (`np.fromiter` over the chained lists, no per-document array). So conversion overlaps
encoding and the tokenizer stays the limit (benchmarks/datapipe.py). The tail of the concatenated
stream that does not fill a whole block is dropped, and meta.json says how many tokens that was.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from rafale.config import DataConfig
from rafale.data.tokenizer import TokenizerInfo
from rafale.errors import DataError

ENCODE_BATCH = 2048  # documents per encode_batch call: large enough to keep the Rust threads busy


# ---- what the pipeline reads and what enters the cache key -------------------------------------------
def fields(cfg: DataConfig) -> list[str]:
    return [cfg.text_field]


def params(cfg: DataConfig) -> dict:
    return {"text_field": cfg.text_field}


def texts_for_tokenizer(cfg: DataConfig, train: dict) -> list[str]:
    return train[cfg.text_field]


# ---- reading back ------------------------------------------------------------------------------------
class TokenBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks over a memory-mapped flat token file."""

    def __init__(self, path: Path, dtype: str, block_size: int):
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.block_size
        return torch.from_numpy(self.tokens[start : start + self.block_size].astype(np.int64))

    def unigram_counts(self, vocab_size: int) -> np.ndarray:
        return np.bincount(self.tokens, minlength=vocab_size)


def collate(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack(blocks)}


def dataset(path: Path, meta: dict, split: str) -> TokenBlocks | None:
    n = meta["splits"][split]["blocks"]
    return TokenBlocks(path / f"{split}.bin", meta["dtype"], meta["block_size"]) if n else None


def collator(meta: dict, **_):
    return collate


def file_sizes(path: Path, meta: dict) -> dict[str, int]:
    """The size each split's token file must have: its whole blocks in meta's dtype."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    return {f"{split}.bin": s["blocks"] * meta["block_size"] * itemsize for split, s in meta["splits"].items()}


# ---- building ----------------------------------------------------------------------------------------
def token_dtype(tok: TokenizerInfo):
    return np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def build(cfg: DataConfig, splits: dict, tok: TokenizerInfo, out: Path, progress,
          separator: int | None = None) -> dict:
    """Tokenize each split, append `separator` (EOS by default) to each document, write whole blocks."""
    dtype = token_dtype(tok)
    sep = tok.eos_id if separator is None else separator
    meta = {"format": "flat-tokens", "dtype": np.dtype(dtype).name, "splits": {}, "notes": []}
    t0 = time.perf_counter()
    total = 0
    for split in ("train", "eval"):
        docs = splits[split][cfg.text_field]
        task = progress.add_task(f"tokenizing {split}", total=len(docs), tps="-")
        tokens = tokenize_flat(docs, tok, sep, dtype, lambda n_docs, n_tok: progress.update(
            task, advance=n_docs, tps=f"{(total + n_tok) / max(time.perf_counter() - t0, 1e-9):,.0f}"))
        total += len(tokens)
        blocks, rest = pack(tokens[:0], tokens, cfg.block_size)
        n_blocks = len(blocks)
        if split == "train" and n_blocks == 0:
            raise DataError(f"data.source: {cfg.source!r} gives {len(tokens)} train tokens, fewer than one "
                            f"block of data.block_size {cfg.block_size}; use more text or a smaller block")
        if split == "eval" and docs and n_blocks == 0:
            raise DataError(f"data.eval_split: the {len(docs)} held-out documents give {len(tokens)} tokens, "
                            f"fewer than one block of {cfg.block_size}; raise eval_split or lower block_size")
        kept = n_blocks * cfg.block_size
        blocks.tofile(out / f"{split}.bin")
        meta["splits"][split] = {"documents": len(docs), "tokens": int(len(tokens)), "blocks": n_blocks,
                                 "examples": n_blocks, "dropped_tokens": int(len(tokens) - kept)}
        if len(tokens) - kept:
            meta["notes"].append(f"{split}: dropped the last {len(tokens) - kept} tokens (less than one block)")
    meta["tokens_per_second"] = total / max(time.perf_counter() - t0, 1e-9)
    return meta


def tokenize_flat(docs: list[str], tok: TokenizerInfo, sep: int, dtype, on_batch=None) -> np.ndarray:
    """All documents' ids, each followed by `sep`, as one flat array of `dtype`."""
    batches = [docs[i : i + ENCODE_BATCH] for i in range(0, len(docs), ENCODE_BATCH)]
    encode = lambda batch: tok.tokenizer.encode_batch_fast(batch, add_special_tokens=False)
    pieces, n_tokens = [], 0
    with ThreadPoolExecutor(1) as pool:  # encode batch i+1 while converting batch i
        pending = pool.submit(encode, batches[0]) if batches else None
        for i in range(len(batches)):
            encs = pending.result()
            pending = pool.submit(encode, batches[i + 1]) if i + 1 < len(batches) else None
            pieces.append(flatten(encs, sep, dtype))
            n_tokens += len(pieces[-1])
            if on_batch is not None:
                on_batch(len(encs), n_tokens)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def encode_documents(docs: list[str], tok: TokenizerInfo, sep: int, dtype) -> np.ndarray:
    """One batch of documents' ids, each followed by `sep`, as one flat array (the streaming path's step)."""
    return flatten(tok.tokenizer.encode_batch_fast(docs, add_special_tokens=False), sep, dtype)


def flatten(encodings, sep: int, dtype) -> np.ndarray:
    lists = [e.ids + [sep] for e in encodings]
    return np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=sum(map(len, lists)))


def pack(carry: np.ndarray, tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(whole blocks of `carry + tokens` as rows, the tokens left over). The cached path packs a split's
    whole stream at once and drops what is left; the streaming path carries it into the next batch."""
    flat = np.concatenate([carry, tokens]) if len(carry) else tokens
    n = len(flat) // block_size
    return flat[: n * block_size].reshape(n, block_size), flat[n * block_size :]
