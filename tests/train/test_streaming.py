"""data.streaming against the cached path, on local JSONL files read by `datasets`' own streaming.

In this process: the same blocks as the cached path, an exact position at any block (with the shuffle
buffer), disjoint shares for two processes, the eval documents never trained on, a corrupt line named.
End to end (real `python -m rafale run` processes): SIGKILL after a checkpoint, then resume, gives the
losses of an uninterrupted run; a source changed since the checkpoint is refused (streamed or cached).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from rafale.config import config_from_dict
from rafale.data.prepare import prepare
from rafale.data.sources import fingerprint_change
from rafale.data.streaming import StreamingBlocks
from rafale.data.synthetic import load_synthetic
from rafale.errors import DataError

from train_helpers import kill_at_first_checkpoint, run_rafale, train_losses

BLOCK = 32


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two train files and a validation file; each document names itself, so blocks can be traced back."""
    d = tmp_path_factory.mktemp("corpus")
    docs = [f"doc{i} " + s for i, s in enumerate(load_synthetic("stories", n=300, seed=1))]
    write_jsonl(d / "part0.jsonl", docs[:150])
    write_jsonl(d / "part1.jsonl", docs[150:280])
    write_jsonl(d / "validation.jsonl", docs[280:])
    return d, docs


def data_cfg(source, **data):
    return config_from_dict({"data": {"source": source, "block_size": BLOCK, "stream_batch": 16,
                                      "tokenizer": {"train": {"vocab_size": 400}}, **data}}).data


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    os.environ["RAFALE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        d, _ = corpus
        files = [str(d / "part0.jsonl"), str(d / "part1.jsonl"), str(d / "validation.jsonl")]
        cached = prepare(data_cfg(files))
        stream = prepare(data_cfg(files, streaming=True, shuffle_buffer=None), tokenizer=cached.tokenizer)
        yield cached, stream
    finally:
        os.environ.pop("RAFALE_CACHE")


def test_stream_gives_the_cached_blocks_in_order(prepared):
    cached, stream = prepared
    train, blocks = cached.dataset("train"), list(stream.dataset("train"))
    assert len(blocks) == len(train) > 30  # many batches of 16 documents, remainders carried across them
    for i, block in enumerate(blocks):
        assert torch.equal(block, train[i]), f"block {i}"
    ev_cached, ev_stream = cached.dataset("eval"), stream.dataset("eval")  # the source's validation file
    assert len(ev_stream) == len(ev_cached) and all(torch.equal(ev_stream[i], ev_cached[i])
                                                    for i in range(len(ev_cached)))



def test_files_behind_a_url_stream_like_local_ones(prepared, corpus, tmp_path):
    """fsspec's in-memory filesystem stands in for a bucket: the same files behind memory:// URLs (a glob and
    a file) give the same blocks and the same held-out split, with sizes in the fingerprint."""
    import fsspec

    from rafale.data import sources

    cached, _ = prepared
    d, _ = corpus
    fs = fsspec.filesystem("memory")
    for name in ("part0.jsonl", "part1.jsonl", "validation.jsonl"):
        fs.pipe(f"/bucket/{tmp_path.name}/{name}", (d / name).read_bytes())
    urls = [f"memory://bucket/{tmp_path.name}/part*.jsonl", f"memory://bucket/{tmp_path.name}/validation.jsonl"]
    cfg = data_cfg(urls, streaming=True, shuffle_buffer=None, storage_options={})
    assert sources.kind(cfg) == "remote"
    fp = sources.fingerprint(cfg)
    assert [size for _, size in fp["files"]] == [(d / n).stat().st_size for n in
                                                  ("part0.jsonl", "part1.jsonl", "validation.jsonl")]
    stream = prepare(cfg, tokenizer=cached.tokenizer)
    train, blocks = cached.dataset("train"), list(stream.dataset("train"))
    assert len(blocks) == len(train) and all(torch.equal(b, train[i]) for i, b in enumerate(blocks))
    assert len(stream.dataset("eval")) == len(cached.dataset("eval"))
    with pytest.raises(DataError, match="holds no"):
        sources.fingerprint(data_cfg(["memory://bucket/nothing-here/*.jsonl"], streaming=True))
    with pytest.raises(DataError, match="data.streaming: true"):
        sources.fingerprint(data_cfg(urls))

def shuffled(stream, **kw):
    return StreamingBlocks(stream.cfg.__class__(**{**vars(stream.cfg), "shuffle_buffer": 40, **kw}),
                           stream.tokenizer)


def test_a_loaded_position_gives_exactly_the_rest(prepared):
    _, stream = prepared
    full = list(shuffled(stream))
    train = prepared[0].dataset("train")
    order = [train[i] for i in range(len(train))]
    assert any(not torch.equal(a, b) for a, b in zip(full, order))  # the buffer does shuffle
    assert sorted(map(tuple, map(torch.Tensor.tolist, full))) == sorted(map(tuple, map(torch.Tensor.tolist, order)))
    for k in (0, 1, 17, len(full) - 45, len(full) - 1, len(full)):  # in the first batch, later, while draining
        ds = shuffled(stream)
        it = iter(ds)
        head = [next(it) for _ in range(k)]
        state = ds.state_dict(k, True)
        again = shuffled(stream)
        again.load_state_dict(state)
        rest = list(again)
        assert len(head) + len(rest) == len(full)
        assert all(torch.equal(a, b) for a, b in zip(head + rest, full)), f"resumed after {k} blocks"
    other = list(shuffled(stream, seed=1))  # another seed, another order
    assert any(not torch.equal(a, b) for a, b in zip(other, full))


def packed(tok, docs) -> torch.Tensor:
    """What packing `docs` gives, by the cached path's own functions: (blocks, BLOCK)."""
    from rafale.data.causal_lm import pack, tokenize_flat, token_dtype

    tokens = tokenize_flat(docs, tok, tok.eos_id, token_dtype(tok))
    return torch.from_numpy(pack(tokens[:0], tokens, BLOCK)[0].astype("int64"))


def test_two_processes_take_disjoint_shares_of_the_documents(prepared, corpus):
    _, stream = prepared
    _, docs = corpus
    train_docs = docs[:280]  # part0 and part1, in order; validation.jsonl is the eval split
    for rank in (0, 1):  # each packs every other document: the shares are disjoint and cover them all
        share = torch.stack(list(StreamingBlocks(stream.cfg, stream.tokenizer, rank, 2, loop=False)))
        assert torch.equal(share, packed(stream.tokenizer, train_docs[rank::2])), f"rank {rank}"


def test_eval_documents_are_held_out_of_the_stream(corpus, prepared):
    d, docs = corpus
    tok = prepared[0].tokenizer
    cfg = data_cfg([str(d / "part0.jsonl"), str(d / "part1.jsonl")], streaming=True, eval_documents=10,
                   shuffle_buffer=None)
    assert torch.equal(torch.stack(list(StreamingBlocks(cfg, tok))), packed(tok, docs[10:280]))


def test_a_corrupt_line_is_named_and_fixing_it_is_no_source_change(tmp_path, prepared):
    tok = prepared[0].tokenizer
    good = [json.dumps({"text": f"story {i} " * 20}) for i in range(60)]
    write = lambda lines: (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")  # noqa: E731
    write(good[:40] + ['{"text": "cut sho'] + good[41:])
    write_jsonl(tmp_path / "a.jsonl", ["fine " * 30] * 50)
    cfg = data_cfg([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], streaming=True, eval_documents=0)
    blocks = iter(StreamingBlocks(cfg, tok))
    with pytest.raises(DataError, match=r"b\.jsonl:41: invalid JSON"):
        for _ in blocks:
            pass
    from rafale.data.sources import fingerprint

    before = fingerprint(cfg)
    write(good)
    after = fingerprint(cfg)
    assert "b.jsonl changed size" in fingerprint_change(before, after)
    assert fingerprint_change(before, after, allowed=str(tmp_path / "b.jsonl")) is None


@pytest.mark.parametrize("streaming", [True, False])
def test_resuming_after_the_source_changed_is_refused(tmp_path, corpus, streaming):
    from rafale.data.sources import fingerprint
    from rafale.errors import RunStateError
    from rafale.train.plan import check_same_source

    d, _ = corpus
    (tmp_path / "a.jsonl").write_bytes((d / "part0.jsonl").read_bytes())
    cfg = config_from_dict({"run": {"max_duration": "10ba"}, "data": {"source": str(tmp_path / "a.jsonl"),
                                                                       "streaming": streaming}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "running", "data_fingerprint": fingerprint(cfg.data)}))
    os.utime(tmp_path / "a.jsonl")  # touched, not changed
    check_same_source(run, fingerprint(cfg.data))  # the same source: fine
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more story"}) + "\n")
    with pytest.raises(RunStateError, match=r"a\.jsonl changed size .* FORCE=1"):
        check_same_source(run, fingerprint(cfg.data))


# ---- end to end --------------------------------------------------------------------------------------
STREAM = ["data.streaming=true", "data.stream_batch=40", "data.shuffle_buffer=16", "data.eval_documents=20",
          "run.max_duration=12ba", "run.save_interval=3ba", "run.eval_interval=0ba"]


def test_killed_streaming_run_resumes_exactly(rafale_env, corpus, tmp_path):
    d, _ = corpus
    args = [f"data.source={d}", *STREAM]  # part0, part1 and the validation file (eval)
    run_rafale(rafale_env, tmp_path / "ref", *args)
    ref = train_losses(tmp_path / "ref" / "quickstart")
    assert sorted(ref) == list(range(1, 13))

    run_dir = tmp_path / "out" / "quickstart"
    killed_ckpt = kill_at_first_checkpoint(rafale_env, tmp_path / "out", *args)
    assert max(train_losses(run_dir)) < 12, "not killed part way; make the run longer"

    p = run_rafale(rafale_env, tmp_path / "out", *args)
    assert f"without replaying {killed_ckpt} batches" in p.stdout
    resumed = train_losses(run_dir)
    assert sorted(resumed) == list(range(1, 13))
    for step in ref:
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), f"step {step}"
