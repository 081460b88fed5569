"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

Training FLOPs per token = 6 x (every parameter except the input embedding) + 12 x n_layer x n_embd x seq.
The 6 x N term counts forward (2) and backward (4) of every real matmul, the LM head included; the input
embedding is a lookup, not a matmul, and counting it overstates a small model's FLOPs badly (at pythia-14m
with vocab 50k it is half the parameters). The second term is attention's QK^T and AV; RetNet's values are
value_factor times wider, so its term is 6 x (1 + value_factor) x n_layer x n_embd x seq (its parallel form).

The peak comes from a table of dense bf16/fp16 tensor-core figures for known GPUs (fp32 runs use the
fp32 column), and on a CPU from a measured `torch.mm` of 1024 x 1024 in the precision the run uses (fp32,
or bf16 under amp_bf16): the best of up to 20, within about a quarter of a second. A machine busy with
something else measures low, and a low peak shows an MFU that is too high, so every run measures again
(briefly, once there is a record) and $RAFALE_CACHE/cpu_peak.json (cpu_peak_bf16.json) keeps the best
figure seen for this CPU, torch version and thread count. The two CPU peaks also decide
`run.precision: auto` on a CPU (plan.py).
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


RECHECK_S = 0.04  # the measuring budget once this CPU has a recorded peak


def measure_cpu_peak(size: int = 1024, reps: int = 20, dtype: str = "fp32", budget_s: float = 0.25) -> float:
    """Best matmul FLOP/s over up to `reps` size x size `torch.mm` (fewer once `budget_s` is spent: a CPU
    without bf16 instructions emulates them, slowly)."""
    a, b = torch.randn(size, size, dtype=DTYPES[dtype]), torch.randn(size, size, dtype=DTYPES[dtype])
    torch.mm(a, b)  # warm up
    best, start = float("inf"), time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        if t - start > budget_s:
            break
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
def cpu_peak(cache_dir: str | os.PathLike | None = None, dtype: str = "fp32") -> float:
    """This CPU's matmul peak in `dtype` (fp32 | bf16): measured now, or the best earlier measurement if that
    was higher."""
    cache_dir = Path(cache_dir or os.environ.get("RAFALE_CACHE", Path.home() / ".rafale_cache"))
    path = cache_dir / ("cpu_peak.json" if dtype == "fp32" else f"cpu_peak_{dtype}.json")
    key = f"{cpu_name()}-torch{torch.__version__}-{torch.get_num_threads()}threads"
    try:
        rec = json.loads(path.read_text())
        best = float(rec["flops"]) if rec["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        best = None
    # with a figure to beat, a short look (a few matmuls) suffices: the record keeps the best of every run's
    flops = measure_cpu_peak(dtype=dtype, budget_s=0.25 if best is None else RECHECK_S)
    if best is not None and best >= flops:
        return best
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
    dtype = "bf16" if precision == "amp_bf16" else "fp32"
    return cpu_peak(dtype=dtype), f"measured {dtype} matmul"
