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


# ---- damaged entries: found on reuse and rebuilt; `rafale cache verify` -------------------------------
WORDPIECE = {"train": {"type": "wordpiece", "vocab_size": 300, "min_frequency": 1}}
PIPELINES = {"causal_lm": {}, "mlm": dict(tokenizer=WORDPIECE), "sft": dict(block_size=24),
             "classification": dict(tokenizer=WORDPIECE, block_size=40)}


def pipeline_cfg(tmp_path, pipeline: str):
    rows = [{"text": s, "prompt": s[:20], "generation": s[20:], "label": i % 2} for i, s in enumerate(sentences(80))]
    return data_cfg(pipeline=pipeline, source=str(write_jsonl(tmp_path / "a.jsonl", rows)), **PIPELINES[pipeline])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_truncated_file_is_reported_and_the_entry_rebuilt(tmp_path, capsys, pipeline):
    from rafale.data.prepare import damage, pipeline_module

    cfg = pipeline_cfg(tmp_path, pipeline)
    first = prepare(cfg)
    name, size = next(iter(pipeline_module(pipeline).file_sizes(first.path, first.meta).items()))  # a train file
    os.truncate(first.path / name, size // 2)  # a full disk, a copy gone wrong
    capsys.readouterr()
    again = prepare(cfg)
    said = capsys.readouterr().out
    assert f"damaged cache entry {first.path}: {name} has {size // 2:,} bytes where meta.json implies {size:,}" in said
    assert not again.reused and again.path == first.path and damage(again.path, hashes=True) is None
    assert again.meta["sha256"] == first.meta["sha256"]  # the same bytes as before the damage
    assert prepare(cfg).reused


@pytest.mark.parametrize("harm, said", [(lambda meta: meta.unlink(), "meta.json is missing"),
                                        (lambda meta: meta.write_text("{"), "meta.json cannot be read")])
def test_a_missing_or_unreadable_meta_json_is_damage(corpus, capsys, harm, said):
    first = prepare(data_cfg(source=str(corpus)))
    harm(first.path / "meta.json")
    capsys.readouterr()
    again = prepare(data_cfg(source=str(corpus)))
    assert f"damaged cache entry {first.path}: {said}" in capsys.readouterr().out and not again.reused


def test_a_failed_rebuild_leaves_the_damaged_entry_as_it_was(corpus, cache_dir, monkeypatch):
    from rafale.data import causal_lm

    first = prepare(data_cfg(source=str(corpus)))
    os.truncate(first.path / "train.bin", 10)

    def build(*args):
        raise KeyboardInterrupt  # Ctrl-C half way through the rebuild

    monkeypatch.setattr(causal_lm, "build", build)
    with pytest.raises(KeyboardInterrupt):
        prepare(data_cfg(source=str(corpus)))
    assert (first.path / "train.bin").stat().st_size == 10 and _entries(cache_dir) == [first.path.name]
    assert not list((cache_dir / "data").glob(".*.tmp-*"))


def _cache_cli(cache_dir, *args):
    env = {**os.environ, "RAFALE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "rafale", "cache", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cache_verify_cli(corpus, cache_dir):
    old = prepare(data_cfg(source=str(corpus)))
    meta = json.loads((old.path / "meta.json").read_text())
    del meta["sha256"]  # as an entry built before hashes were recorded
    (old.path / "meta.json").write_text(json.dumps(meta))
    new = prepare(data_cfg(source=str(corpus), block_size=8))
    out = _cache_cli(cache_dir, "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"{old.path.name}: ok (no recorded hashes; size checks only)" in lines and f"{new.path.name}: ok" in lines
    assert len(lines) == 3  # and the trained tokenizer's entry

    with open(new.path / "train.bin", "r+b") as f:  # same size, other bytes: only the hash tells
        first_byte = f.read(1)
        f.seek(0)
        f.write(bytes([first_byte[0] ^ 1]))
    out = _cache_cli(cache_dir, "verify")
    assert out.returncode == 2
    assert (f"{new.path.name}: damaged: train.bin differs from the sha256 recorded when it was built; remove it "
            f"with `rafale cache clear {new.path.name}`, or let the next run that uses it rebuild it") in out.stdout

    out = _cache_cli(cache_dir, "verify", old.path.name)
    assert out.returncode == 0 and out.stdout.count("\n") == 1
    out = _cache_cli(cache_dir, "verify", "nope")
    assert out.returncode == 2 and out.stderr.startswith("error: cache: no entry named 'nope'")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
