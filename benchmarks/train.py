"""Training step speed on this CPU: rafale through Composer vs a plain loop vs transformers, one JSON line.

A pythia-14m-shaped model (hidden 128, 6 layers, 4 heads, seq 256, batch 8, fused AdamW) at vocab 8192 and
50304, in fp32 and under bf16 autocast, three ways taking turns step by step, each timed per batch (median
after warm-up):

  composer     rafale's own path: a real Composer Trainer (rafale's trainer builder), fit one batch at a
               time, each batch timed from a callback between BATCH_START and BATCH_END
  plain        a plain PyTorch loop over the same rafale model and loss
  hf           transformers' GPTNeoXForCausalLM of the same shape, in a plain loop (loss from labels)

With --compile, a fourth way, composer_compiled, is rafale's path under run.compile true at the precision
`run.precision: auto` picks here: its first batch minus a steady one is the compile time, and
compile seconds / (eager step - compiled step) the steps after which compiling is faster overall.

Each row is measured with the glibc malloc tuning the CLI applies at start (rafale.cli._tune_malloc), and
the fp32 rows again in a fresh process without it (RAFALE_MALLOC=0): transformers' loop as a user runs it.
`default_vs_hf_default` is rafale as its CLI runs by default (tuned malloc, precision auto, eager at these
few steps) against transformers' plain loop at its defaults (fp32, glibc malloc). MFU uses rafale.train.mfu's
FLOPs per token against a measured 1024x1024 matmul peak of the precision in use.

    PYTHONPATH=$PWD python benchmarks/train.py [--steps 6] [--warmup 2] [--vocabs 8192,50304]
                                               [--precisions fp32,bf16] [--compile] [--threads N]
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
PRECISIONS = {"fp32": "fp32", "bf16": "amp_bf16"}  # benchmark name -> run.precision


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


def _autocast(precision: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def plain_step(vocab: int, precision: str):
    """A plain PyTorch loop over rafale's model and chunked loss: returns a function doing one step."""
    import torch

    from rafale.train.loss import chunked_cross_entropy, shift_targets
    from rafale.train.trainer import param_groups

    model = _rafale_model(vocab)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, fused=True)

    def step(ids):
        with _autocast(precision):
            loss = chunked_cross_entropy(model.hidden_states(ids), model.lm_head.weight, shift_targets(ids))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(vocab: int, precision: str):
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
        with _autocast(precision):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def composer_step(vocab: int, n_batches: int, precision: str, compile: bool = False):
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
        "run": {"max_duration": f"{n_batches}ba", "precision": PRECISIONS[precision], "device": "cpu",
                "save_interval": "1000ep", "compile": compile},
        "optim": {"name": "adamw", "schedule": "constant", "warmup": "0ba", "clip_norm": 0},
        "model": {"config": "pythia-14m", "overrides": {"vocab_size": vocab}},
        "data": {"block_size": SEQ, "train_batch_size": BATCH, "tokenizer": {"train": {"vocab_size": min(vocab, 4096)}}},
    })
    timer = Timer()
    plan = make_plan(cfg, debug=True, log=lambda *a, **k: None)  # no run directory; the tokenizer is cached
    loader = torch.utils.data.DataLoader(Blocks(_batches(vocab, n_batches)), batch_size=BATCH, shuffle=True,
                                         drop_last=True, collate_fn=causal_lm.collate)
    trainer = Trainer(**trainer_kwargs(plan, _rafale_model(vocab), loader, None, callbacks=[timer], compile=compile))

    def step(ids):  # the batch comes from the trainer's own dataloader (same shape, same generator)
        trainer.fit(duration="1ba")
        return timer.last

    return step


def auto_precision() -> str:
    """What run.precision auto picks on this CPU (fp32 | bf16)."""
    from rafale.train.mfu import cpu_peak
    from rafale.train.plan import BF16_GAIN

    return "bf16" if cpu_peak(dtype="bf16") >= BF16_GAIN * cpu_peak(dtype="fp32") else "fp32"


