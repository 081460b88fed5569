"""The on-disk cache for prepared data and trained tokenizers.

Layout: `$RAFALE_CACHE` (default `~/.rafale_cache`) / <kind> / <readable-name>-<hash>/. The hash covers
exactly what changes the bytes inside (see `key_hash`); the readable part only helps a person browsing.

An entry is committed by renaming a finished temporary directory into place, so a reader sees either no
entry or a complete one; an exclusive lock file makes a second process wait for the first and then reuse
its result instead of building the same entry twice. An entry damaged later (a file cut short by a full
disk or a bad copy) is found by the caller's `check` and rebuilt the same way, replacing it once complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

from rafale.files import replace_dir

FORMAT_VERSION = 2  # bump when the bytes a pipeline writes change meaning


def cache_root() -> Path:
    return Path(os.environ.get("RAFALE_CACHE", Path.home() / ".rafale_cache")).expanduser()


def key_hash(parts: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[-limit:].strip("-") or "x"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def build_entry(final: Path, log=None, check: Callable[[Path], str | None] | None = None) -> Iterator[Path | None]:
    """Build a cache entry atomically.

    Yields None when `final` already exists and `check(final)` finds nothing wrong (it may have been built
    by another process while this one waited for the lock); otherwise yields an empty temporary directory
    to fill, which replaces `final` on success and is removed on any failure or interruption. `log(message)`
    hears about waiting for another process's lock and about a damaged entry being rebuilt.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.parent / f".{final.name}.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another process that is preparing {final}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            problem = check(final) if check is not None and final.exists() else None
            if final.exists() and problem is None:
                yield None
                return
            if problem is not None and log is not None:
                log(f"damaged cache entry {final}: {problem}; rebuilding it")
            for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed process
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
            tmp.mkdir()
            try:
                yield tmp
                replace_dir(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---- browsing: `rafale cache list` / `clear` / `verify` -----------------------------------------------
def entries() -> list[dict]:
    """Every finished entry: kind, name, path, size in bytes, tokens (data only), last used (mtime)."""
    out = []
    for kind in ("data", "tokenizers"):
        root = cache_root() / kind
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            tokens = None
            meta = path / "meta.json"
            if meta.is_file():
                try:
                    tokens = {s: v.get("tokens") for s, v in json.loads(meta.read_text())["splits"].items()}
                except (ValueError, KeyError):
                    pass
            out.append({"kind": kind, "name": path.name, "path": path, "bytes": size, "tokens": tokens,
                        "last_used": path.stat().st_mtime})
    return out


def find(name: str | None = None) -> list[Path]:
    """The entry called `name`, or every entry when None.

    Raises:
        DataError: no entry is called `name` (the message lists the entries there are).
    """
    from rafale.errors import DataError

    found = [e["path"] for e in entries() if name is None or e["name"] == name]
    if name is not None and not found:
        known = ", ".join(e["name"] for e in entries()) or "none"
        raise DataError(f"cache: no entry named {name!r} under {cache_root()}; entries: {known}")
    return found


def clear(name: str | None = None) -> list[Path]:
    """Remove the entry called `name` (or every entry when None), each under its lock; returns the paths."""
    found = find(name)
    for path in found:
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            trash = path.parent / f".{path.name}.tmp-clear-{os.getpid()}"
            os.rename(path, trash)  # gone at once for readers; then deleted
            shutil.rmtree(trash, ignore_errors=True)
    return found
