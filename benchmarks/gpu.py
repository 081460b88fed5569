"""The CUDA path in one command: bf16 training, transformers side by side, generation and the largest batch
that fits, through rafale's own plan, trainer and model registry; one JSON line.

  train_<model>   pythia-160m and SmolLM-135M (Llama-style, 135M) at seq 1024: rafale's plan and trainer
                  builder (amp_bf16, fused AdamW, run.compile) under Composer, attention restricted to SDPA's
                  flash kernel; median step after the first (compile) steps, tokens/s, MFU against the GPU's
                  bf16 peak (rafale.train.mfu), peak memory
  hf_<model>      transformers' model of the same config (rafale's own export mapping) in a plain loop: bf16
                  autocast, fused AdamW, torch.compile, the same flash-only attention, batch and steps
  generate        greedy decoding with rafale's KV cache (rafale.models.generate) from the trained
                  pythia-160m in bf16, at batch 1 and 32, and transformers' `generate` on the same weights
  auto_batch      Composer's auto microbatching (run.device_batch_size: auto) on a large global batch: the
                  largest microbatch that fits in memory

The data is made here: rafale's synthetic stories, prepared by rafale's pipeline with a small BPE tokenizer;
the models keep their real vocabularies (model.overrides.vocab_size). Needs cuda-requirements.txt plus
test-requirements.txt (transformers). Under 5 minutes on an H200.

    python benchmarks/gpu.py                 # on a CUDA machine
    python benchmarks/gpu.py --cpu-smoke     # the same code paths on CPU, tiny models, fp32, no compile

Exit code: 0 when every path ran (with --cpu-smoke: every path that can run on a CPU; auto_batch then runs
with a fixed microbatch, Composer's search needing CUDA); 1 when one failed (its error is in the JSON line
under "errors", its traceback on stderr); 2 when there is no CUDA device and --cpu-smoke was not given.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Sizes:
    models: list  # (registry name, model.overrides)
    seq: int
    batch: int
    steps: int
    warmup: int  # first steps left out of the median (compilation happens in the first)
    docs: int
    tokenizer_vocab: int
    prompt: int
    new_tokens: int
    gen_batches: list
    auto_batch: int
    device: str
    precision: str
    compile: bool
    flash: bool
    extra: dict = field(default_factory=dict)


GPU = Sizes(models=[("pythia-160m", {"vocab_size": 50304}), ("SmolLM-135M", {"vocab_size": 49152})],
            seq=1024, batch=16, steps=30, warmup=10, docs=20000, tokenizer_vocab=8192, prompt=32, new_tokens=128,
            gen_batches=[1, 32], auto_batch=1024, device="gpu", precision="amp_bf16", compile=True, flash=True)
SMOKE = Sizes(models=[("pythia-tiny", {}), ("llama-tiny", {})], seq=64, batch=4, steps=2, warmup=1, docs=200,
              tokenizer_vocab=512, prompt=8, new_tokens=4, gen_batches=[1, 2], auto_batch=8, device="cpu",
              precision="fp32", compile=False, flash=False)


def config(s: Sizes, work: Path, name: str, overrides: dict, *, batch: int, steps: int, run_name: str,
           microbatch="auto", compile_=None):
    from rafale.config import config_from_dict

    return config_from_dict({
        "run": {"name": run_name, "max_duration": f"{steps}ba", "save_interval": "1000ep", "device": s.device,
                "precision": s.precision, "compile": s.compile if compile_ is None else compile_,
                "device_batch_size": microbatch, "sample_tokens": 0, "output_dir": str(work / "runs")},
        "optim": {"name": "adamw", "warmup": "0ba", "schedule": "constant"},
        "model": {"config": name, "overrides": overrides},
        "data": {"source": "synthetic:stories", "max_documents": s.docs, "block_size": s.seq,
                 "train_batch_size": batch, "eval_split": 0,
                 "tokenizer": {"train": {"vocab_size": s.tokenizer_vocab}}},
        "logging": {"loggers": []},
    })


def sync(s: Sizes) -> None:
    if s.device == "gpu":
        import torch

        torch.cuda.synchronize()


def attention_kernel(s: Sizes):
    """SDPA restricted to flash attention on the GPU (an error, not a silent fallback, if it cannot run)."""
    if not s.flash:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def reset_memory(s: Sizes) -> None:
    gc.collect()
    if s.device == "gpu":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(s: Sizes):
    if s.device != "gpu":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def step_figures(times: list[float], s: Sizes, batch: int, fpt: int | None, peak: float | None) -> dict:
    steady = statistics.median(times[s.warmup:])
    tok_s = batch * s.seq / steady
    return {"step_ms": round(steady * 1e3, 2), "first_step_s": round(times[0], 2),
            "tokens_per_s": round(tok_s), "mfu": round(tok_s * fpt / peak, 4) if fpt and peak else None,
            "peak_mem_gb": peak_memory_gb(s)}


def plan_and_data(cfg):
    """rafale's plan, prepared data and model, as `rafale run` makes them."""
    from rich.console import Console

    from rafale.data.prepare import prepare
    from rafale.train.plan import make_plan
    from rafale.train.run import build_model

    quiet = Console(quiet=True)
    plan = make_plan(cfg, log=quiet.print)
    data = prepare(cfg.data, console=quiet, fingerprint=plan.fingerprint, tokenizer=plan.tokenizer)
    return plan, data, build_model(plan, data, quiet)


