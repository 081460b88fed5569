"""Where documents come from: `data.source` -> a fingerprint (cheap) and a list of documents (loaded).

Supported sources:
- `synthetic:<name>`: the embedded corpus generator (rafale/data/synthetic.py), no network;
- a `.txt` file (documents separated by blank lines), a `.jsonl` file (one object per line, text in
  `data.text_field`), or a folder of such files (read in sorted order).

The fingerprint is what the cache key uses: for files their paths, sizes and modification times, for the
synthetic corpus its name, size, seed and the generator's source code. Computing it reads no text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rafale.config import DataConfig
from rafale.errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl")


def _files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data.source: {source!r} does not exist; expected synthetic:<name>, "
                        f"a .txt/.jsonl file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"data.source: folder {source!r} holds no .txt or .jsonl file")
        return files
    if path.suffix not in TEXT_SUFFIXES:
        raise DataError(f"data.source: {source!r} has suffix {path.suffix!r}; expected .txt or .jsonl")
    return [path]


def fingerprint(cfg: DataConfig) -> dict:
    if cfg.source.startswith("synthetic:"):
        from rafale.data import synthetic

        code = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]
        return {"source": cfg.source, "seed": cfg.seed, "max_documents": cfg.max_documents,
                "generator": code}
    files = _files(cfg.source)
    return {"source": cfg.source, "text_field": cfg.text_field, "max_documents": cfg.max_documents,
            "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def load_documents(cfg: DataConfig) -> list[str]:
    if cfg.source.startswith("synthetic:"):
        from rafale.data.synthetic import load_synthetic

        docs = load_synthetic(cfg.source.split(":", 1)[1], n=cfg.max_documents, seed=cfg.seed)
    else:
        docs = []
        for path in _files(cfg.source):
            docs.extend(_read_jsonl(path, cfg.text_field) if path.suffix == ".jsonl" else _read_txt(path))
            if cfg.max_documents and len(docs) >= cfg.max_documents:
                break
    docs = [d for d in docs if d.strip()][: cfg.max_documents]
    if not docs:
        raise DataError(f"data.source: {cfg.source!r} holds no text")
    return docs


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None


def _read_txt(path: Path) -> list[str]:
    blocks, current = [], []
    for line in _read_text(path).splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or field not in obj:
            found = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{path}:{n}: no field {field!r} (data.text_field); found: {found}")
        docs.append(str(obj[field]))
    return docs


def split_documents(docs: list[str], eval_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded fraction of documents (at least one when eval_split > 0)."""
    import random

    if eval_split <= 0:
        return docs, []
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * eval_split))
    if n_eval >= len(docs):
        raise DataError(f"data.eval_split: {eval_split} of {len(docs)} documents leaves none to train on")
    held = set(order[:n_eval])
    train = [d for i, d in enumerate(docs) if i not in held]
    return train, [docs[i] for i in sorted(held)]
