"""Where documents come from: `data.source` -> a fingerprint (cheap) and splits of columns (loaded).

Supported sources:
- `synthetic:<name>`: the embedded corpus generator (rafale/data/synthetic.py), no network;
- local files: one path, a list of paths, a glob (`data/*.jsonl`) or a folder (read recursively, in
  sorted order). `.txt`: one document per blank-line-separated block, or per file with
  `data.txt_document: file`. `.jsonl`/`.json`/`.parquet`/`.csv`: one document per row, columns by name;
- a `Dataset`/`DatasetDict` folder written by `datasets`' `save_to_disk`;
- a hub dataset id (`owner/name`, or `hf:name` for ids without an owner), loaded with
  `datasets.load_dataset` (config `data.hub_config`, revision `data.hub_revision`);
- with `data.streaming: true`, files behind an fsspec URL (`s3://bucket/c4/*.jsonl`, `gs://...`,
  `hf://datasets/...`; a file, a glob or a folder), opened with `data.storage_options` and never copied.

Text must be UTF-8: a file that is not fails with its path and the byte offset of the first bad byte
(re-encode it; rafale never guesses an encoding, so the tokens are exactly what the file says).

Splits: a source with its own train and eval splits (a DatasetDict, a hub dataset, or local files whose
name or folder is `train`/`validation`...) keeps them; otherwise a seeded `data.eval_split` fraction of
the documents is held out. A split is a dict of columns: {"text": [...], "label": [...]}.

The fingerprint is what the cache key uses: for files their paths, sizes and modification times (or a
content hash with `data.fingerprint: content`), for the hub the id, config and revision, for the synthetic
corpus its name, seed and the generator's source code. Computing it reads no text (except `content`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import random
from pathlib import Path

from rafale.config import DataConfig
from rafale.errors import DataError
from rafale.files import is_hub_id

FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv")
EVAL_SPLIT_NAMES = ("validation", "valid", "val", "dev", "test", "eval")


def _sources(cfg: DataConfig) -> list[str]:
    return list(cfg.source) if isinstance(cfg.source, list) else [cfg.source]


def describe(cfg: DataConfig) -> str:
    """A short readable name for the source (cache entry names)."""
    items = _sources(cfg)
    first = items[0] if kind(cfg) in ("synthetic", "hub") else Path(items[0]).name
    return first if len(items) == 1 else f"{first}+{len(items) - 1}"


def kind(cfg: DataConfig) -> str:
    """synthetic | files | disk (save_to_disk) | hub | remote (fsspec URLs)."""
    items = _sources(cfg)
    first = items[0]
    if "://" in first:
        return "remote"
    if len(items) == 1 and first.startswith("synthetic:"):
        return "synthetic"
    if len(items) == 1 and first.startswith("hf:"):
        return "hub"
    if len(items) == 1:
        path = Path(first).expanduser()
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
            return "disk"
        if not path.exists() and not globlib.has_magic(first) and is_hub_id(first) \
                and path.suffix not in FILE_SUFFIXES:
            return "hub"
    return "files"


def _files(cfg: DataConfig) -> list[Path]:
    files: list[Path] = []
    for item in _sources(cfg):
        if globlib.has_magic(item):
            matched = sorted(Path(p) for p in globlib.glob(str(Path(item).expanduser()), recursive=True))
            matched = [p for p in matched if p.is_file() and p.suffix in FILE_SUFFIXES]
            if not matched:
                raise DataError(f"data.source: glob {item!r} matches no {'/'.join(FILE_SUFFIXES)} file")
            files.extend(matched)
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"data.source: {item!r} does not exist; expected synthetic:<name>, a file "
                            f"({', '.join(FILE_SUFFIXES)}), a glob, a folder or a hub dataset id (owner/name)")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"data.source: folder {item!r} holds no {', '.join(FILE_SUFFIXES)} file")
            files.extend(found)
        elif path.suffix not in FILE_SUFFIXES:
            raise DataError(f"data.source: {item!r} has suffix {path.suffix!r}; expected one of "
                            f"{', '.join(FILE_SUFFIXES)}")
        else:
            files.append(path)
    return files


def remote_files(cfg: DataConfig) -> list[str]:
    """The files behind a remote source's URLs (globs and folders expanded, sorted), as URLs.

    Raises:
        DataError: a URL that cannot be listed (naming it and the reason), or one that holds no data file.
    """
    import fsspec

    urls: list[str] = []
    for item in _sources(cfg):
        if "://" not in item:
            raise DataError(f"data.source: {item!r} is local while {_sources(cfg)[0]!r} is a URL; list sources "
                            f"of one kind")
        try:
            fs, path = fsspec.core.url_to_fs(item, **(cfg.storage_options or {}))
            if globlib.has_magic(path):
                found = sorted(fs.glob(path))
            elif fs.isdir(path):
                found = sorted(fs.find(path))
            else:
                found = [path] if fs.exists(path) else []
        except Exception as e:  # a missing protocol package, credentials, the network: say which
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"data.source: cannot list {item!r}: {first}") from None
        found = [p for p in found if Path(p).suffix in FILE_SUFFIXES]
        if not found:
            raise DataError(f"data.source: {item!r} holds no {'/'.join(FILE_SUFFIXES)} file")
        urls.extend(fs.unstrip_protocol(p) for p in found)
    return urls


def remote_sizes(cfg: DataConfig, urls: list[str]) -> list[int | None]:
    import fsspec

    fs, _ = fsspec.core.url_to_fs(urls[0], **(cfg.storage_options or {}))
    return [fs.info(u).get("size") for u in urls]


def fingerprint(cfg: DataConfig) -> dict:
    common = {"source": cfg.source, "max_documents": cfg.max_documents, "shuffle": cfg.shuffle,
              "train_split_name": cfg.train_split_name, "eval_split_name": cfg.eval_split_name,
              "eval_split": cfg.eval_split, "seed": cfg.seed}
    k = kind(cfg)
    if k == "synthetic":
        from rafale.data import synthetic

        code = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]
        return {**common, "generator": code}
    if k == "hub":
        return {**common, "hub": _hub_id(cfg), "config": cfg.hub_config, "revision": cfg.hub_revision}
    if k == "remote":  # URLs and sizes: listing a bucket reads no object
        if not cfg.streaming:
            raise DataError(f"data.source: {_sources(cfg)[0]!r} is a URL; remote files are read with "
                            f"data.streaming: true (nothing is copied to disk)")
        urls = remote_files(cfg)
        return {**common, "txt_document": cfg.txt_document, "files": [list(f) for f in zip(urls, remote_sizes(cfg, urls))]}
    files = sorted(p for p in Path(_sources(cfg)[0]).rglob("*") if p.is_file()) if k == "disk" else _files(cfg)
    fp = {**common, "txt_document": cfg.txt_document}
    if cfg.fingerprint == "content":
        from rafale.data.cache import file_sha256

        fp["files"] = [[str(p.resolve()), file_sha256(p)] for p in files]
    else:
        fp["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return fp


def fingerprint_change(old: dict, new: dict, allowed: str | None = None) -> str | None:
    """How the source changed between two fingerprints, or None: its id, revision or generator, the files
    listed, or a file's size (or checksum, under data.fingerprint: content); a file touched but not resized
    is no change.

    `allowed`: a file the run stopped on (a bad line); fixing it does not count as a change."""
    for key in ("hub", "config", "revision", "source", "max_documents", "generator"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} -> {new.get(key)!r}"
    before = {p: size for p, size, *_ in old.get("files", [])}
    after = {p: size for p, size, *_ in new.get("files", [])}
    if list(before) != list(after):
        gone, added = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        return "; ".join(filter(None, [gone and f"files removed: {', '.join(gone)}",
                                       added and f"files added: {', '.join(added)}"])) or "the files' order changed"
    for p in before:
        if before[p] != after[p] and p != (str(Path(allowed).resolve()) if allowed else None):
            if isinstance(before[p], int) and isinstance(after[p], int):
                return f"{p} changed size {before[p]:,} -> {after[p]:,} bytes"
            return f"{p} changed content"
    return None


# ---- loading ----------------------------------------------------------------------------------------
def load_splits(cfg: DataConfig, fields: list[str]) -> dict[str, dict[str, list]]:
    """Load the source as {"train": columns, "eval": columns} holding at least `fields`.

    Raises:
        DataError: a missing path or field (naming the fields that exist), a non-UTF-8 file, no text.
    """
    k = kind(cfg)
    if k == "synthetic":
        from rafale.data.synthetic import load_synthetic

        if fields[1:]:
            raise DataError(f"data.source: {cfg.source} holds only text; pipeline {cfg.pipeline} needs fields "
                            f"{', '.join(fields)} (use a .jsonl, .csv or .parquet file)")
        docs = load_synthetic(_sources(cfg)[0].split(":", 1)[1], n=cfg.max_documents, seed=cfg.seed)
        named = {"train": {fields[0]: docs}}
    elif k == "hub" or k == "disk":
        named = _load_datasets(cfg, k, fields)
    else:
        named = {}
        for path in _files(cfg):
            split = _split_of(path, cfg)
            cols = _read_file(path, cfg, fields)
            into = named.setdefault(split, {f: [] for f in cols})
            for f in into:
                into[f].extend(cols[f])
        if "train" not in named:  # every file was named after an eval split: treat them all as one pool
            named = {"train": {f: sum((c[f] for c in named.values()), []) for f in fields}}
    train = named["train"]
    evals = named.get("eval")
    if evals is None and len(named) > 1:
        raise DataError(f"data.source: found splits {', '.join(named)}; set data.eval_split_name")
    train = _clean(train, fields[0])
    if cfg.shuffle:
        train = _take(train, _perm(_n(train), cfg.seed))
    if cfg.max_documents:
        train = _take(train, range(min(cfg.max_documents, _n(train))))
    if _n(train) == 0:
        raise DataError(f"data.source: {describe(cfg)!r} holds no text (field {fields[0]!r})")
    if evals is None:
        return split_columns(train, cfg.eval_split, cfg.seed)
    return {"train": train, "eval": _clean(evals, fields[0])}


def _split_of(path: Path, cfg: DataConfig) -> str:
    names = {path.stem.lower(), path.parent.name.lower()}
    if cfg.train_split_name.lower() in names:
        return "train"
    eval_names = (cfg.eval_split_name,) if cfg.eval_split_name else EVAL_SPLIT_NAMES
    if any(n.lower() in names for n in eval_names):
        return "eval"
    return "train"


def _n(cols: dict) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _take(cols: dict, idx) -> dict:
    idx = list(idx)
    return {f: [v[i] for i in idx] for f, v in cols.items()}


def _perm(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _clean(cols: dict, text_field: str) -> dict:
    """Drop rows whose main text is empty."""
    keep = [i for i, t in enumerate(cols[text_field]) if t is not None and str(t).strip()]
    return cols if len(keep) == _n(cols) else _take(cols, keep)


def split_columns(cols: dict, eval_split: float, seed: int) -> dict[str, dict]:
    """Hold out a seeded fraction of rows (at least one when eval_split > 0)."""
    n = _n(cols)
    if eval_split <= 0:
        return {"train": cols, "eval": {f: [] for f in cols}}
    n_eval = max(1, round(n * eval_split))
    if n_eval >= n:
        raise DataError(f"data.eval_split: {eval_split} of {n} documents leaves none to train on")
    held = set(_perm(n, seed)[:n_eval])
    return {"train": _take(cols, (i for i in range(n) if i not in held)),
            "eval": _take(cols, sorted(held))}


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None


def _missing(path, fields, found) -> DataError:
    names = ", ".join(map(str, found)) or "nothing"
    return DataError(f"{path}: no field {', '.join(repr(f) for f in fields)} (see data.text_field, "
                     f"prompt_field, response_field, label_field); found: {names}")


def _read_file(path: Path, cfg: DataConfig, fields: list[str]) -> dict[str, list]:
    if path.suffix == ".txt":
        if fields[1:]:
            raise DataError(f"{path}: .txt files hold only text; pipeline {cfg.pipeline} needs fields "
                            f"{', '.join(fields)} (use .jsonl, .csv or .parquet)")
        text = _read_text(path)
        return {fields[0]: [text] if cfg.txt_document == "file" else _paragraphs(text)}
    if path.suffix in (".jsonl", ".json"):
        return _read_json(path, fields)
    import pyarrow

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except pyarrow.ArrowInvalid as e:
        msg = str(e).splitlines()[0][:160]
        if "UTF8" in msg or "utf8" in msg or "UTF-8" in msg:
            _read_text(path)  # names the byte offset
        raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({msg})") from None
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise _missing(path, missing, table.column_names)
    return {f: table.column(f).to_pylist() for f in fields}


def _read_json(path: Path, fields: list[str]) -> dict[str, list]:
    text = _read_text(path)
    cols: dict[str, list] = {f: [] for f in fields}
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        numbered = enumerate(rows, start=1)
        where = "row"
    else:
        numbered = ((n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip())
        where = "line"
    for n, row in numbered:
        if isinstance(row, str):
            try:
                row = json.loads(row)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where} {n}: expected a JSON object, got {type(row).__name__}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise _missing(f"{path}: {where} {n}", missing, row)
        for f in fields:
            cols[f].append(row[f])
    return cols


def _paragraphs(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


# ---- datasets: save_to_disk folders and the hub ------------------------------------------------------
def _hub_id(cfg: DataConfig) -> str:
    s = _sources(cfg)[0]
    return s[3:] if s.startswith("hf:") else s


def _load_datasets(cfg: DataConfig, k: str, fields: list[str]) -> dict[str, dict]:
    import datasets

    if k == "disk":
        try:
            ds = datasets.load_from_disk(_sources(cfg)[0])
        except Exception as e:
            raise DataError(f"data.source: {_sources(cfg)[0]}: cannot load a saved dataset "
                            f"({str(e).splitlines()[0][:120]})") from None
    else:
        hub = _hub_id(cfg)
        try:
            ds = datasets.load_dataset(hub, cfg.hub_config, revision=cfg.hub_revision)
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise DataError(f"data.source: no local path {hub!r}, and cannot load it as a hub dataset (config "
                            f"{cfg.hub_config}, revision {cfg.hub_revision}): {first}; without network, save a "
                            f"local copy once with "
                            f"datasets.load_dataset({hub!r}).save_to_disk('DIR') and set data.source: DIR, or "
                            f"export it to .jsonl/.parquet files") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({cfg.train_split_name: ds})
    if cfg.train_split_name not in ds:
        raise DataError(f"data.train_split_name: {cfg.train_split_name!r} is not a split of "
                        f"{describe(cfg)!r}; found: {', '.join(ds)}")
    eval_names = [cfg.eval_split_name] if cfg.eval_split_name else list(EVAL_SPLIT_NAMES)
    if cfg.eval_split_name and cfg.eval_split_name not in ds:
        raise DataError(f"data.eval_split_name: {cfg.eval_split_name!r} is not a split of "
                        f"{describe(cfg)!r}; found: {', '.join(ds)}")
    out = {}
    for split, name in [("train", cfg.train_split_name)] + \
            [("eval", next((n for n in eval_names if n in ds), None))]:
        if name is None:
            continue
        d = ds[name]
        missing = [f for f in fields if f not in d.column_names]
        if missing:
            raise _missing(f"{describe(cfg)} split {name}", missing, d.column_names)
        out[split] = {f: d[f] for f in fields}
    return out
