"""Training step speed on this CPU: rafale through Composer vs a plain loop vs transformers, one JSON line.

A pythia-14m-shaped model (hidden 128, 6 layers, 4 heads, seq 256, batch 8, fp32, fused AdamW) at vocab
8192 and 50304, three ways taking turns step by step, each timed per batch (median after warm-up):

  composer     rafale's own path: a real Composer Trainer (rafale's trainer builder), fit one batch at a
               time, each batch timed from a callback between BATCH_START and BATCH_END
  plain        a plain PyTorch loop over the same rafale model and loss
  hf           transformers' GPTNeoXForCausalLM of the same shape, in a plain loop (loss from labels)

Each row is measured twice, in fresh subprocesses: with the glibc malloc tuning the CLI applies at start
(rafale.cli._tune_malloc) and without it (RAFALE_MALLOC=0). MFU uses rafale.train.mfu's FLOPs per token
against a measured fp32 1024x1024 matmul peak.

    PYTHONPATH=$PWD python benchmarks/train.py [--steps 6] [--warmup 2] [--vocabs 8192,50304]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SEQ, BATCH = 256, 8


def _rafale_model(vocab: int):
    import torch

    from rafale.models import registry
    from rafale.models.decoder import Decoder

    torch.manual_seed(0)
    return Decoder(registry.get_config("pythia-14m", vocab_size=vocab))


def _batches(vocab: int, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (BATCH, SEQ), generator=g) for _ in range(n)]


def plain_step(vocab: int):
    """A plain PyTorch loop over rafale's model and chunked loss: returns a function doing one step."""
    import torch

    from rafale.train.loss import chunked_cross_entropy, shift_targets
    from rafale.train.trainer import param_groups

    model = _rafale_model(vocab)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, fused=True)

    def step(ids):
        loss = chunked_cross_entropy(model.hidden_states(ids), model.lm_head.weight, shift_targets(ids))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(vocab: int):
    """transformers' GPTNeoXForCausalLM of the same shape in a plain loop."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)

    def step(ids):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def composer_step(vocab: int, n_batches: int):
    """rafale's Composer Trainer; each call fits one more batch, timed by a callback around the batch."""
    import torch
    from composer import Trainer
    from composer.core import Callback

    from rafale.config import config_from_dict
    from rafale.data import causal_lm
    from rafale.train.plan import make_plan
    from rafale.train.trainer import trainer_kwargs

    class Blocks(torch.utils.data.Dataset):
        def __init__(self, batches):
            self.rows = torch.cat(batches)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]  # rafale's collate stacks token blocks

    class Timer(Callback):
        def __init__(self):
            self.last, self._t = 0.0, 0.0

        def batch_start(self, state, logger):
            self._t = time.perf_counter()

        def batch_end(self, state, logger):
            self.last = time.perf_counter() - self._t

    cfg = config_from_dict({
        "run": {"max_duration": f"{n_batches}ba", "precision": "fp32", "device": "cpu", "save_interval": "1000ep"},
        "optim": {"name": "adamw", "schedule": "constant", "warmup": "0ba", "clip_norm": 0},
        "model": {"config": "pythia-14m", "overrides": {"vocab_size": vocab}},
        "data": {"block_size": SEQ, "train_batch_size": BATCH, "tokenizer": {"train": {"vocab_size": min(vocab, 4096)}}},
    })
    timer = Timer()
    plan = make_plan(cfg, debug=True, log=lambda *a, **k: None)  # no run directory; the tokenizer is cached
    loader = torch.utils.data.DataLoader(Blocks(_batches(vocab, n_batches)), batch_size=BATCH, shuffle=True,
                                         drop_last=True, collate_fn=causal_lm.collate)
    trainer = Trainer(**trainer_kwargs(plan, _rafale_model(vocab), loader, None, callbacks=[timer]))

    def step(ids):  # the batch comes from the trainer's own dataloader (same shape, same generator)
        trainer.fit(duration="1ba")
        return timer.last

    return step


def worker(args) -> dict:
    """One process, one malloc setting. The three ways take turns step by step (and a peak measurement
    between rounds), so a load change on a shared machine hits all of them alike; medians are reported."""
    from rafale.cli import _tune_malloc
    from rafale.train.mfu import flops_per_token, measure_cpu_peak

    _tune_malloc()  # a no-op under RAFALE_MALLOC=0
    out, peaks = {}, []
    for vocab in args.vocabs:
        fpt = flops_per_token(_rafale_model(vocab), SEQ)
        n = args.steps + args.warmup
        ways = {"composer": composer_step(vocab, n), "plain": plain_step(vocab), "hf": hf_step(vocab)}
        times = {w: [] for w in ways}
        for i, ids in enumerate(_batches(vocab, n)):
            for way, step in ways.items():
                t = time.perf_counter()
                inner = step(ids)
                times[way].append(inner if inner is not None else time.perf_counter() - t)
            peaks.append(measure_cpu_peak(reps=3))
        peak = statistics.median(peaks)
        for way in ways:
            ms = statistics.median(times[way][args.warmup:]) * 1e3
            out[f"{way}_{vocab}_ms"] = round(ms, 1)
            out[f"{way}_{vocab}_tok_s"] = round(BATCH * SEQ / ms * 1e3)
            out[f"{way}_{vocab}_mfu"] = round(BATCH * SEQ / ms * 1e3 * fpt / peak, 3)
    out["peak_gflops"] = round(statistics.median(peaks) / 1e9, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocabs", type=lambda s: [int(v) for v in s.split(",")], default=[8192, 50304])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    result = {"benchmark": "train", "model": "pythia-14m shape", "seq": SEQ, "batch": BATCH, "threads": os.cpu_count()}
    for label, flag in (("tuned", "1"), ("untuned", "0")):
        cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--vocabs", ",".join(map(str, args.vocabs))]
        p = subprocess.run(cmd, env={**os.environ, "RAFALE_MALLOC": flag}, capture_output=True, text=True, check=True)
        result[label] = json.loads(p.stdout.strip().splitlines()[-1])
    t = result["tuned"]
    for v in args.vocabs:
        result[f"ratio_{v}"] = {
            "composer_vs_plain": round(t[f"plain_{v}_ms"] / t[f"composer_{v}_ms"], 3),
            "composer_vs_hf": round(t[f"hf_{v}_ms"] / t[f"composer_{v}_ms"], 3),  # both with the malloc tuning
            # rafale as its CLI runs (tuned) against transformers' loop as a user runs it (glibc defaults)
            "composer_vs_hf_default_malloc": round(result["untuned"][f"hf_{v}_ms"] / t[f"composer_{v}_ms"], 3),
            "malloc_tuning_composer": round(result["untuned"][f"composer_{v}_ms"] / t[f"composer_{v}_ms"], 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
