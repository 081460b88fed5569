"""One run, resolved once: `make_plan(cfg)` turns a validated Config into the immutable Plan that the rest of
the run reads. Nothing after it looks at the config to derive these facts again.

    plan = make_plan(cfg, debug=False, force=False)   # every pre-flight check; nothing written or deleted

What a run will do, in the order it is resolved (each fact once, each check as soon as its facts exist):

    energy     logging.energy: codecarbon can be imported and knows logging.energy_country
    model      the model config: a registry entry with model.overrides, a checkpoint's own shapes
               (model.config: from_weights) or model.hf; the head the pipeline needs; the pipeline and
               the block size must fit it
    device     cpu or gpu, the precision (auto on a CPU: bf16 autocast where its measured matmul peak is
               clearly above fp32's), FSDP, the processes and the batch each one takes
    run_dir    new, resume (and why), start over (FORCE=1), or refused: finished, changed config,
               unreadable checkpoint, a source changed since the checkpoint
    room       the run directory and the cache are writable and have room (preflight.py)
    data       the source's fingerprint and the tokenizer (loaded, or trained once and cached): a model
               trained from scratch takes the tokenizer's vocabulary, padded to a multiple of 64
    flops      FLOPs per token and the hardware's peak, for MFU (decoders)
    lora       model.lora: the modules that get adapters, the base's location and fingerprint; a resumed
               LoRA run must find the base its checkpoint was trained on

Errors name the config key or the path; the CLI adds the config file's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from composer.utils import dist

from rafale.config import Config
from rafale.data import sources
from rafale.data.prepare import pipeline_module
from rafale.data.tokenizer import TokenizerInfo, get_tokenizer, load_tokenizer
from rafale.errors import ConfigError, ModelError, RunStateError
from rafale.models import CAUSAL_LM_CONFIGS, DecoderConfig, EncoderConfig, model_from_config, resolve_model_config
from rafale.models.meta import on_meta
from rafale.train import mfu, preflight
from rafale.train.checkpoints import check_readable, check_same_base
from rafale.train.energy import check_energy
from rafale.train.rundir import RunDirState, inspect_run_dir

BF16_GAIN = 1.5  # precision auto on a CPU: bf16 when its matmul peak is at least this many times fp32's
VOCAB_MULTIPLE = 64  # a from-scratch model's vocabulary is padded to this, for faster matmuls
PIPELINE_HEADS = {"causal_lm": "lm", "sft": "lm", "classification": "classification", "mlm": "mlm"}


@dataclass(frozen=True)
class LoraPlan:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # the linear modules that get an adapter (rafale names)
    modules_to_save: tuple[str, ...]  # trained fully; a head the checkpoint lacks is added when it is built
    merge: bool
    base: str  # base_model_name_or_path of the saved adapter: the base's absolute path, or its hub id
    base_fingerprint: str  # sha256 of the base's weight files; a resume must find the same


@dataclass(frozen=True)
class Plan:
    cfg: Config
    model_config: DecoderConfig | EncoderConfig | None  # None for model.hf: transformers reads its config.json
    head: str  # lm | mlm | classification (its labels come with the data)
    device: str  # cpu | gpu
    precision: str  # fp32 | amp_bf16 | amp_fp16
    parallelism: dict | None  # Composer's parallelism_config: FSDP; None means DDP (or one process)
    train_batch: int  # per process
    eval_batch: int
    microbatch: int | str  # per device; "auto" lets Composer find it (GPU)
    run_dir: RunDirState | None  # None under DEBUG=1: no run directory
    fingerprint: dict  # the data source's, for the cache key
    tokenizer: TokenizerInfo
    flops_per_token: int | None  # decoders
    peak_flops: float | None  # all processes together
    peak_source: str
    debug: bool
    lora: LoraPlan | None = None
    precision_why: str = ""  # how run.precision auto chose, e.g. "bf16 matmul 540 GFLOP/s vs fp32 212"

    @property
    def model_name(self) -> str:
        m = self.cfg.model
        if m.hf is not None:
            return f"model.hf {m.hf}"
        return m.config if m.weights is None else f"{m.config} from {m.weights}"


def make_plan(cfg: Config, *, debug: bool = False, force: bool = False, log=print) -> Plan:
    """Resolve everything a run needs, and check it, before anything is written or deleted.

    Raises:
        RafaleError: the first problem found, naming the config key or the path.
    """
    check_energy(cfg)  # logging.energy: codecarbon importable, the country known
    mc = model_config(cfg)
    head = PIPELINE_HEADS[cfg.data.pipeline]
    device = resolve_device(cfg)
    check_precision(cfg, device)  # auto is resolved last: it measures (and caches) this CPU's peaks
    parallelism = parallelism_config(cfg, device)
    train_batch, eval_batch = per_process(cfg, "train_batch_size"), per_process(cfg, "eval_batch_size")
    microbatch = cfg.run.device_batch_size
    if microbatch == "auto":
        microbatch = "auto" if device == "gpu" else train_batch
    run_dir = None if debug else inspect_run_dir(cfg, force)
    if run_dir is not None and run_dir.resume_from is not None:
        check_readable(run_dir.resume_from, run_dir.path)
    lora = lora_plan(cfg, mc, head)
    if lora is not None and run_dir is not None and run_dir.resume_from is not None:
        check_same_base(run_dir.resume_from, run_dir.path, cfg.model.weights, lora.base_fingerprint)
    fingerprint = sources.fingerprint(cfg.data)  # a missing source fails here, before FORCE=1 removes a run
    if cfg.data.streaming:
        from rafale.data.streaming import check_duration

        check_duration(cfg)
    if run_dir is not None and run_dir.resume_from is not None:
        check_same_source(run_dir.path, fingerprint)
    tokenizer = load_tokenizer(cfg.data.tokenizer.path) if cfg.data.tokenizer.path else None
    if run_dir is not None:  # the estimate takes the largest vocabulary the tokenizer can have
        vocab = tokenizer.vocab_size if tokenizer else cfg.data.tokenizer.train.vocab_size
        preflight.check_room(cfg, _n_params(with_vocab(cfg, mc, vocab), head), fingerprint)
    if tokenizer is None:
        tokenizer = train_tokenizer(cfg, fingerprint, log)
    mc = with_vocab(cfg, mc, tokenizer.vocab_size)
    if mc is not None:
        check_fits(cfg, mc.vocab_size, mc.max_seq_len, tokenizer.vocab_size)
    precision, precision_why = resolve_precision(cfg, device)
    fpt = peak = None
    source = ""
    if isinstance(mc, CAUSAL_LM_CONFIGS) and not debug:
        with on_meta():
            fpt = mfu.flops_per_token(model_from_config(mc), cfg.data.block_size)
        peak, source = mfu.peak_flops(device, precision)
        peak = peak * dist.get_world_size() if peak else None
    return Plan(cfg, mc, head, device, precision, parallelism, train_batch, eval_batch, microbatch, run_dir,
                fingerprint, tokenizer, fpt, peak, source, debug, lora, precision_why=precision_why)


# ---- the model -------------------------------------------------------------------------------------------
def model_config(cfg: Config) -> DecoderConfig | EncoderConfig | None:
    """The registry entry or the checkpoint's shapes, with model.overrides; None for model.hf. The pipeline
    must train this kind of model and the blocks must fit in its positions."""
    if cfg.model.hf is not None:
        if PIPELINE_HEADS[cfg.data.pipeline] != "lm":
            raise ConfigError(f"data.pipeline: {cfg.data.pipeline!r} with model.hf; model.hf trains a causal LM, "
                              f"expected one of causal_lm, sft")
        return None
    mc = resolve_model_config(cfg.model.config, cfg.model.weights, **cfg.model.overrides)
    is_decoder = isinstance(mc, CAUSAL_LM_CONFIGS)
    allowed = [p for p, head in PIPELINE_HEADS.items() if (head == "lm") == is_decoder]
    if cfg.data.pipeline not in allowed:
        kind = "a decoder" if is_decoder else "an encoder"
        raise ConfigError(f"data.pipeline: {cfg.data.pipeline!r} does not train {kind} (model {mc.name!r}); "
                          f"expected one of {', '.join(allowed)}, or a model that fits the pipeline")
    check_fits(cfg, mc.vocab_size, mc.max_seq_len)
    return mc


def lora_plan(cfg: Config, mc, head: str) -> LoraPlan | None:
    """model.lora resolved against the model's modules (built on the meta device): every target and module
    to save must exist. The config checks already refused lora with model.hf or without model.weights."""
    spec = cfg.model.lora
    if spec is None:
        return None
    from rafale.models import lora
    from rafale.models.checkpoint import locate

    with on_meta():
        model = model_from_config(mc, head="mlm" if head == "lm" else head)
    targets = lora.resolve_targets(model, spec.targets)
    keep = lora.resolve_modules_to_save(model, spec.modules_to_save)
    path = locate(cfg.model.weights)
    local = Path(cfg.model.weights).expanduser().exists()
    return LoraPlan(spec.rank, spec.alpha, spec.dropout, tuple(targets), tuple(keep), spec.merge,
                    str(path.resolve()) if local else str(cfg.model.weights), lora.fingerprint(path))


def with_vocab(cfg: Config, mc, vocab_size: int):
    """From scratch, the model takes the tokenizer's vocabulary (padded) unless model.overrides sets one;
    a checkpoint keeps its own."""
    if mc is None or cfg.model.weights is not None or "vocab_size" in cfg.model.overrides:
        return mc
    return dataclasses.replace(mc, vocab_size=math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)


def check_fits(cfg: Config, rows: int, positions: int | None, tok_vocab: int | None = None) -> None:
    """The tokenizer's ids must index the embedding's rows; blocks must fit in the model's positions."""
    m = cfg.model
    where = f"model.hf {m.hf}" if m.hf else f"model.weights {m.weights}" if m.weights else f"model.config {m.config}"
    if tok_vocab is not None and tok_vocab > rows:
        raise ModelError(f"data.tokenizer has {tok_vocab} tokens but {where} has only {rows} embedding rows; use "
                         f"a matching tokenizer or model")
    if positions is not None and cfg.data.block_size > positions:
        raise ConfigError(f"data.block_size: {cfg.data.block_size} is larger than the model's max_seq_len "
                          f"{positions} ({where})")