def train_rafale(s: Sizes, work: Path, name: str, overrides: dict) -> tuple[dict, object]:
    from composer import Trainer
    from composer.core import Callback

    from rafale.train.trainer import dataloaders, trainer_kwargs

    class StepTimes(Callback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def batch_start(self, state, logger):
            sync(s)
            self._t = time.perf_counter()

        def batch_end(self, state, logger):
            sync(s)
            self.times.append(time.perf_counter() - self._t)

    reset_memory(s)
    plan, data, model = plan_and_data(config(s, work, name, overrides, batch=s.batch, steps=s.steps,
                                                run_name=name))
    timer = StepTimes()
    train_dl, _ = dataloaders(plan, data, model)
    trainer = Trainer(**trainer_kwargs(plan, model, train_dl, None, callbacks=[timer]))
    with attention_kernel(s):
        trainer.fit()
    out = {"params": sum({id(p): p.numel() for p in model.parameters()}.values()), "precision": plan.precision,
           "compile": plan.cfg.run.compile, "flash_only": s.flash, "optimizer": type(trainer.state.optimizers[0]).__name__,
           "fused": bool(trainer.state.optimizers[0].defaults.get("fused")), "peak_tflops": plan.peak_flops and round(plan.peak_flops / 1e12, 3),
           "peak_source": plan.peak_source,
           **step_figures(timer.times, s, plan.train_batch, plan.flops_per_token, plan.peak_flops)}
    out["final_loss"] = round(float(trainer.state.loss), 3)
    trainer.close()
    return out, (plan, model)


def train_hf(s: Sizes, plan, rafale_model) -> dict:
    import torch
    import transformers

    from rafale.models.weights import config_to_hf

    reset_memory(s)
    device = "cuda" if s.device == "gpu" else "cpu"
    raw = config_to_hf(rafale_model.config, "lm")
    hf_config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if s.compile else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=s.precision == "amp_bf16")
    data = torch.randint(rafale_model.config.vocab_size, (s.steps, plan.train_batch, s.seq), device=device)
    times = []
    with attention_kernel(s):
        for ids in data:
            sync(s)
            t = time.perf_counter()
            with autocast:
                loss = step_model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(s)
            times.append(time.perf_counter() - t)
    return {"class": type(model).__name__, **step_figures(times, s, plan.train_batch, plan.flops_per_token,
                                                          plan.peak_flops)}


