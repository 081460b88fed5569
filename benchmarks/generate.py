"""Greedy generation speed: rafale's KV-cache loop against transformers' generate, same weights, one process;
the whole `rafale generate` command against a transformers script; and how the time per step grows with
the position, for a transformer and a RetNet.

    PYTHONPATH=. python benchmarks/generate.py [--threads 1] [--repeats 5] [--long 2048] [--compiled]

A pythia-14m-shaped model (hidden 128, 6 layers, 4 heads, rotary 0.25, parallel residual, vocab 8192),
randomly initialised, exported with rafale.models.export_model and loaded by GPTNeoXForCausalLM.
Prompt 32 tokens, 256 new tokens, batch 1 and batch 8; the two implementations alternate (taking turns
to go first), so a noisy machine affects both alike. Prints one JSON line: median new tokens/s for each,
the median and range of the per-repeat speed ratios (rafale over transformers, each from two adjacent
runs), and rafale's time per step around step 16 and step 256.

The "command" row runs `python -m rafale generate DIR -p PROMPT -n 512` and a plain transformers script that
loads the same exported weights and tokenizer.json and prints the same greedy 512 tokens, each as a fresh
process (start-up, imports and loading included), taking turns; both on one torch thread, rafale's default
for small models. `--compiled` also times rafale's compiled decoding step (torch.compile, fixed shapes) at
batch 1: its compile time, its steady speed and whether its tokens equal the eager ones.

The "long" row decodes `--long` + 16 tokens from a 32-token prompt with rafale's loop, for the same
pythia-14m-shaped decoder and for retnet-14m (vocab 8192 both), and compares the time per step around step
16 with the time around step `--long` (the median of 32 steps, each run's ratio, then the median over runs,
the two models taking turns to go first): attention reads a KV cache that grows with every token,
retention a state of fixed size.
"""

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rafale.models import Decoder, RetNet, export_model, get_config
from rafale.models.generate import generate

PROMPT, NEW = 32, 256