def _n_params(mc, head: str) -> int:
    if mc is None:
        return 0  # model.hf: its size is known only once transformers builds it
    with on_meta():
        return sum(p.numel() for p in model_from_config(mc, head="mlm" if head == "lm" else head).parameters())


# ---- the hardware ----------------------------------------------------------------------------------------
def resolve_device(cfg: Config) -> str:
    if cfg.run.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.run.device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("run.device: gpu was asked for but CUDA is not available")
    return cfg.run.device


def resolve_precision(cfg: Config, device: str) -> tuple[str, str]:
    """(precision, how auto chose it). auto: bf16 autocast on a GPU that supports it, and on a CPU whose
    measured bf16 matmul peak is at least BF16_GAIN times its fp32 peak (AVX512-BF16, AMX); fp32 elsewhere."""
    p = cfg.run.precision
    if p == "auto" and device == "gpu":
        return ("amp_bf16" if torch.cuda.is_bf16_supported() else "fp32"), ""
    if p == "auto":
        fp32, bf16 = mfu.cpu_peak(dtype="fp32"), mfu.cpu_peak(dtype="bf16")
        p = "amp_bf16" if bf16 >= BF16_GAIN * fp32 else "fp32"
        return p, f"auto: bf16 matmul {bf16 / 1e9:,.0f} GFLOP/s vs fp32 {fp32 / 1e9:,.0f}"
    check_precision(cfg, device)
    return p, ""


