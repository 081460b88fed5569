"""Full fine-tuning vs LoRA on this CPU: peak memory, optimizer state and step time, one JSON line.

A pythia-70m-shaped model (hidden 512, 6 layers, vocab 50304, seq 256, batch 8, fp32, fused AdamW), trained
the way a run trains it (rafale's chunked loss, param_groups: only trainable parameters reach the optimizer)
for a few steps, two ways, each in a fresh subprocess so that its peak RSS is its own:

  full    every weight trains
  lora    LoRA rank 8 on the attention projections (model.lora's default targets), the rest frozen

Reported per way: trainable parameters, optimizer state bytes (AdamW's exp_avg + exp_avg_sq, after the
first step), peak RSS (ru_maxrss of the subprocess), median step time after one warm-up step; then the
ratios lora/full.

    PYTHONPATH=$PWD python benchmarks/lora.py [--model pythia-70m] [--seq 256] [--batch 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def measure(way: str, model_name: str, seq: int, batch: int, steps: int) -> dict:
    import torch

    from rafale.models import get_config, model_from_config
    from rafale.models.lora import apply_lora, trainable_counts
    from rafale.train.loss import chunked_cross_entropy, shift_targets
    from rafale.train.trainer import param_groups

    torch.manual_seed(0)
    model = model_from_config(get_config(model_name)).train()
    if way == "lora":
        apply_lora(model, rank=8, alpha=16, dropout=0.05, targets=["attention"])
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = chunked_cross_entropy(model.hidden_states(ids), model.lm_head.weight, shift_targets(ids))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.ndim > 0)
    trainable, total = trainable_counts(model)
    return {"trainable_params": trainable, "total_params": total, "optimizer_state_bytes": state_bytes,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "step_s": round(statistics.median(times[1:]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pythia-70m")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--way", choices=["full", "lora"], help=argparse.SUPPRESS)  # one measurement, in a subprocess
    args = ap.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.model, args.seq, args.batch, args.steps)))
        return
    out = {"model": args.model, "seq": args.seq, "batch": args.batch, "steps": args.steps}
    for way in ("full", "lora"):
        p = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--way", way], capture_output=True, text=True,
                           env=os.environ, check=True)
        out[way] = json.loads(p.stdout.strip().splitlines()[-1])
    full, lora = out["full"], out["lora"]
    out["lora_vs_full"] = {
        "optimizer_state": round(lora["optimizer_state_bytes"] / full["optimizer_state_bytes"], 4),
        "peak_rss": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "step_time": round(lora["step_s"] / full["step_s"], 3),
        "trainable": round(lora["trainable_params"] / full["trainable_params"], 4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
