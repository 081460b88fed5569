"""`data.streaming: true`: the train split is read, tokenized and packed on the fly; nothing is written to disk.

    data = prepare_streaming(cfg.data, tokenizer, console)   # .dataset("train") streams, .dataset("eval") is cached
    data.dataset("train").state_dict(n, True) / .load_state_dict(state)   # Composer's resume protocol

Documents come from `datasets`' own streaming (`load_dataset(..., streaming=True)`): local .jsonl/.json/
.parquet/.csv/.txt files, globs and folders, hub ids, or the embedded synthetic corpus. They are tokenized
in batches and packed by the same functions as the cached path (causal_lm.encode_documents and
causal_lm.pack), so the same documents in the same order give the same blocks; the cached path drops its
last partial block once, the stream drops it at the end of each pass.

Eval split: the source's own (validation, ... or data.eval_split_name), or else the first
`data.eval_documents` documents, which the train stream then skips. Either way at most eval_documents
documents, prepared once into a cache entry (eval.bin) like the cached path's eval split.

Processes: every process reads the stream and keeps the train documents whose index is its rank modulo
the number of processes, so each tokenizes only its share and the shares are disjoint. A process reads in
a background thread (the tokenizer releases the GIL), so the dataloader needs no workers.

Shuffling (`data.shuffle_buffer: N`): blocks pass through a buffer of N, and each step yields a random one
(a seeded torch.Generator, reseeded each pass). Null keeps the stream's order.

Position (what a checkpoint holds): the `datasets` state at the start of the current batch of documents, the
document count and the packing remainder at that point, how many blocks of that batch are already used, the
shuffle buffer's blocks and the generator's state. Resuming reads that one batch again and skips its used
blocks: no replay of earlier batches, and exactly the blocks an uninterrupted run would have seen.

Durations are given in ba or tok (a stream's length is unknown, and Composer needs one for epochs). With one
process, the end of a pass ends Composer's epoch and the next pass starts; with several, whose shares end
at different steps, each stream starts its next pass by itself, so no process waits for another.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from rafale.config import DataConfig
from rafale.data import causal_lm, sources
from rafale.data.cache import build_entry, cache_root, file_sha256, key_hash, slug
from rafale.data.causal_lm import encode_documents, pack, token_dtype
from rafale.data.prepare import PreparedData
from rafale.data.tokenizer import TokenizerInfo, load_tokenizer
from rafale.errors import DataError
from rafale.files import write_json

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
TOKENIZER_DOCUMENTS = 100_000  # data.tokenizer.train learns from the first documents of the stream


# ---- opening the source ------------------------------------------------------------------------------
def open_split(cfg: DataConfig, split: str):
    """The `datasets` IterableDataset of `split` ("train" or "eval"), or None when the source has no such split.

    Raises:
        DataError: the source cannot be opened (naming the path or the id, and the reason).
    """
    import datasets

    # a file's readers log a bad row before raising; texts() says it in one line, naming the file and line
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    k = sources.kind(cfg)
    try:
        if k == "synthetic":
            if split == "eval":
                return None
            from rafale.data.synthetic import load_synthetic

            docs = load_synthetic(cfg.source.split(":", 1)[1], n=cfg.max_documents, seed=cfg.seed)
            return datasets.Dataset.from_dict({cfg.text_field: docs}).to_iterable_dataset()
        if k == "disk":
            ds = datasets.load_from_disk(cfg.source)
            ds = ds if isinstance(ds, datasets.Dataset) else ds.get(_split_name(cfg, split, list(ds)))
            return None if ds is None else ds.to_iterable_dataset()
        if k == "hub":
            hub = sources._hub_id(cfg)
            splits = datasets.get_dataset_split_names(hub, cfg.hub_config, revision=cfg.hub_revision)
            name = _split_name(cfg, split, splits)
            return None if name is None else datasets.load_dataset(
                hub, cfg.hub_config, revision=cfg.hub_revision, split=name, streaming=True,
                storage_options=cfg.storage_options)
        every = sources.remote_files(cfg) if k == "remote" else [str(p) for p in sources._files(cfg)]
        files = [f for f in every if sources._split_of(PurePosixPath(f), cfg) == split]
        if split == "train" and not files:  # every file is named like an eval split: they are all train
            files = every
        if not files:
            return None
        suffixes = {BUILDERS[PurePosixPath(f).suffix] for f in files}
        if len(suffixes) > 1:
            raise DataError(f"data.source: streaming reads one kind of file at a time; found "
                            f"{', '.join(sorted({PurePosixPath(f).suffix for f in files}))}")
        kwargs = {"sample_by": "paragraph" if cfg.txt_document == "paragraph" else "document"} \
            if suffixes == {"text"} else {}
        if k == "remote":
            kwargs["storage_options"] = cfg.storage_options or {}
        return datasets.load_dataset(suffixes.pop(), data_files={split: files}, split=split, streaming=True,
                                     **kwargs)
    except DataError:
        raise
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"data.source: cannot stream {sources.describe(cfg)!r}: {first}") from None


def _split_name(cfg: DataConfig, split: str, names: list[str]) -> str | None:
    if split == "train":
        if cfg.train_split_name not in names:
            raise DataError(f"data.train_split_name: {cfg.train_split_name!r} is not a split of "
                            f"{sources.describe(cfg)!r}; found: {', '.join(names)}")
        return cfg.train_split_name
    wanted = [cfg.eval_split_name] if cfg.eval_split_name else list(sources.EVAL_SPLIT_NAMES)
    return next((n for n in wanted if n in names), None)


def _files_of(cfg: DataConfig) -> list[Path]:
    return sources._files(cfg) if sources.kind(cfg) == "files" else []


def _bad_line(cfg: DataConfig, error: Exception) -> DataError:
    """A source that raised mid-stream: name the first unreadable line of a local file, else the error."""
    for path in _files_of(cfg):
        if path.suffix not in (".jsonl", ".json"):
            continue
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                try:
                    json.loads(line) if line.strip() else None
                except ValueError as e:
                    return SourceError(f"{path}:{n}: invalid JSON ({str(e).splitlines()[0][:80]}); fix the line "
                                       f"and run the same command to resume from the latest checkpoint", path)
    first = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return SourceError(f"data.source: {sources.describe(cfg)!r} failed while streaming: {first}", None)


class SourceError(DataError):
    """A source that fails part way through; `path` is the file at fault, when known."""

    def __init__(self, message: str, path: Path | None):
        super().__init__(message)
        self.path = str(path) if path else None


def texts(ds, cfg: DataConfig):
    """The text of each non-empty row of `ds`; a missing field names the fields there are, a row that
    cannot be read names its file and line."""
    it = iter(ds)
    first = True
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as e:
            raise _bad_line(cfg, e) from None
        if first and cfg.text_field not in row:
            raise DataError(f"data.text_field: {cfg.text_field!r} is not a field of the first record of "
                            f"{sources.describe(cfg)!r}; found: {', '.join(map(str, row)) or 'nothing'}")
        first = False
        text = row.get(cfg.text_field)
        if text is not None and str(text).strip():  # empty documents are dropped, as the cached path drops them
            yield str(text)


# ---- the train stream --------------------------------------------------------------------------------
@dataclass
class Position:
    """Where a pass stands, between two yielded blocks (see the module docstring)."""

    epoch: int = 0
    source: dict | None = None  # datasets state at the start of the current batch; None: the beginning
    seen: int = 0  # train documents (all processes') before the current batch; negative: eval ones to skip
    carry: list = field(default_factory=list)  # packing remainder before the current batch
    used: int = 0  # blocks of the current batch already pushed
    yielded: int = 0  # blocks this process yielded in this pass


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks of `block_size` tokens from the train stream, this process's share, resumable exactly."""

    def __init__(self, cfg: DataConfig, tok: TokenizerInfo, rank: int = 0, world: int = 1, loop: bool | None = None):
        """`loop`: start the next pass without ending the iteration (default: with several processes)."""
        self.cfg, self.tok, self.rank, self.world, self.seed = cfg, tok, rank, world, cfg.seed
        self.loop = world > 1 if loop is None else loop
        self.dtype = token_dtype(tok)
        self.skip = 0 if open_split(cfg, "eval") is not None else cfg.eval_documents  # held out for eval
        self._pending: dict | None = None  # a loaded state, used by the next iteration
        self._live: tuple | None = None  # (Position, buffer, generator) of the pass under way
        self._epoch = 0

    # Composer's dataset resume protocol
    def state_dict(self, num_samples: int = 0, from_beginning: bool = True) -> dict:
        if self._live is None:
            return self._pending or {"position": vars(Position(self._epoch)), "buffer": None, "rng": None}
        pos, buffer, rng = self._live
        rows = torch.from_numpy(np.stack(buffer).astype(np.int32)) if buffer else None
        return {"position": {**vars(pos), "carry": list(map(int, pos.carry))}, "buffer": rows,
                "rng": rng.get_state() if rng is not None else None, "samples": num_samples}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state
        self._live = None

    def __iter__(self):
        while True:
            state, self._pending = self._pending, None
            if state is None:
                state = {"position": vars(Position(self._epoch)), "buffer": None, "rng": None}
            pos = Position(**{k: v for k, v in state["position"].items() if k in Position.__dataclass_fields__})
            yield from self._pass(pos, state["buffer"], state["rng"])
            self._live, self._epoch = None, pos.epoch + 1
            if not self.loop:
                return  # one pass is one epoch

    def _pass(self, pos: Position, rows, rng_state):
        size = self.cfg.shuffle_buffer
        rng = None
        if size is not None:
            rng = torch.Generator()
            if rng_state is None:
                rng.manual_seed(self.seed * 1_000_003 + self.rank * 1009 + pos.epoch)
            else:
                rng.set_state(rng_state)
        buffer = [r.numpy().astype(self.dtype) for r in rows] if rows is not None else []
        self._live = (pos, buffer, rng)
        skip = pos.used
        carry = np.asarray(pos.carry, dtype=self.dtype)
        for source, seen, tokens in self._batches(pos):
            blocks, rest = pack(carry, tokens, self.cfg.block_size)
            pos.source, pos.seen, pos.carry, pos.used = source, seen, carry.tolist(), skip
            for block in blocks[skip:]:
                pos.used += 1
                if size is None:
                    pos.yielded += 1
                    yield torch.from_numpy(block.astype(np.int64))
                elif len(buffer) < size:
                    buffer.append(block)
                else:
                    j = int(torch.randint(size, (1,), generator=rng))
                    out, buffer[j] = buffer[j], block
                    pos.yielded += 1
                    yield torch.from_numpy(out.astype(np.int64))
            skip, carry = 0, rest
        while buffer:  # the stream ended: empty the buffer in random order
            j = int(torch.randint(len(buffer), (1,), generator=rng))
            out = buffer[j]
            buffer[j] = buffer[-1]
            buffer.pop()
            pos.yielded += 1
            yield torch.from_numpy(out.astype(np.int64))

    def _batches(self, pos: Position):
        """(datasets state before the batch, train documents seen before it, its tokens) for each batch of
        this process's documents; the next batch is read and tokenized in a thread while this one is used."""
        ds = open_split(self.cfg, "train")
        if pos.source is not None:
            ds.load_state_dict(pos.source)
        rows = texts(ds, self.cfg)
        limit = self.cfg.max_documents
        index = pos.seen if pos.source is not None else -self.skip  # negative: documents held out for eval
        sep = self.tok.eos_id

        def read(index):
            """This process's next data.stream_batch documents, tokenized; `index` counts train documents, all
            processes' (a document is this process's when index % world == rank)."""
            docs, start = [], (ds.state_dict(), index)  # the state before the batch's first row
            for text in rows:
                if limit is not None and index >= limit:
                    break
                if index >= 0 and index % self.world == self.rank:
                    docs.append(text)
                index += 1
                if len(docs) == self.cfg.stream_batch:
                    break
            if not docs:
                return None, index
            return (*start, encode_documents(docs, self.tok, sep, self.dtype)), index

        pool = ThreadPoolExecutor(1)
        try:
            pending = pool.submit(read, index)
            while True:
                batch, index = pending.result()
                if batch is None:
                    return
                pending = pool.submit(read, index)
                yield batch
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


