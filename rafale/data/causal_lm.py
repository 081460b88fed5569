"""The causal-LM pipeline: documents -> tokens (+EOS each) -> one flat array -> blocks of `block_size`.

Prepared data is a cache entry holding `train.bin` and `eval.bin` (flat uint16 tokens when the vocab
allows, else uint32; length a multiple of block_size), `tokenizer.json` and `meta.json`. Reusing it is a
memory map: nothing is re-read or re-tokenized, and a block is served straight from the page cache.

Speed: documents are encoded with the tokenizer's batched Rust encoder in large batches and written as
numpy arrays, so the tokenizer is the limit (see benchmarks/). The tail of the concatenated stream that
does not fill a whole block is dropped, and meta.json says how many tokens that was.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rafale.config import DataConfig
from rafale.data import sources
from rafale.data.cache import build_entry, cache_root, key_hash, slug, write_json
from rafale.data.tokenizer import TokenizerInfo, get_tokenizer, load_tokenizer
from rafale.errors import DataError

ENCODE_BATCH = 2048  # documents per encode_batch call: large enough to keep the Rust threads busy


@dataclass
class PreparedData:
    path: Path  # the cache entry
    key: str
    meta: dict
    tokenizer: TokenizerInfo
    reused: bool

    def blocks(self, split: str) -> "TokenBlocks | None":
        n = self.meta["splits"][split]["blocks"]
        return TokenBlocks(self.path / f"{split}.bin", self.meta["dtype"], self.meta["block_size"]) if n else None


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


def prepare(cfg: DataConfig, console=None) -> PreparedData:
    """Prepare (or reuse) the cached blocks for `cfg`."""
    log = console.print if console is not None else print
    source_fp = sources.fingerprint(cfg)
    loaded: dict[str, list[str]] = {}

    def splits() -> dict[str, list[str]]:
        if not loaded:
            docs = sources.load_documents(cfg)
            loaded["train"], loaded["eval"] = sources.split_documents(docs, cfg.eval_split, cfg.seed)
        return loaded

    tok = get_tokenizer(cfg, source_fp, lambda: splits()["train"], log=log)
    parts = {"pipeline": "causal_lm", "source": source_fp, "tokenizer": tok.sha256,
             "block_size": cfg.block_size, "eval_split": cfg.eval_split, "split_seed": cfg.seed}
    key = key_hash(parts)
    tok_name = slug(Path(cfg.tokenizer.path).name if cfg.tokenizer.path else f"bpe{cfg.tokenizer.train.vocab_size}", 20)
    final = cache_root() / "data" / f"{slug(cfg.source)}-{tok_name}-len{cfg.block_size}-{key}"
    t0 = time.perf_counter()
    with build_entry(final) as tmp:
        if tmp is not None:
            meta = _build(cfg, splits(), tok, tmp, console)
            meta.update(key=key, key_parts=parts, data_config=_plain(cfg))
            shutil.copyfile(tok.path, tmp / "tokenizer.json")
            write_json(tmp / "meta.json", meta)
    reused = tmp is None
    meta = json.loads((final / "meta.json").read_text())
    if reused:
        log(f"reused cache {final} ({time.perf_counter() - t0:.2f}s)")
    else:
        s = meta["splits"]
        log(f"prepared {final}: {s['train']['blocks']} train and {s['eval']['blocks']} eval blocks of "
            f"{cfg.block_size} tokens ({meta['tokens_per_second']:,.0f} tokens/s)")
    return PreparedData(final, key, meta, load_tokenizer(final / "tokenizer.json"), reused)


def _plain(cfg: DataConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def _build(cfg: DataConfig, splits: dict[str, list[str]], tok: TokenizerInfo, out: Path, console) -> dict:
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    meta = {"format": "flat-tokens", "dtype": np.dtype(dtype).name, "block_size": cfg.block_size,
            "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "splits": {}}
    t0 = time.perf_counter()
    total = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("docs  {task.fields[tps]} tokens/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for split in ("train", "eval"):
            docs = splits[split]
            task = progress.add_task(f"tokenizing {split}", total=len(docs), tps="-")
            tokens = _tokenize(docs, tok, dtype, progress, task, t0, total)
            total += len(tokens)
            n_blocks = len(tokens) // cfg.block_size
            if split == "train" and n_blocks == 0:
                raise DataError(f"data.source: {cfg.source!r} gives {len(tokens)} train tokens, fewer than one "
                                f"block of data.block_size {cfg.block_size}; use more text or a smaller block")
            if split == "eval" and docs and n_blocks == 0:
                raise DataError(f"data.eval_split: the {len(docs)} held-out documents give {len(tokens)} tokens, "
                                f"fewer than one block of {cfg.block_size}; raise eval_split or lower block_size")
            kept = n_blocks * cfg.block_size
            tokens[:kept].tofile(out / f"{split}.bin")
            meta["splits"][split] = {"documents": len(docs), "tokens": int(len(tokens)), "blocks": n_blocks,
                                     "dropped_tokens": int(len(tokens) - kept)}
    meta["tokens_per_second"] = total / max(time.perf_counter() - t0, 1e-9)
    return meta


def _tokenize(docs, tok: TokenizerInfo, dtype, progress, task, t0, done_before) -> np.ndarray:
    pieces = []
    n_tokens = 0
    eos = np.array([tok.eos_id], dtype=dtype)
    for i in range(0, len(docs), ENCODE_BATCH):
        batch = docs[i : i + ENCODE_BATCH]
        for enc in tok.tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=dtype)
            pieces.append(ids)
            pieces.append(eos)
            n_tokens += len(ids) + 1
        rate = (done_before + n_tokens) / max(time.perf_counter() - t0, 1e-9)
        progress.update(task, advance=len(batch), tps=f"{rate:,.0f}")
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
