"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

Training FLOPs per token = 6 x (every parameter except the input embedding) + 12 x n_layer x n_embd x seq.
The 6 x N term counts forward (2) and backward (4) of every real matmul, the LM head included; the input
embedding is a lookup, not a matmul, and counting it overstates a small model's FLOPs badly (at pythia-14m
with vocab 50k it is half the parameters). The second term is attention's QK^T and AV; RetNet's values are
value_factor times wider, so its term is 6 x (1 + value_factor) x n_layer x n_embd x seq (its parallel form).

The peak comes from a table of dense bf16/fp16 tensor-core figures for known GPUs (fp32 runs use the
fp32 column), and on a CPU from a measured fp32 `torch.mm` of 1024 x 1024 (best of 20, about 0.2 s).
A machine busy with something else measures low, and a low peak shows an MFU that is too high, so every
run measures again and $RAFALE_CACHE/cpu_peak.json keeps the best figure seen for this CPU, torch
version and thread count.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import torch

from rafale.files import write_text

# GPU peak FLOP/s (dense, no sparsity): (bf16/fp16 tensor cores, fp32 incl. TF32 off)
GPU_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),  # SXM; PCIe is ~756e12
    "A100": (312e12, 19.5e12),
    "A10G": (125e12, 31.2e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    cfg = model.config
    unique = {id(p): p.numel() for p in model.parameters()}
    n = sum(unique.values())
    if not getattr(cfg, "tie_embeddings", False):  # tied: the matrix is also the LM head, a real matmul
        n -= model.wte.weight.numel()
    value_factor = getattr(cfg, "value_factor", 1)  # RetNet: AV is this much wider than QK^T
    return 6 * n + 6 * (1 + value_factor) * cfg.n_layer * cfg.n_embd * seq_len


def measure_cpu_peak(size: int = 1024, reps: int = 20) -> float:
    """Best fp32 matmul FLOP/s over a few reps of a size x size `torch.mm`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)  # once a process: the progress bar's MFU and the summary's use one peak
def cpu_peak(cache_dir: str | os.PathLike | None = None) -> float:
    """This CPU's fp32 matmul peak: measured now, or the best earlier measurement if that was higher."""
    cache_dir = Path(cache_dir or os.environ.get("RAFALE_CACHE", Path.home() / ".rafale_cache"))
    path = cache_dir / "cpu_peak.json"
    key = f"{cpu_name()}-torch{torch.__version__}-{torch.get_num_threads()}threads"
    flops = measure_cpu_peak()
    try:
        rec = json.loads(path.read_text())
        if rec["key"] == key and float(rec["flops"]) >= flops:
            return float(rec["flops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"key": key, "time": time.time(), "flops": flops}))
    except OSError:
        pass
    return flops


def peak_flops(device: str, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where the figure comes from); None for an unknown GPU."""
    if device == "gpu":
        name = torch.cuda.get_device_name(0)
        for key, (half, fp32) in GPU_PEAKS.items():
            if key in name:
                return (fp32 if precision == "fp32" else half), f"table ({key})"
        return None, f"unknown GPU {name!r}"
    return cpu_peak(), "measured fp32 matmul"
