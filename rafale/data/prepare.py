"""Prepare (or reuse) the cached data for a config: source -> tokenizer -> pipeline -> cache entry.

    prepare(cfg.data) -> PreparedData     # .dataset(split), .collator(), .tokenizer, .meta, .key, .path

The cache key is exactly what changes the prepared arrays: the source fingerprint (sources.py), the
tokenizer file's content hash, the pipeline and its parameters, the block size and the format version
(cache.py). Batch sizes, learning rates and run names are not in it. A pipeline module (causal_lm, sft,
classification, mlm) says which fields it reads (`fields`), which settings enter the key (`params`),
how to build its arrays (`build`), how to read them back (`dataset`, `collator`) and what size each of
its files must have (`file_sizes`).

Every reuse first checks the entry against its meta.json (`damage`: a stat per file, no reading); an
entry that fails (a file cut short by a full disk or a bad copy, a missing or unreadable meta.json) is
reported in one line and rebuilt under the lock, replacing the damaged one only once complete. meta.json
also records each file's sha256, which `rafale cache verify` compares (`verify`).
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
from rafale.data import sources, tokenizer
from rafale.data.cache import build_entry, cache_root, file_sha256, key_hash, slug
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


def prepare(cfg: DataConfig, console=None, fingerprint: dict | None = None,
            tokenizer: TokenizerInfo | None = None) -> PreparedData:
    """Prepare (or reuse) the cache entry for `cfg`.

    Args:
        fingerprint: `sources.fingerprint(cfg)` when the caller has it already (with `data.fingerprint:
            content` it hashes every source file); None computes it here.
        tokenizer: the tokenizer for `cfg` when the caller has resolved it already (a run's plan); None
            loads or trains it here.

    Raises:
        DataError: a bad source, field, tokenizer, or too little text (nothing is left in the cache).
    """
    if cfg.streaming:  # the train split streams; only the eval split is prepared here
        from rafale.data.streaming import prepare_streaming

        return prepare_streaming(cfg, console, fingerprint, tokenizer)
    log = console.print if console is not None else print
    pipe = pipeline_module(cfg.pipeline)
    fields = pipe.fields(cfg)
    source_fp = sources.fingerprint(cfg) if fingerprint is None else fingerprint
    loaded: dict = {}

    def splits() -> dict:
        if not loaded:
            loaded.update(sources.load_splits(cfg, fields))
        return loaded

    tok = tokenizer or get_tokenizer(cfg, source_fp, lambda: pipe.texts_for_tokenizer(cfg, splits()["train"]), log=log)
    parts = {"pipeline": cfg.pipeline, "params": pipe.params(cfg), "source": source_fp,
             "tokenizer": tok.sha256, "block_size": cfg.block_size}
    key = key_hash(parts)
    tok_name = slug(Path(cfg.tokenizer.path).name if cfg.tokenizer.path
                    else f"{cfg.tokenizer.train.type}{cfg.tokenizer.train.vocab_size}", 20)
    final = cache_root() / "data" / f"{slug(sources.describe(cfg))}-{tok_name}-len{cfg.block_size}-{key}"
    t0 = time.perf_counter()
    with build_entry(final, log, check=damage) as tmp:
        if tmp is not None:
            with progress_bar(console) as progress:
                meta = pipe.build(cfg, splits(), tok, tmp, progress)
            meta.update(pipeline=cfg.pipeline, block_size=cfg.block_size, key=key, key_parts=parts,
                        data_config=asdict(cfg), tokenizer=_tok_meta(tok),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            shutil.copyfile(tok.path, tmp / "tokenizer.json")
            meta["sha256"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
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


def damage(entry: Path, hashes: bool = False) -> str | None:
    """What is wrong with the data cache entry `entry`, or None when nothing is found.

    Each data file's size is compared with what meta.json's counts and dtypes make it (a stat per file,
    cheap enough for every reuse); with `hashes`, each file's sha256 with the one recorded at build time.
    """
    try:
        meta = json.loads((entry / "meta.json").read_text())
        pipe = pipeline_module(meta["pipeline"])
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError, LookupError, TypeError, ImportError) as e:
        return f"meta.json cannot be read ({type(e).__name__}: {e})"
    try:
        want = pipe.file_sizes(entry, meta)
        have = {name: (entry / name).stat().st_size for name in [*want, "tokenizer.json"]}
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as e:
        return f"its files do not match meta.json ({type(e).__name__}: {e})"
    for name, size in want.items():
        if have[name] != size:
            return f"{name} has {have[name]:,} bytes where meta.json implies {size:,}"
    for name, digest in (meta.get("sha256", {}).items() if hashes else ()):
        if file_sha256(entry / name) != digest:
            return f"{name} differs from the sha256 recorded when it was built"
    return None


def verify(entry: Path) -> tuple[bool, str]:
    """`rafale cache verify` of one entry: (nothing is wrong, what was found); data files are hashed too."""
    if entry.parent.name == "tokenizers":  # a trained tokenizer has no meta.json; it must load
        found = tokenizer.damage(entry)
        return found is None, found or "ok"
    found = damage(entry, hashes=True)
    if found is not None:
        return False, found
    hashed = "sha256" in json.loads((entry / "meta.json").read_text())
    return True, "ok" if hashed else "ok (no recorded hashes; size checks only)"
