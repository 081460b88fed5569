"""Prepare (or reuse) the cached data for a config: source -> tokenizer -> pipeline -> cache entry.

    prepare(cfg.data) -> PreparedData     # .dataset(split), .collator(), .tokenizer, .meta, .key, .path

The cache key is exactly what changes the prepared arrays: the source fingerprint (sources.py), the
tokenizer file's content hash, the pipeline and its parameters, the block size and the format version
(cache.py). Batch sizes, learning rates and run names are not in it. A pipeline module (causal_lm, sft,
classification, mlm) says which fields it reads (`fields`), which settings enter the key (`params`),
how to build its arrays (`build`) and how to read them back (`dataset`, `collator`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rafale.config import DataConfig
from rafale.data import sources
from rafale.data.cache import build_entry, cache_root, key_hash, slug
from rafale.data.tokenizer import TokenizerInfo, get_tokenizer, load_tokenizer
from rafale.files import write_json


def pipeline_module(name: str):
    return importlib.import_module(f"rafale.data.{name}")


@dataclass
class PreparedData:
    path: Path  # the cache entry
    key: str
    meta: dict
    tokenizer: TokenizerInfo
    reused: bool

    def dataset(self, split: str):
        """The split as a torch Dataset (None when it is empty)."""
        return pipeline_module(self.meta["pipeline"]).dataset(self.path, self.meta, split)

    def collator(self, **kwargs):
        return pipeline_module(self.meta["pipeline"]).collator(self.meta, **kwargs)


def progress_bar(console) -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("docs  {task.fields[tps]} tokens/s"), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True)


def prepare(cfg: DataConfig, console=None) -> PreparedData:
    """Prepare (or reuse) the cache entry for `cfg`.

    Raises:
        DataError: a bad source, field, tokenizer, or too little text (nothing is left in the cache).
    """
    log = console.print if console is not None else print
    pipe = pipeline_module(cfg.pipeline)
    fields = pipe.fields(cfg)
    source_fp = sources.fingerprint(cfg)
    loaded: dict = {}

    def splits() -> dict:
        if not loaded:
            loaded.update(sources.load_splits(cfg, fields))
        return loaded

    tok = get_tokenizer(cfg, source_fp, lambda: pipe.texts_for_tokenizer(cfg, splits()["train"]), log=log)
    parts = {"pipeline": cfg.pipeline, "params": pipe.params(cfg), "source": source_fp,
             "tokenizer": tok.sha256, "block_size": cfg.block_size}
    key = key_hash(parts)
    tok_name = slug(Path(cfg.tokenizer.path).name if cfg.tokenizer.path
                    else f"{cfg.tokenizer.train.type}{cfg.tokenizer.train.vocab_size}", 20)
    final = cache_root() / "data" / f"{slug(sources.describe(cfg))}-{tok_name}-len{cfg.block_size}-{key}"
    t0 = time.perf_counter()
    with build_entry(final, on_wait=log) as tmp:
        if tmp is not None:
            with progress_bar(console) as progress:
                meta = pipe.build(cfg, splits(), tok, tmp, progress)
            meta.update(pipeline=cfg.pipeline, block_size=cfg.block_size, key=key, key_parts=parts,
                        data_config=asdict(cfg), tokenizer=_tok_meta(tok),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            shutil.copyfile(tok.path, tmp / "tokenizer.json")
            write_json(tmp / "meta.json", meta)
    reused = tmp is None
    meta = json.loads((final / "meta.json").read_text())
    tok = load_tokenizer(final / "tokenizer.json")
    if reused:
        os.utime(final)  # "last used", for `rafale cache list`
        log(f"reused cache {final} ({time.perf_counter() - t0:.2f}s)")
    else:
        counts = ", ".join(f"{s}: {v['tokens']:,} tokens, {v['examples']:,} examples"
                           for s, v in meta["splits"].items())
        log(f"prepared {final} ({counts}; {meta['tokens_per_second']:,.0f} tokens/s)")
        for note in meta.get("notes", []):
            log(note)
    log(tok.describe())
    return PreparedData(final, key, meta, tok, reused)


def _tok_meta(tok: TokenizerInfo) -> dict:
    return {"source": str(tok.path), "sha256": tok.sha256, "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id}
