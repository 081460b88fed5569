"""The benchmark scripts still run against the code they measure: each, at its smallest size, prints one
JSON line with its figures. Only that they run and what they report is checked here, never a speed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.bench
def test_train_benchmark_compares_three_ways():
    line = bench("train.py", "--steps", "1", "--warmup", "0", "--vocabs", "512", "--threads", "1")
    for way in ("composer", "plain", "hf"):
        assert line["untuned"][f"{way}_fp32_512_tok_s"] > 0  # transformers' loop as a user runs it: glibc malloc
        for precision in ("fp32", "bf16"):  # the same precision on both sides, with the CLI's malloc tuning
            assert line["tuned"][f"{way}_{precision}_512_tok_s"] > 0
    assert set(line["ratio_512"]) == {"composer_vs_plain_fp32", "composer_vs_hf_fp32", "composer_vs_plain_bf16",
                                      "composer_vs_hf_bf16", "malloc_tuning_composer_fp32", "default_vs_hf_default"}


@pytest.mark.bench
@pytest.mark.parametrize("script,args,keys", [
    ("datapipe.py", ["--mb", "0.3"], ["naive_tok_s", "encode_batch_tok_s", "rafale_tok_s", "rafale_peak_rss_mb"]),
    ("generate.py", ["--repeats", "1", "--long", "64", "--command-tokens", "8", "--command-repeats", "1"],
     ["b1", "b8", "command", "long"]),
    ("eval.py", ["--mc", "8", "--ppl", "2", "--repeats", "1"], ["bench_mc", "bench_ppl"]),
    ("lora.py", ["--model", "pythia-tiny", "--seq", "32", "--batch", "2", "--steps", "1"], ["full", "lora", "lora_vs_full"]),
    ("eval_cost.py", ["--mb", "0.05", "--steps", "1"], ["train", "periodic_eval", "final_eval", "uncapped_eval"]),
])
def test_benchmark_prints_its_figures(script, args, keys):
    line = bench(script, *args)
    assert all(key in line for key in keys), line
    if script == "lora.py":
        assert line["lora_vs_full"]["optimizer_state"] < 0.02
    if script == "generate.py":
        assert line["b1"]["same_tokens"] and line["b8"]["same_tokens"] and line["command"]["same_text"]
        assert set(line["long"]) == {"steps", "transformer", "retnet"}
    if script == "eval.py":
        assert line["bench_mc"]["same_metrics"] and line["bench_ppl"]["same_metrics"]


def test_gpu_benchmark_without_cuda_says_so_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    assert "CUDA" in p.stderr and "--cpu-smoke" in p.stderr