def check_precision(cfg: Config, device: str) -> None:
    if device == "cpu" and cfg.run.precision == "amp_fp16":
        raise ConfigError("run.precision: amp_fp16 needs a GPU; use amp_bf16, fp32 or auto on CPU")


def parallelism_config(cfg: Config, device: str) -> dict | None:
    """run.fsdp goes to Composer as parallelism_config={"fsdp": ...}; FSDP needs GPUs, DDP is the default."""
    if cfg.run.fsdp is None:
        return None
    if device != "gpu":
        raise ConfigError("run.fsdp: FSDP needs GPUs (NCCL); drop it to train with DDP on CPU")
    return {"fsdp": dict(cfg.run.fsdp)}


def check_same_source(run_dir: Path, fp: dict) -> None:
    """A resumed run reads the source its checkpoint's data position was taken in (the manifest's fingerprint):
    a changed source would give other examples at that position, streamed or cached.

    Raises:
        RunStateError: the source changed, naming how (sources.fingerprint_change).
    """
    manifest = json.loads((run_dir / "manifest.json").read_text())
    old = manifest.get("data_fingerprint")  # none in a run begun before fingerprints were recorded
    change = sources.fingerprint_change(old, fp, manifest.get("data_error_file")) if old else None
    if change:
        raise RunStateError(f"{run_dir}: cannot resume: data.source changed since the checkpoint ({change}); the "
                            f"checkpoint's position in the data would not mean the same examples; restore the "
                            f"source, or FORCE=1 to start over")


def per_process(cfg: Config, key: str) -> int:
    batch, world = getattr(cfg.data, key), dist.get_world_size()
    if batch % world:
        raise ConfigError(f"data.{key}: {batch} does not divide among {world} processes")
    return batch // world


# ---- the data --------------------------------------------------------------------------------------------
def train_tokenizer(cfg: Config, fingerprint: dict, log) -> TokenizerInfo:
    """data.tokenizer.train: trained on the train split once, then reused from the cache."""
    pipe = pipeline_module(cfg.data.pipeline)

    def train_docs() -> list[str]:
        if cfg.data.streaming:
            from rafale.data.streaming import tokenizer_documents

            return tokenizer_documents(cfg.data)
        return pipe.texts_for_tokenizer(cfg.data, sources.load_splits(cfg.data, pipe.fields(cfg.data))["train"])

    return get_tokenizer(cfg.data, fingerprint, train_docs, log=log)
