"""Data preparation speed and memory: rafale's pipeline next to a naive one and the tokenizer's own limit.

    python benchmarks/datapipe.py            # ~50 MB of English text, a few minutes on 2 cores
    python benchmarks/datapipe.py --mb 5     # a quicker run

Prints one JSON line. Three ways to turn the same corpus (stories from rafale.data.synthetic, several
seeds, one paragraph per document, written to a temporary .txt) into tokens with the same 8k byte-level
BPE, measured side by side in one run because the machine is noisy (compare the ratios):

  (a) naive:  datasets `map` with one `encode` per example, then batched maps that concatenate with
              `sum(list_of_lists, [])` (the usual tutorial code);
  (b) limit:  the tokenizer's `encode_batch_fast` over the whole corpus in batches, results discarded
              (run just before and just after (c), averaged);
  (c) rafale: `prepare()` end to end (read the file, split, tokenize, concatenate, chunk, write the
              cache entry), in a fresh child process so its peak RSS is its own; then a second
              `prepare()` (a cache hit) and the time to its first batch.

Targets: c/b >= 0.85, peak RSS of (c) < 1.5 GB, cache hit to first batch < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_corpus(path: Path, mb: float) -> int:
    from rafale.data.synthetic import generate_stories

    written, seed = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            for story in generate_stories(5000, seed=seed):
                f.write(story.replace("\n\n", "\n") + "\n\n")
                written += len(story) + 2
            seed += 1
    return written


def train_tok(corpus: Path, out: Path) -> None:
    from rafale.data.sources import _paragraphs
    from rafale.data.tokenizer import train_tokenizer

    docs = _paragraphs(corpus.read_text(encoding="utf-8")[: 10_000_000])
    train_tokenizer(docs, "bpe", 8192, 2, ["<|endoftext|>", "<|pad|>"]).save(str(out))


def naive(docs: list[str], tok_path: Path, block: int) -> dict:
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    tok = Tokenizer.from_file(str(tok_path))
    eos = tok.token_to_id("<|endoftext|>")
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_dict({"text": docs})
    ds = ds.map(lambda ex: {"ids": tok.encode(ex["text"], add_special_tokens=False).ids + [eos]},
                remove_columns=["text"], keep_in_memory=True)

    def group(batch):
        flat = sum(batch["ids"], [])
        n = len(flat) // block * block
        return {"input_ids": [flat[i : i + block] for i in range(0, n, block)]}

    ds = ds.map(group, batched=True, batch_size=1000, remove_columns=["ids"], keep_in_memory=True)
    seconds = time.perf_counter() - t0
    return {"tokens": len(ds) * block, "seconds": seconds}


def limit(docs: list[str], tok_path: Path) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(docs), 2048):
        n += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(docs[i : i + 2048], add_special_tokens=False))
    return {"tokens": n, "seconds": time.perf_counter() - t0}


def rafale_child(corpus: str, tok_path: str, block: int) -> None:
    """Runs in its own process: prepare, then reuse, and report as JSON on stdout."""
    from rich.console import Console

    import rafale.data.causal_lm  # noqa: F401  (imports torch: a start-up cost, not preparation)
    from rafale.config import config_from_dict
    from rafale.data.prepare import prepare

    cfg = config_from_dict({"data": {"source": corpus, "tokenizer": {"path": tok_path}, "block_size": block,
                                     "eval_split": 0.005}}).data
    quiet = Console(quiet=True)
    t0 = time.perf_counter()
    data = prepare(cfg, quiet)
    seconds = time.perf_counter() - t0
    tokens = sum(s["tokens"] for s in data.meta["splits"].values())
    t1 = time.perf_counter()
    hit = prepare(cfg, quiet)
    train = hit.dataset("train")
    hit.collator()([train[i] for i in range(32)])
    first_batch = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": tokens, "seconds": seconds, "peak_rss_mb": rss, "hit_first_batch_s": first_batch,
                      "reused": hit.reused}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return rafale_child(args.child[0], args.child[1], args.block)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, tok_path = tmp / "corpus.txt", tmp / "tokenizer.json"
        n_bytes = make_corpus(corpus, args.mb)
        train_tok(corpus, tok_path)
        from rafale.data.sources import _paragraphs

        docs = _paragraphs(corpus.read_text(encoding="utf-8"))
        b1 = limit(docs, tok_path)  # (b) before and after (c): the load on a shared machine drifts
        env = {**os.environ, "RAFALE_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, __file__, "--block", str(args.block), "--child", str(corpus),
                              str(tok_path)], env=env, capture_output=True, text=True, check=True)
        c = json.loads(out.stdout.strip().splitlines()[-1])
        b2 = limit(docs, tok_path)
        b = {"tokens": b1["tokens"] + b2["tokens"], "seconds": b1["seconds"] + b2["seconds"]}
        a = naive(docs, tok_path, args.block)

    tps = lambda r: r["tokens"] / r["seconds"]
    print(json.dumps({
        "benchmark": "datapipe", "mb": round(n_bytes / 1e6, 1), "documents": len(docs), "tokens": b1["tokens"],
        "naive_tok_s": round(tps(a)), "encode_batch_tok_s": round(tps(b)), "rafale_tok_s": round(tps(c)),
        "rafale_vs_encode_batch": round(tps(c) / tps(b), 3), "rafale_vs_naive": round(tps(c) / tps(a), 2),
        "rafale_peak_rss_mb": round(c["peak_rss_mb"]), "cache_hit_first_batch_s": round(c["hit_first_batch_s"], 4),
    }))


if __name__ == "__main__":
    main()