# ---- prepared data: the stream for train, a cache entry for eval --------------------------------------
@dataclass
class StreamingData(PreparedData):
    """PreparedData whose train split streams (this process's share); eval is the cached entry's."""

    cfg: DataConfig | None = None

    def dataset(self, split: str):
        if split != "train":
            return super().dataset(split)
        import torch.distributed as tdist

        on = tdist.is_available() and tdist.is_initialized()
        return StreamingBlocks(self.cfg, self.tokenizer, tdist.get_rank() if on else 0,
                               tdist.get_world_size() if on else 1)


def prepare_streaming(cfg: DataConfig, console=None, fingerprint: dict | None = None,
                      tokenizer: TokenizerInfo | None = None) -> StreamingData:
    """The tokenizer and the eval split's cache entry (built once); the train split streams later.

    Raises:
        DataError: the source cannot be opened, lacks data.text_field, or its eval documents give no block.
    """
    from rafale.data.prepare import _tok_meta, damage
    from rafale.data.tokenizer import get_tokenizer

    log = console.print if console is not None else print
    fp = sources.fingerprint(cfg) if fingerprint is None else fingerprint
    next(texts(open_split(cfg, "train"), cfg), None)  # opens, and checks the first record's fields
    tok = tokenizer or get_tokenizer(cfg, fp, lambda: tokenizer_documents(cfg), log=log)
    parts = {"pipeline": cfg.pipeline, "params": causal_lm.params(cfg), "source": fp, "tokenizer": tok.sha256,
             "block_size": cfg.block_size, "streaming_eval_documents": cfg.eval_documents}
    key = key_hash(parts)
    final = cache_root() / "data" / f"{slug(sources.describe(cfg))}-stream-eval-len{cfg.block_size}-{key}"
    with build_entry(final, log, check=damage) as tmp:
        if tmp is not None:
            docs = eval_documents(cfg)
            if open_split(cfg, "eval") is None and next(iter(StreamingBlocks(cfg, tok)), None) is None:
                raise DataError(f"data.eval_documents: {cfg.eval_documents} takes every document of "
                                f"{sources.describe(cfg)!r} (or all but less than one block) for the eval "
                                f"split, leaving nothing to train on; lower it")
            tokens = causal_lm.tokenize_flat(docs, tok, tok.eos_id, token_dtype(tok))
            blocks, rest = pack(tokens[:0], tokens, cfg.block_size)
            if docs and not len(blocks):
                raise DataError(f"data.eval_documents: the {len(docs)} eval documents give {len(tokens)} tokens, "
                                f"fewer than one block of {cfg.block_size}; raise it, or set it to 0 for no eval")
            blocks.tofile(tmp / "eval.bin")
            meta = {"format": "flat-tokens", "dtype": np.dtype(token_dtype(tok)).name, "streaming": True,
                    "splits": {"eval": {"documents": len(docs), "tokens": int(len(tokens)), "blocks": len(blocks),
                                        "examples": len(blocks), "dropped_tokens": int(len(rest))}},
                    "pipeline": cfg.pipeline, "block_size": cfg.block_size, "key": key, "key_parts": parts,
                    "data_config": asdict(cfg), "tokenizer": _tok_meta(tok),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            shutil.copyfile(tok.path, tmp / "tokenizer.json")
            meta["sha256"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
            write_json(tmp / "meta.json", meta)
    meta = json.loads((final / "meta.json").read_text())
    tok = load_tokenizer(final / "tokenizer.json")
    ev = meta["splits"]["eval"]
    log(f"{'reused' if tmp is None else 'prepared'} eval split {final} ({ev['documents']:,} documents, "
        f"{ev['blocks']:,} blocks); the train split streams from {sources.describe(cfg)}")
    log(tok.describe())
    return StreamingData(final, key, meta, tok, tmp is None, cfg)


# ---- the eval split, the tokenizer's documents, DATA=1 -------------------------------------------------
def eval_documents(cfg: DataConfig) -> list[str]:
    """The source's own eval split, or its first documents (which the train stream skips); at most
    data.eval_documents of them."""
    ds = open_split(cfg, "eval")
    ds = ds if ds is not None else open_split(cfg, "train")
    out = []
    for text in texts(ds, cfg):
        if len(out) >= cfg.eval_documents:
            break
        out.append(text)
    return out


def tokenizer_documents(cfg: DataConfig) -> list[str]:
    """data.tokenizer.train learns from the first TOKENIZER_DOCUMENTS train documents of the stream."""
    out, skip = [], 0 if open_split(cfg, "eval") is not None else cfg.eval_documents  # not the eval documents
    for text in texts(open_split(cfg, "train"), cfg):
        if skip:
            skip -= 1
            continue
        if len(out) >= TOKENIZER_DOCUMENTS:
            break
        out.append(text)
    if not out:
        raise DataError(f"data.eval_documents: {cfg.eval_documents} takes every document of "
                        f"{sources.describe(cfg)!r} for the eval split, leaving none to train on; lower it")
    return out


def check(cfg: DataConfig, tok: TokenizerInfo, log, blocks: int = 64) -> dict:
    """DATA=1: open the stream, tokenize its first `blocks` blocks, estimate tokens/s; nothing is cached."""
    t0 = time.perf_counter()
    ds = StreamingBlocks(cfg, tok)
    n = 0
    for n, _ in enumerate(ds, start=1):
        if n >= blocks:
            break
    seconds = time.perf_counter() - t0
    if n == 0:
        raise DataError(f"data.source: {sources.describe(cfg)!r} gives no whole block of data.block_size "
                        f"{cfg.block_size} tokens")
    tps = n * cfg.block_size / max(seconds, 1e-9)
    log(f"streaming {sources.describe(cfg)}: read and packed the first {n} blocks of {cfg.block_size} tokens "
        f"in {seconds:.2f}s (~{tps:,.0f} tokens/s, opening included); the train split streams while "
        f"training, so nothing is cached for it by design")
    return {"blocks": n, "tokens_per_second": tps}


def check_duration(cfg) -> None:
    """A stream's run must be given in batches or tokens: its length is unknown until it ends.

    Raises:
        ConfigError: run.max_duration in epochs.
    """
    from composer.core import Time, TimeUnit

    from rafale.errors import ConfigError

    if Time.from_timestring(cfg.run.max_duration).unit == TimeUnit.EPOCH:
        raise ConfigError(f"run.max_duration: {cfg.run.max_duration} with data.streaming; a stream's length is "
                          f"unknown until it ends, and Composer needs one for epochs and for the schedule; give "
                          f"the duration in ba or tok (one pass of the stream then ends an epoch)")
