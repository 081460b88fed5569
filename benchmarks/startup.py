"""Start-up and whole-process time of the `rafale` commands, and a short `rafale run` against transformers'
plain loop as whole processes; one JSON line.

  commands   each command that does not train, and `rafale run`, under `python -X importtime`: wall and CPU time,
             the import time of torch (and of Composer for `run`), which nobody can avoid, the rest
             ("own": rafale's imports, its work, Python's start), plus which heavy packages got loaded; and
             "own_beyond_baseline_s": the median wall time of three runs beyond the median of three
             processes that only import what the command had to (torch; Composer too for `run`; nothing
             for `cache list` and `plot`) and exit, taking turns: Python's start and torch's teardown are
             in that baseline, so this is what rafale adds
  whole      `rafale run` of --steps batches of a pythia-14m-shaped model (seq 256, batch 8, the
             tokenizer's vocabulary up to --vocab), data already cached, no evaluation and no sample, against
             a script that trains transformers' GPTNeoXForCausalLM of the same shape for as many steps
             (AdamW, clipping, the same glibc malloc settings as the CLI), wall clock of each process

    PYTHONPATH=$PWD python benchmarks/startup.py [--steps 100] [--vocab 8192] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCH = 256, 8
WATCH = ("composer", "transformers", "torch._dynamo", "matplotlib", "lm_eval", "torchmetrics")
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}  # what rafale.cli._tune_malloc sets

CONFIG = """
run: {{name: bench, max_duration: {steps}ba, sample_tokens: 0, output_dir: runs}}
model: {{config: pythia-14m}}
data: {{source: "synthetic:stories", max_documents: {docs}, tokenizer: {{train: {{vocab_size: {vocab}}}}},
       block_size: {seq}, train_batch_size: {batch}, eval_split: 0}}
"""


def imports(stderr: str) -> dict[str, float]:
    """{module: cumulative seconds} at its first import, from `-X importtime` output."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m and m[2] not in out:
            out[m[2]] = int(m[1]) / 1e6
    return out


def _children_cpu() -> float:
    """CPU seconds of the finished child processes so far: less sensitive than wall time to a busy machine."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(args: list[str], cwd: Path, env: dict) -> dict:
    """One `python -X importtime -m rafale ...`: wall, unavoidable import seconds, the rest, what it loaded."""
    t, cpu = time.perf_counter(), _children_cpu()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "rafale", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, _children_cpu() - cpu
    if p.returncode != 0:
        raise SystemExit(f"rafale {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    imp = imports(p.stderr)
    unavoidable = {m: round(imp[m], 3) for m in ("torch", "composer") if m in imp}
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "import_s": unavoidable,
            "own_s": round(wall - sum(unavoidable.values()), 3), "loaded": [m for m in WATCH if m in imp]}


def baseline_wall(imports: str, cwd: Path, env: dict) -> float:
    """Wall seconds of a process that only runs `imports` under -X importtime, as `timed` runs rafale."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-X", "importtime", "-c", imports], cwd=cwd, env=env, capture_output=True,
                   check=True)
    return time.perf_counter() - t


HF_LOOP = """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoConfig, GPTNeoXForCausalLM
t_import = time.perf_counter() - t0
final, steps, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = GPTNeoXForCausalLM(AutoConfig.from_pretrained(final)).train()
vocab = model.config.vocab_size
opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
data = torch.randint(vocab, (steps, batch, seq))
t1 = time.perf_counter()
for ids in data:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
print(json.dumps({"import_s": round(t_import, 3), "loop_s": round(time.perf_counter() - t1, 3),
                  "final_loss": round(loss.item(), 3)}))
"""


def whole_process(work: Path, env: dict, steps: int) -> dict:
    """rafale run (a fresh run each time) then the transformers loop, wall clock of each process."""
    cmd = [sys.executable, "-m", "rafale", "run", "-c", "bench.yaml", "--force"]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=True)
    rafale_wall = time.perf_counter() - t
    summary = json.loads((work / "runs" / "bench" / "manifest.json").read_text())["summary"]
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", HF_LOOP, str(work / "runs" / "bench" / "final"), str(steps),
                        str(BATCH), str(SEQ)], cwd=work, env={**env, **MALLOC}, capture_output=True, text=True,
                       check=True)
    hf_wall = time.perf_counter() - t
    hf = json.loads(p.stdout.strip().splitlines()[-1])
    return {"rafale_wall_s": round(rafale_wall, 2), "rafale_train_s": summary["train_seconds"],
            "rafale_steps": summary["steps"], "hf_wall_s": round(hf_wall, 2), "hf_loop_s": hf["loop_s"],
            "hf_import_s": hf["import_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--docs", type=int, default=3000, help="synthetic stories to prepare (untimed)")
    ap.add_argument("--repeats", type=int, default=1, help="whole-process pairs; medians are reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "RAFALE_CACHE": str(work / "cache"), "NO_COLOR": "1", "TERM": "dumb"}
        (work / "bench.yaml").write_text(CONFIG.format(steps=args.steps, docs=args.docs, vocab=args.vocab,
                                                        seq=SEQ, batch=BATCH))
        subprocess.run([sys.executable, "-m", "rafale", "run", "-c", "bench.yaml", "--data-only"], cwd=work,
                       env=env, capture_output=True, text=True, check=True)
        pairs = [whole_process(work, env, args.steps) for _ in range(args.repeats)]
        whole = {k: statistics.median(p[k] for p in pairs) for k in pairs[0]}
        whole["rafale_vs_hf"] = round(whole["hf_wall_s"] / whole["rafale_wall_s"], 3)
        whole["rafale_overhead_s"] = round(whole["rafale_wall_s"] - whole["rafale_train_s"], 2)
        whole["hf_overhead_s"] = round(whole["hf_wall_s"] - whole["hf_loop_s"], 2)

        run_dir = "runs/bench"
        commands = {
            "run_1ba": ["run", "-c", "bench.yaml", "--force", "run.max_duration=1ba", "run.name=one"],
            "data_only": ["run", "-c", "bench.yaml", "--data-only"],
            "models": ["models"],
            "cache_list": ["cache", "list"],
            "generate": ["generate", run_dir, "-p", "Once upon a time", "-n", "8"],
            "eval_data": ["eval", run_dir, "--data", "synthetic:stories", "--limit-docs", "4"],
            "export": ["export", run_dir, "exported", "--force", "--no-verify"],
            "plot": ["plot", run_dir, "-o", "loss.png"],
        }
        per_command = {name: timed(cmd, work, env) for name, cmd in commands.items()}
        for name, row in per_command.items():  # the command and its baseline take turns, three times each
            imports = ("import torch, composer" if "composer" in row["import_s"] else
                       "import torch" if "torch" in row["import_s"] else "pass")
            walls, bases = [row["wall_s"]], []
            for i in range(3):
                bases.append(baseline_wall(imports, work, env))
                if i < 2:
                    walls.append(timed(commands[name], work, env)["wall_s"])
            row["baseline"] = imports
            row["own_beyond_baseline_s"] = round(statistics.median(walls) - statistics.median(bases), 3)
    print(json.dumps({"benchmark": "startup", "steps": args.steps, "seq": SEQ, "batch": BATCH,
                      "threads": os.cpu_count(), "whole_process": whole, "commands": per_command}))


if __name__ == "__main__":
    main()
