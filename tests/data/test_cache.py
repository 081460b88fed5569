"""The data cache: what changes the key, atomicity under SIGKILL, two concurrent preparations, the CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rafale.data.prepare import prepare
from rafale.data.tokenizer import train_tokenizer
from tests.data.conftest import data_cfg, sentences, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(sentences(80)))
    return tmp_path / "a.txt"


def key(**kw):
    return prepare(data_cfg(**kw)).key


def test_hit_miss_matrix(tmp_path, corpus):
    base = dict(source=str(corpus))
    first = prepare(data_cfg(**base))
    assert not first.reused
    again = prepare(data_cfg(**base, train_batch_size=3, eval_batch_size=5, mlm_probability=0.3))
    assert again.reused and again.key == first.key and again.path == first.path
    tok = train_tokenizer(sentences(50, seed=9), "bpe", 280, 1, ["<|endoftext|>", "<|pad|>"])
    tok.save(str(tmp_path / "tok.json"))
    changed = {
        "block size": dict(block_size=8),
        "split": dict(eval_split=0.2),
        "seed": dict(seed=5),
        "tokenizer settings": dict(tokenizer={"train": {"vocab_size": 290, "min_frequency": 1}}),
        "tokenizer file": dict(tokenizer={"path": str(tmp_path / "tok.json")}),
        "pipeline": dict(pipeline="mlm", tokenizer={"train": {"type": "wordpiece", "vocab_size": 300,
                                                              "min_frequency": 1}}),
        "text mode": dict(txt_document="paragraph", max_documents=70),
    }
    keys = {first.key}
    for what, kw in changed.items():
        k = key(**{**base, **kw})
        assert k not in keys, what
        keys.add(k)
    os.utime(corpus, ns=(1, 1))  # same bytes, new mtime: a miss by default, a hit by content
    assert key(**base) not in keys
    c1 = key(**base, fingerprint="content")
    os.utime(corpus, ns=(2, 2))
    assert key(**base, fingerprint="content") == c1


def test_meta_and_readable_name(corpus):
    data = prepare(data_cfg(source=str(corpus)))
    assert data.path.name.startswith("a-txt-bpe300-len16-")
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["data_config"]["source"] == str(corpus) and meta["splits"]["train"]["tokens"] > 0
    assert meta["tokenizer"]["eos_id"] == data.tokenizer.eos_id


def test_cache_hit_first_batch_is_fast(corpus):
    prepare(data_cfg(source=str(corpus)))
    t0 = time.perf_counter()
    data = prepare(data_cfg(source=str(corpus)))
    data.collator()([data.dataset("train")[i] for i in range(4)])
    assert data.reused and time.perf_counter() - t0 < 0.5


def _cli(tmp_path, cache_dir, source, extra=(), **popen):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""
        data:
          source: {source}
          tokenizer: {{path: {tmp_path / 'tok.json'}}}
          block_size: 64
    """))
    env = {**os.environ, "RAFALE_CACHE": str(cache_dir), "DATA": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rafale", "run", "-c", str(cfg), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _big_corpus(tmp_path, mb: float):
    docs = sentences(2000, seed=1, words=40)
    n = int(mb * 1e6 / sum(len(d) + 2 for d in docs)) + 1
    (tmp_path / "big.txt").write_text("\n\n".join(docs * n))
    train_tokenizer(docs, "bpe", 300, 1, ["<|endoftext|>", "<|pad|>"]).save(str(tmp_path / "tok.json"))
    return tmp_path / "big.txt"


def _entries(cache_dir):
    d = cache_dir / "data"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def test_sigkill_mid_preparation_leaves_nothing_valid(tmp_path, cache_dir):
    big = _big_corpus(tmp_path, 8)
    proc = _cli(tmp_path, cache_dir, big)
    deadline = time.time() + 60
    while time.time() < deadline and not list((cache_dir / "data").glob(".*.tmp-*")):
        time.sleep(0.05)
    assert list((cache_dir / "data").glob(".*.tmp-*")), proc.communicate()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _entries(cache_dir) == []
    data = prepare(data_cfg(source=str(big), tokenizer={"path": str(tmp_path / "tok.json")}, block_size=64))
    assert not data.reused and len(data.dataset("train")) > 0
    assert not list((cache_dir / "data").glob(".*.tmp-*"))


def test_two_concurrent_preparations_make_one_entry(tmp_path, cache_dir):
    big = _big_corpus(tmp_path, 3)
    procs = [_cli(tmp_path, cache_dir, big) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(_entries(cache_dir)) == 1
    said = "".join(o for o, _ in outs)
    assert said.count("prepared ") == 1 and said.count("reused cache") == 1


def test_bad_input_is_one_line_exit_2_and_no_entry(tmp_path, cache_dir):
    """One subprocess for the CLI's side (the messages themselves are tested in-process)."""
    (tmp_path / "tok.json").write_text("{broken")
    (tmp_path / "a.txt").write_text("hello world\n")
    p = _cli(tmp_path, cache_dir, tmp_path / "a.txt")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and _entries(cache_dir) == []
    assert err.startswith("error: ") and "tok.json: not a valid tokenizer.json" in err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_cache_list_and_clear(corpus, cache_dir):
    from rafale.data.cache import clear, entries

    data = prepare(data_cfg(source=str(corpus)))
    listed = {e["name"]: e for e in entries()}
    assert data.path.name in listed and listed[data.path.name]["tokens"]["train"] > 0
    assert clear(data.path.name) == [data.path] and not data.path.exists()
    clear()
    assert entries() == []
