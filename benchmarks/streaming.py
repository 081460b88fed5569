"""Streaming against cached data: step time, peak memory as the corpus grows, and resuming far into a run.

    python benchmarks/streaming.py                   # 2 GB of JSONL (and a quarter of it), a few minutes+
    python benchmarks/streaming.py --gb 0.2 --steps 20 --resume-step 2000   # a quick check

Prints one JSON line. It writes a JSONL corpus of --gb gigabytes (the embedded story generator's text,
repeated with a numbered prefix per document, in 64 MB files; removed at the end) and a second one a
quarter that size, trains a BPE tokenizer once, then, each in a fresh child process so its peak RSS is its
own, trains a pythia-14m shape (seq 256, batch 8) for --steps steps:

  stream_<size>:  data.streaming (shuffle buffer on), nothing prepared;
  cached_<size>:  the cached path, after `prepare()` (its preparation time is reported apart).

Step time is the run's own train seconds over its steps (RunStats: batch start to batch end, so evaluation
and start-up are out, but the first batches' warm-up is in: use a few hundred steps). Resume: the time for a dataset to take a position --resume-step
batches in (load_state_dict, then the first batch), against the replay Composer would otherwise spend
(fetching every one of those batches through the DataLoader), both measured on the larger corpus.

Targets: stream step time within 10% of cached; peak RSS < 1.5 GB and flat across the two sizes; resume < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILE_BYTES = 64 * 1024 * 1024


def make_corpus(folder: Path, gb: float) -> int:
    """JSONL files of stories until `gb` gigabytes are written; returns the bytes."""
    from rafale.data.synthetic import generate_stories

    folder.mkdir(parents=True)
    chunk = [json.dumps({"text": s}) for s in generate_stories(4000, seed=0)]
    written, n, f = 0, 0, None
    while written < gb * 1e9:
        if f is None or f.tell() >= FILE_BYTES:
            f and f.close()
            f = open(folder / f"part{len(list(folder.iterdir())):05d}.jsonl", "w", encoding="utf-8")
        lines = "".join(f'{{"text": "{n + i}. ' + line[10:] + "\n" for i, line in enumerate(chunk))
        f.write(lines)
        written += len(lines)
        n += len(chunk)
    f.close()
    return written


def config(corpus: Path, tok: Path, out: Path, streaming: bool, steps: int):
    from rafale.config import load_config

    return load_config(ROOT / "configs" / "quickstart.yaml", [
        f"data.source={corpus}", f"data.streaming={str(streaming).lower()}", "data.tokenizer.train=null",
        f"data.tokenizer.path={tok}", "data.block_size=256", "data.train_batch_size=8", "data.eval_split=0",
        "data.eval_documents=0", "model.config=pythia-14m", f"run.max_duration={steps}ba", "run.eval_interval=0ba",
        f"run.save_interval={10 * steps}ba", "run.sample_tokens=0", "logging.loggers=[]", f"run.output_dir={out}",
        "run.name=bench", "optim.warmup=0ba"])


def child(args) -> None:
    """One measurement in this process: prints {train seconds, steps, peak RSS} as JSON."""
    from rafale.data.prepare import prepare
    from rafale.train.run import run

    cfg = config(Path(args.corpus), Path(args.tok), Path(args.out), args.child == "stream", args.steps)
    t0 = time.perf_counter()
    if args.child == "cached":
        prepare(cfg.data)
    prepared = time.perf_counter() - t0
    run(cfg)
    summary = json.loads((Path(args.out) / "bench" / "manifest.json").read_text())["summary"]
    print(json.dumps({"step_s": summary["train_seconds"] / max(summary["steps"], 1),
                      "tokens_per_second": summary["tokens_per_second"], "prepare_s": round(prepared, 2),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(mode: str, corpus: Path, tok: Path, work: Path, steps: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    p = subprocess.run([sys.executable, __file__, "--child", mode, "--corpus", str(corpus), "--tok", str(tok),
                        "--out", str(out), "--steps", str(steps)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise SystemExit(f"{mode} on {corpus} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def resume_times(corpus: Path, tok: Path, work: Path, step: int) -> dict:
    """Seconds to take a position `step` batches in, against replaying those batches, for both paths."""
    import torch

    from rafale.data.prepare import prepare
    from rafale.data.resume import Resumable, ResumableSampler
    from rafale.data.streaming import StreamingBlocks
    from rafale.train.trainer import dataloader

    collate = torch.stack
    out = {}
    cfg = config(corpus, tok, work, True, 1).data
    data = prepare(cfg, console=None)
    stream = StreamingBlocks(cfg, data.tokenizer)
    loader = torch.utils.data.DataLoader(stream, batch_size=8, collate_fn=collate, drop_last=True)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(step):  # what Composer's replay does: fetch every batch already seen
        next(it)
    out["stream_replay_s"] = round(time.perf_counter() - t0, 2)
    state = stream.state_dict(step * 8, True)
    t0 = time.perf_counter()
    again = StreamingBlocks(cfg, data.tokenizer)
    again.load_state_dict(state)
    first = next(iter(torch.utils.data.DataLoader(again, batch_size=8, collate_fn=collate)))
    out["stream_resume_s"] = round(time.perf_counter() - t0, 2)
    assert torch.equal(first, next(it)), "the resumed stream differs from the uninterrupted one"

    cached = prepare(config(corpus, tok, work, False, 1).data, console=None).dataset("train")
    loader = dataloader(cached, 8, shuffle=True, seed=0, collate=collate)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(step):
        next(it)
    out["cached_replay_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    again = dataloader(cached, 8, shuffle=True, seed=0, collate=collate)
    again.dataset.load_state_dict(loader.dataset.state_dict(step * 8, True))
    first = next(iter(again))
    out["cached_resume_s"] = round(time.perf_counter() - t0, 2)
    assert torch.equal(first, next(it)), "the resumed cached loader differs from the uninterrupted one"
    out["step"] = step
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0, help="the larger corpus, in GB of JSONL")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--resume-step", type=int, default=20_000)
    ap.add_argument("--child"), ap.add_argument("--corpus"), ap.add_argument("--tok"), ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    from rafale.data.tokenizer import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="rafale-stream-bench-"))
    os.environ["RAFALE_CACHE"] = str(work / "cache")
    try:
        sizes = {"large": args.gb, "small": args.gb / 4}
        corpora = {name: work / name for name in sizes}
        written = {name: make_corpus(corpora[name], gb) for name, gb in sizes.items()}
        docs = [json.loads(line)["text"] for line in
                open(sorted(corpora["small"].iterdir())[0], encoding="utf-8").readlines()[:20000]]
        tok = work / "tokenizer.json"
        train_tokenizer(docs, "bpe", 8192, 2, ["<|endoftext|>", "<|pad|>"]).save(str(tok))
        line = {"corpus_bytes": written, "steps": args.steps, "seq": 256, "batch": 8}
        for name in sizes:
            for mode in ("stream", "cached"):
                line[f"{mode}_{name}"] = measure(mode, corpora[name], tok, work, args.steps)
        line["stream_vs_cached_step_time"] = round(line["stream_large"]["step_s"] / line["cached_large"]["step_s"], 3)
        line["resume"] = resume_times(corpora["large"], tok, work, args.resume_step)
        print(json.dumps(line))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