COMMAND_PROMPT = "The meaning of"
HF_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
torch.set_num_threads(1)
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = PreTrainedTokenizerFast(tokenizer_file=path + "/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(path).eval()
ids = tok(prompt, return_tensors="pt").input_ids
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                     do_sample=False, pad_token_id=0)
print(prompt + tok.decode(out[0, ids.size(1):]))
"""


def rafale_run(model, prompts, new=NEW, compiled=False):
    """(tokens (B, new), seconds, seconds per step for each step after the first)."""
    stamps, out = [time.perf_counter()], []
    for step in generate(model, prompts.tolist(), new, compiled=compiled):
        out.append(step)
        stamps.append(time.perf_counter())
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return torch.tensor(out).T, stamps[-1] - stamps[0], steps


def hf_run(hf, prompts):
    t = time.perf_counter()
    out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW, do_sample=False,
                      pad_token_id=0)
    return out[:, PROMPT:], time.perf_counter() - t


def step_growth(args) -> dict:
    """Per-step time around step 16 and around step args.long, for a transformer and a RetNet (batch 1)."""
    new = args.long + 16
    models = {"transformer": Decoder(get_config("pythia-14m", vocab_size=8192, max_seq_len=PROMPT + new)).eval(),
              "retnet": RetNet(get_config("retnet-14m", vocab_size=8192, max_seq_len=PROMPT + new)).eval()}
    prompt = torch.randint(0, 8192, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    early, late = {name: [] for name in models}, {name: [] for name in models}
    for repeat in range(max(1, min(args.repeats, 5))):
        for name in (sorted(models) if repeat % 2 else sorted(models, reverse=True)):  # alternate who goes first
            steps = rafale_run(models[name], prompt, new)[2]
            early[name].append(statistics.median(steps[0:32]))  # steps 1-32: around step 16
            late[name].append(statistics.median(steps[args.long - 16:args.long + 16]))  # around step args.long
    out = {"steps": args.long}
    for name in models:
        ratio = statistics.median(b / a for a, b in zip(early[name], late[name]))  # per run
        out[name] = {"ms_per_step_16": round(statistics.median(early[name]) * 1e3, 3),
                     f"ms_per_step_{args.long}": round(statistics.median(late[name]) * 1e3, 3),
                     f"step_{args.long}_over_16": round(ratio, 2)}
    return out


def command_row(model, args) -> dict:
    """Whole processes: `rafale generate` and the transformers script, args.command_tokens new tokens each."""
    from rafale.data.tokenizer import train_tokenizer

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, tmp)
        docs = [inspect.getsource(m) for m in (json, argparse, inspect, statistics)]  # any fixed text
        train_tokenizer(docs, "bpe", 8192, 2, ["<|endoftext|>"]).save(f"{tmp}/tokenizer.json")
        n = str(args.command_tokens)
        commands = {"rafale": [sys.executable, "-m", "rafale", "generate", tmp, "-p", COMMAND_PROMPT, "-n", n],
                    "transformers": [sys.executable, "-c", HF_SCRIPT, tmp, COMMAND_PROMPT, n]}
        seconds, texts = {name: [] for name in commands}, {}
        for repeat in range(args.command_repeats):
            for name in (sorted(commands) if repeat % 2 else sorted(commands, reverse=True)):
                t = time.perf_counter()
                done = subprocess.run(commands[name], env=env, capture_output=True, text=True)
                seconds[name].append(time.perf_counter() - t)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                texts[name] = done.stdout.strip()
    ratios = [t / r for r, t in zip(seconds["rafale"], seconds["transformers"])]
    return {"new_tokens": args.command_tokens, "rafale_s": round(statistics.median(seconds["rafale"]), 2),
            "transformers_s": round(statistics.median(seconds["transformers"]), 2),
            "ratio": round(statistics.median(ratios), 2), "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "same_text": texts["rafale"] == texts["transformers"]}


def compiled_row(model, args) -> dict:
    """rafale's compiled decoding step at batch 1: compile time, steady speed against eager, same tokens."""
    prompts = torch.randint(0, 8192, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    eager_tokens = rafale_run(model, prompts)[0]
    t = time.perf_counter()
    rafale_run(model, prompts, 2, compiled=True)  # the first compiled step compiles
    compile_s = time.perf_counter() - t
    eager, compiled = [], []
    for repeat in range(args.repeats):
        tokens, seconds, _ = rafale_run(model, prompts, compiled=True)
        compiled.append(seconds)
        eager.append(rafale_run(model, prompts)[1])
    return {"compile_s": round(compile_s, 1), "eager_tok_s": round(NEW / statistics.median(eager)),
            "compiled_tok_s": round(NEW / statistics.median(compiled)),
            "same_tokens": bool(torch.equal(tokens, eager_tokens))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: decoding is dispatch-bound)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--long", type=int, default=2048, help="the late step of the transformer/RetNet row")
    parser.add_argument("--command-tokens", type=int, default=512, help="new tokens of the whole-command row")
    parser.add_argument("--command-repeats", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="also time the compiled decoding step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = Decoder(get_config("pythia-14m", vocab_size=8192)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, tmp)
        hf = GPTNeoXForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # always make NEW tokens, as rafale does without an eos_id

    result = {"bench": "generate", "model": "pythia-14m shape, vocab 8192", "prompt": PROMPT, "new_tokens": NEW,
              "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "transformers": transformers.__version__}
    for batch in (1, 8):
        prompts = torch.randint(0, 8192, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
        rafale_run(model, prompts), hf_run(hf, prompts)  # warm-up
        ours, theirs, steps = [], [], []
        for repeat in range(args.repeats):
            if repeat % 2:  # alternate who goes first: the second run finds warmer caches
                hf_tokens, hf_seconds = hf_run(hf, prompts)
            tokens, seconds, step_s = rafale_run(model, prompts)
            if not repeat % 2:
                hf_tokens, hf_seconds = hf_run(hf, prompts)
            ours.append(seconds)
            steps.append(step_s)
            theirs.append(hf_seconds)
        ours_tps = batch * NEW / statistics.median(ours)
        hf_tps = batch * NEW / statistics.median(theirs)
        ratios = [t / o for o, t in zip(ours, theirs)]  # each from two runs a second apart: robust to load drift
        result[f"b{batch}"] = {
            "rafale_tok_s": round(ours_tps), "transformers_tok_s": round(hf_tps),
            "ratio": round(statistics.median(ratios), 2), "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "same_tokens": bool(torch.equal(tokens, hf_tokens)),
        }
        if batch == 1:  # per-step time near the start and near the end of the 256 steps
            early = [statistics.median(run[8:24]) for run in steps]
            late = [statistics.median(run[-16:]) for run in steps]
            result["b1"].update(
                ms_per_step_16=round(statistics.median(early) * 1e3, 3),
                ms_per_step_256=round(statistics.median(late) * 1e3, 3),
                step_256_over_16=round(statistics.median(b / a for a, b in zip(early, late)), 2),  # per run
            )
    result["command"] = command_row(model, args)
    if args.compiled:
        result["compiled_b1"] = compiled_row(model, args)
    result["long"] = step_growth(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