def worker(args) -> dict:
    """One process, one malloc setting. The ways take turns step by step (and a peak measurement between
    rounds), so a load change on a shared machine hits all of them alike; medians are reported."""
    import torch

    from rafale.cli import _tune_malloc
    from rafale.train.mfu import flops_per_token, measure_cpu_peak

    _tune_malloc()  # a no-op under RAFALE_MALLOC=0
    if args.threads:
        torch.set_num_threads(args.threads)
    out, peaks = {}, {p: [] for p in args.precisions}
    default = auto_precision()
    out["auto_precision"] = default
    for vocab in args.vocabs:
        fpt = flops_per_token(_rafale_model(vocab), SEQ)
        n = args.steps + args.warmup
        ways = {}
        for p in args.precisions:
            ways |= {f"composer_{p}": (p, composer_step(vocab, n, p)), f"plain_{p}": (p, plain_step(vocab, p)),
                     f"hf_{p}": (p, hf_step(vocab, p))}
        if args.compile:
            ways[f"composer_compiled_{default}"] = (default, composer_step(vocab, n, default, compile=True))
        times = {w: [] for w in ways}
        for ids in _batches(vocab, n):
            for way, (_, step) in ways.items():
                t = time.perf_counter()
                inner = step(ids)
                times[way].append(inner if inner is not None else time.perf_counter() - t)
            for p in args.precisions:
                peaks[p].append(measure_cpu_peak(reps=3, dtype=p))
        for way, (p, _) in ways.items():
            steady = times[way][max(args.warmup, 1 if "compiled" in way else 0):] or times[way][-1:]
            ms = statistics.median(steady) * 1e3
            out[f"{way}_{vocab}_ms"] = round(ms, 1)
            out[f"{way}_{vocab}_tok_s"] = round(BATCH * SEQ / ms * 1e3)
            out[f"{way}_{vocab}_mfu"] = round(BATCH * SEQ / ms * 1e3 * fpt / statistics.median(peaks[p]), 3)
        if args.compile:
            compiled, eager = out[f"composer_compiled_{default}_{vocab}_ms"], out[f"composer_{default}_{vocab}_ms"]
            compile_s = max(0.0, times[f"composer_compiled_{default}"][0] - compiled / 1e3)
            out[f"compile_{vocab}"] = {"precision": default, "compile_s": round(compile_s, 1),
                                       "speedup": round(eager / compiled, 3),
                                       "break_even_steps": round(compile_s / ((eager - compiled) / 1e3))
                                       if eager > compiled else None}
    for p in args.precisions:
        out[f"peak_{p}_gflops"] = round(statistics.median(peaks[p]) / 1e9, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocabs", type=lambda s: [int(v) for v in s.split(",")], default=[8192, 50304])
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="also time run.compile true (slow: it compiles)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    result = {"benchmark": "train", "model": "pythia-14m shape", "seq": SEQ, "batch": BATCH,
              "threads": args.threads or os.cpu_count()}
    for label, flag, precisions, compile in (("tuned", "1", args.precisions, args.compile),
                                             ("untuned", "0", ["fp32"], False)):
        cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--vocabs", ",".join(map(str, args.vocabs)), "--precisions", ",".join(precisions),
               "--threads", str(args.threads), *(["--compile"] if compile else [])]
        p = subprocess.run(cmd, env={**os.environ, "RAFALE_MALLOC": flag}, capture_output=True, text=True, check=True)
        result[label] = json.loads(p.stdout.strip().splitlines()[-1])
    t, u = result["tuned"], result["untuned"]
    default = t["auto_precision"]
    for v in args.vocabs:
        ratios = {}
        for p in args.precisions:  # the same precision on both sides, both with the malloc tuning
            ratios[f"composer_vs_plain_{p}"] = round(t[f"plain_{p}_{v}_ms"] / t[f"composer_{p}_{v}_ms"], 3)
            ratios[f"composer_vs_hf_{p}"] = round(t[f"hf_{p}_{v}_ms"] / t[f"composer_{p}_{v}_ms"], 3)
        if "fp32" in args.precisions:
            ratios["malloc_tuning_composer_fp32"] = round(u[f"composer_fp32_{v}_ms"] / t[f"composer_fp32_{v}_ms"], 3)
        if default in args.precisions:  # what a user sees: both sides as they run by default
            ratios["default_vs_hf_default"] = round(u[f"hf_fp32_{v}_ms"] / t[f"composer_{default}_{v}_ms"], 3)
        if f"compile_{v}" in t:
            ratios["compile"] = t[f"compile_{v}"]
        result[f"ratio_{v}"] = ratios
    print(json.dumps(result))


if __name__ == "__main__":
    main()