def generation(s: Sizes, work: Path, rafale_model) -> dict:
    """Greedy tokens per second at each batch size: rafale's generate, then transformers' on the same weights
    (rafale's export, loaded by transformers' from_pretrained)."""
    import torch
    import transformers

    from rafale.models import export_model
    from rafale.models.generate import generate

    dtype = torch.bfloat16 if s.device == "gpu" else torch.float32
    ours = rafale_model.to(dtype).eval()
    device = ours.lm_head.weight.device
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export_model(ours, work / "export"), dtype=dtype,
                                                                attn_implementation="sdpa").to(device).eval()
    out = {}
    for b in s.gen_batches:
        prompts = torch.randint(ours.config.vocab_size, (b, s.prompt), generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            for _ in generate(ours, prompts.tolist(), s.new_tokens):  # warm-up: kernels, allocator
                pass
            sync(s)
            t = time.perf_counter()
            tokens = [step for step in generate(ours, prompts.tolist(), s.new_tokens)]
            sync(s)
            ours_s, steps = time.perf_counter() - t, len(tokens)
            ids = prompts.to(device)
            kw = dict(max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens, do_sample=False, pad_token_id=0)
            theirs.generate(ids, **kw)
            sync(s)
            t = time.perf_counter()
            hf_ids = theirs.generate(ids, **kw)[:, s.prompt:]
            sync(s)
            theirs_s = time.perf_counter() - t
        out[f"b{b}"] = {"new_tokens": steps, "rafale_tok_s": round(b * steps / ours_s),
                        "hf_tok_s": round(b * s.new_tokens / theirs_s), "rafale_vs_hf": round(theirs_s / ours_s, 3),
                        # bf16 rounding may part them after a while; fp32 (the smoke run) must agree
                        "same_tokens": hf_ids.T.tolist() == tokens}
    return out


def auto_batch(s: Sizes, work: Path) -> dict:
    """Composer's microbatch search on a large global batch (GPU); on CPU the same run with a fixed microbatch."""
    from composer import Trainer

    from rafale.train.trainer import dataloaders, trainer_kwargs

    reset_memory(s)
    name, overrides = s.models[0]
    plan, data, model = plan_and_data(config(s, work, name, overrides, batch=s.auto_batch, steps=2,
                                             run_name=name + "-auto", compile_=False))
    train_dl, _ = dataloaders(plan, data, model)
    trainer = Trainer(**trainer_kwargs(plan, model, train_dl, None, callbacks=[]))
    with attention_kernel(s):
        trainer.fit()
    found = trainer.state.device_train_microbatch_size
    trainer.close()
    return {"model": name, "global_batch": s.auto_batch, "searched": plan.microbatch == "auto",
            "microbatch": found, "tokens_per_microbatch": found * s.seq, "peak_mem_gb": peak_memory_gb(s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: prove the code paths run")
    args = ap.parse_args()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA device and found none; --cpu-smoke runs its code paths on "
              "CPU at tiny sizes", file=sys.stderr)
        sys.exit(2)
    s = SMOKE if args.cpu_smoke else GPU
    t0 = time.perf_counter()
    result = {"benchmark": "gpu", "cpu_smoke": args.cpu_smoke, "seq": s.seq, "batch": s.batch, "steps": s.steps,
              "device": torch.cuda.get_device_name(0) if s.device == "gpu" else "cpu", "torch": torch.__version__}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["RAFALE_CACHE"] = str(work / "cache")
        gen_model = None
        for name, overrides in s.models:
            try:
                result[f"train_{name}"], (plan, model) = train_rafale(s, work, name, overrides)
            except Exception as e:  # noqa: BLE001  one path failing must not hide the others
                errors[f"train_{name}"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                continue
            gen_model = gen_model or model  # the first model generates
            try:
                result[f"hf_{name}"] = train_hf(s, plan, model)
                result[f"hf_{name}"]["rafale_vs_hf"] = round(
                    result[f"hf_{name}"]["step_ms"] / result[f"train_{name}"]["step_ms"], 3)
            except Exception as e:  # noqa: BLE001
                errors[f"hf_{name}"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
        for key, fn in (("generate", lambda: generation(s, work, gen_model)), ("auto_batch", lambda: auto_batch(s, work))):
            try:
                if key == "generate" and gen_model is None:
                    raise RuntimeError("no trained model to generate with (training failed)")
                result[key] = fn()
            except Exception as e:  # noqa: BLE001
                errors[key] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
    result["errors"] = errors
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
