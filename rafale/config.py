"""The experiment config: one YAML file, typed sections, strict validation.

`load_config(path, overrides)` reads the YAML, applies dotted `key=value` overrides from the command
line (the command line wins), converts everything into the dataclasses below and validates the whole
thing at once: every unknown key, wrong type and impossible value is collected and reported together in
one ConfigError, each naming the file and the dotted key.

The dataclasses are the schema: their fields, types and defaults are what a config may say, and the
comment beside a field is its documentation (README's config reference mirrors them).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from rafale.errors import ConfigError

PRECISIONS = ("auto", "fp32", "amp_bf16", "amp_fp16")
OPTIMIZERS = ("adamw", "decoupled_adamw", "sgd")
SCHEDULES = ("constant", "linear-warmup", "cosine-warmup")
PIPELINES = ("causal_lm", "sft", "classification", "mlm")
TOKENIZER_TYPES = ("bpe", "wordpiece", "unigram")
TXT_DOCUMENTS = ("paragraph", "file")
FINGERPRINTS = ("stat", "content")
LOGGERS = ("console", "file", "wandb", "tensorboard")
LOGGER_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}  # optional loggers and what they import
CLIP_TYPES = ("norm", "value")
DEVICES = ("auto", "cpu", "gpu")
_TIME_RE = re.compile(r"^\d+(\.\d+)?(ep|ba|tok|sp|dur)$")


# ---- run: identity, length and cadence of a training run --------------------------------------------
@dataclass
class RunConfig:
    name: str = "run"  # the run directory is <output_dir>/<name>
    seed: int = 42  # seeds model init, data order and dropout
    max_duration: str = "1ep"  # Composer time: 1ep, 500ba, 2000000tok
    eval_interval: str = "100ba"  # how often to evaluate on the held-out split; 0ba = only at the end
    eval_batches: Union[int, None] = 20  # periodic evaluations take at most this many eval batches; null = all
    # (the evaluation at the end of the run always covers the whole held-out split, capped by data.eval_max_tokens)
    save_interval: str = "500ba"  # how often to write a checkpoint (the run end always writes one)
    save_num_checkpoints_to_keep: int = 2  # older checkpoints are deleted; -1 keeps all
    log_interval: str = "10ba"  # how often a line goes to metrics.jsonl
    device_batch_size: Union[int, str] = "auto"  # microbatch per device; auto = the whole batch on CPU
    precision: str = "auto"  # auto = amp_bf16 on a GPU or CPU with fast bf16 matmuls, fp32 elsewhere
    device: str = "auto"  # auto = gpu when CUDA is available, else cpu
    output_dir: str = "runs"
    sample_prompt: str = "Once upon a time"  # the end-of-run greedy sample starts here
    sample_tokens: int = 48
    compile: Union[bool, str] = "auto"  # torch.compile the model; auto = when the run is long enough to pay it back
    fsdp: Union[dict, None] = None  # GPUs only: Composer FSDP settings, e.g. {sharding_strategy: FULL_SHARD}


# ---- optim: optimizer, schedule and clipping ---------------------------------------------------------
@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | decoupled_adamw | sgd
    lr: float = 6.0e-4
    weight_decay: float = 0.1  # not applied to norms, biases and embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    schedule: str = "cosine-warmup"  # constant | linear-warmup | cosine-warmup
    warmup: str = "0.02dur"  # Composer time (fraction of the run as `dur`)
    final_lr_fraction: float = 0.1  # the LR at the end of the run, as a fraction of lr
    clip_norm: float = 1.0  # gradient clipping threshold; 0 disables
    clip_type: str = "norm"  # norm: rescale the global gradient norm to clip_norm; value: clamp each element
    layerwise_decay: float = 1.0  # each block's lr times decay^(blocks above it); embeddings the smallest; 1 = off


# ---- model: which architecture, which weights --------------------------------------------------------
@dataclass
class LoraConfig:
    rank: int = 8  # r: the rank of each adapter
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.05  # on the adapter's input, during training
    # attention (q/k/v or fused qkv, and the output projection), mlp, all, or linear module names of the blocks
    targets: list[str] = field(default_factory=lambda: ["attention"])
    modules_to_save: list[str] = field(default_factory=list)  # trained fully: head, or module names
    merge: bool = True  # final/ holds the merged model beside final/adapter/; false: only the adapter


@dataclass
class ModelConfig:
    config: str = "pythia-14m"  # a registry name (`rafale models` lists them), or from_weights (needs weights)
    overrides: dict = field(default_factory=dict)  # any registry field, e.g. {n_layer: 4}
    weights: Union[str, None] = None  # start from a checkpoint: an HF-layout dir, a rafale run dir or a hub id
    hf: Union[str, None] = None  # instead of a rafale model: any transformers causal LM (dir or hub id)
    lora: Union[LoraConfig, None] = None  # train low-rank adapters on the frozen weights instead of every weight


# ---- data: source, tokenizer and how text becomes blocks ---------------------------------------------
@dataclass
class TokenizerTrainConfig:
    type: str = "bpe"  # bpe (byte-level) | wordpiece | unigram
    vocab_size: int = 4096
    min_frequency: int = 2
    special_tokens: Union[list[str], None] = None  # null = the pipeline's (causal_lm/sft: <|endoftext|>
    # <|pad|>; classification/mlm: [PAD] [UNK] [CLS] [SEP] [MASK])


@dataclass
class TokenizerConfig:
    path: Union[str, None] = None  # a tokenizer.json, a directory holding one, or a hub id (owner/name)
    train: Union[TokenizerTrainConfig, None] = None  # or train one on the train split (cached)


@dataclass
class DataConfig:
    pipeline: str = "causal_lm"  # causal_lm | sft | classification | mlm
    # where the text comes from: synthetic:<name>; a file, a list of files or a glob (.txt .jsonl .json
    # .parquet .csv); a folder of them; a datasets save_to_disk folder; or a hub dataset id (owner/name
    # or hf:name)
    source: Union[str, list[str]] = "synthetic:stories"
    text_field: str = "text"  # the text column (.jsonl/.json/.parquet/.csv/datasets)
    txt_document: str = "paragraph"  # .txt files: paragraph = one document per blank-line block; file = per file
    fingerprint: str = "stat"  # local files enter the cache key by path+size+mtime (stat) or by content hash
    hub_config: Union[str, None] = None  # hub datasets: the config (subset) name
    hub_revision: Union[str, None] = None  # hub datasets: a branch, tag or commit
    train_split_name: str = "train"  # the source's own train split
    eval_split_name: Union[str, None] = None  # the source's own eval split; null = validation, valid, dev or test
    max_documents: Union[int, None] = None  # use only the first N documents of the train split
    shuffle: bool = False  # shuffle documents (seeded by data.seed) before tokenizing
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    block_size: int = 256  # tokens per training example
    train_batch_size: int = 32  # global batch, in blocks
    eval_batch_size: int = 32
    eval_split: float = 0.05  # fraction of documents held out when the source has no eval split
    eval_max_tokens: Union[int, None] = 262144  # evaluate on at most this many held-out tokens (whole examples,
    # evenly spaced through the split, the same at every evaluation); null = all of it
    seed: int = 0  # seeds the held-out split, the shuffle and the synthetic corpus
    # sft: prompt/response pairs; labels are -100 on the prompt and the padding
    prompt_field: str = "prompt"
    response_field: str = "generation"
    packing: bool = False  # sft: pack several examples into one block (labels stay masked per example)
    # classification: [CLS] text [SEP] (text_pair [SEP]) -> label
    text_pair_field: Union[str, None] = None  # the second text of a pair, if any
    label_field: str = "label"
    labels: Union[list[str], None] = None  # the label set, in id order; null = discovered from train
    # mlm: masking happens in the collator, fresh at every epoch
    mlm_probability: float = 0.15  # of non-special tokens; of those 80% [MASK], 10% random, 10% kept
    # streaming (causal_lm): read, tokenize and pack the train split on the fly; only the eval split is cached
    streaming: bool = False
    shuffle_buffer: Union[int, None] = 10000  # streaming: blocks shuffled in a buffer of this many; null = in order
    eval_documents: int = 1000  # streaming: the first N documents are the eval split when the source has none
    stream_batch: int = 2048  # streaming: documents read and tokenized at a time (one batch is read ahead)
    storage_options: Union[dict, None] = None  # streaming: fsspec options for s3:// gs:// hf:// URLs and hub ids


# ---- logging ----------------------------------------------------------------------------------------
@dataclass
class LoggingConfig:
    loggers: list[str] = field(default_factory=lambda: ["console", "file"])  # + wandb, tensorboard
    project: Union[str, None] = None  # wandb project (default: wandb's own)
    energy: bool = False  # track energy and CO2-eq with codecarbon, offline, on rank 0 (manifest and summary)
    energy_country: str = "USA"  # ISO 3166 alpha-3 code of where the machine runs: its grid's carbon intensity


# ---- eval: after training, the final model is evaluated as `rafale eval` would ------------------------
@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval task names, e.g. [stories_cloze, stories_ppl]
    include_path: Union[str, None] = None  # a folder of lm-eval task YAML files
    num_fewshot: Union[int, None] = None  # few-shot examples per task (null: each task's own)
    limit: Union[int, None] = None  # only the first N documents of each task
    data: Union[str, list[str], None] = None  # any data.source: loss, perplexity and bits per byte
    text_field: str = "text"  # the text column of eval.data
    context: Union[int, None] = None  # eval.data: least left context in a sliding window (null: half the block)
    batch_size: int = 8  # rows per forward pass


# ---- sweep: the grid `rafale sweep` trains one run per point of (`rafale run` ignores it) -----------------
@dataclass
class SweepConfig:
    grid: dict = field(default_factory=dict)  # dotted config key -> list of values, e.g. {optim.lr: [1.0e-3, 3.0e-3]}
    random: Union[int, None] = None  # draw this many points of the grid (reproducibly, from seed); null = all
    seed: int = 0  # seeds the random draw
    name: Union[str, None] = None  # sweeps/<name>/ and <output_dir>/<name>/<point>/; null = run.name


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    source_path: str = field(default="<defaults>", compare=False, repr=False)  # not a config key

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_path")
        return d


# ---- loading ----------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides, and return a validated Config.

    Raises:
        ConfigError: naming the file and every bad key at once.
    """
    path = Path(path)
    if not path.is_file():
        where = "no such file" if not path.exists() else "not a file"
        raise ConfigError(f"{path}: {where}; expected a YAML config (see configs/quickstart.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a YAML config") from None
    if raw is None:  # a zero-byte file, or only comments: a mistake, not "train the defaults"
        raise ConfigError(f"{path}: the file is empty; expected a YAML config with sections run, optim, model, "
                          f"data, logging (see configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run, optim, model, data, logging), "
                          f"got {type(raw).__name__}")
    return config_from_dict(raw, overrides, source=str(path))


def config_from_dict(raw: dict, overrides=(), source: str = "<dict>") -> Config:
    errors: list[str] = []
    raw = _apply_overrides(raw, overrides, errors)
    cfg = _build(Config, raw, "", errors)
    _validate(cfg, errors)
    _validate_against_raw(cfg, raw, errors)  # fields that failed to convert kept their defaults, so no double reports
    if errors:
        raise ConfigError(_format_errors(source, errors))
    cfg.source_path = source
    return cfg


def _format_errors(source: str, errors: list[str]) -> str:
    if len(errors) == 1:
        return f"{source}: {errors[0]}"
    return f"{source}: {len(errors)} problems: " + "; ".join(errors)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override must be key=value (e.g. optim.lr=3e-4), got {item!r}")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_overrides(raw: dict, overrides, errors: list[str]) -> dict:
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                errors.append(f"{'.'.join(keys)}: cannot set a key under {k!r}, which is not a section")
                break
            node = child
        else:
            node[keys[-1]] = value
    return raw


def _build(cls, raw: Any, prefix: str, errors: list[str]):
    """Turn a dict into dataclass `cls`, recording (not raising) every problem."""
    if raw is None:  # `model:` with nothing under it: the defaults
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(fields)}"
            errors.append(f"{dotted}: unknown key{hint}")
            continue
        ok, converted = _convert(hints[key], value, dotted, errors)
        if ok:
            kwargs[key] = converted
    return cls(**kwargs)


def _convert(tp, value, dotted: str, errors: list[str]) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if tp is TokenizerConfig and isinstance(value, str):  # `tokenizer: path/to/tokenizer.json` is the short form
        value = {"path": value}
    if dataclasses.is_dataclass(tp):
        return True, _build(tp, value, dotted + ".", errors)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        section = next((a for a in args if dataclasses.is_dataclass(a)), None)
        if section is not None and isinstance(value, dict):  # an optional section: report its own key errors
            return _convert(section, value, dotted, errors)
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            ok, out = _convert(arg, value, dotted, trial)
            if ok and not trial:
                return True, out
        allowed = " or ".join(_type_name(a) for a in args)
        errors.append(f"{dotted}: expected {allowed}, got {_show(value)}")
        return False, None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{dotted}: expected a list of {_type_name(item_tp)}, got {_show(value)}")
            return False, None
        out = []
        for i, v in enumerate(value):
            ok, c = _convert(item_tp, v, f"{dotted}[{i}]", errors)
            if not ok:
                return False, None
            out.append(c)
        return True, out
    if tp is dict:
        if not isinstance(value, dict):
            errors.append(f"{dotted}: expected a mapping, got {_show(value)}")
            return False, None
        return True, dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return True, value
    errors.append(f"{dotted}: expected {_type_name(tp)}, got {_show(value)}")
    return False, None


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    return f"{value!r}"


# ---- validation of values -----------------------------------------------------------------------------
def _validate(cfg: Config, errors: list[str]) -> None:
    def need(cond: bool, key: str, msg: str):
        if not cond:
            errors.append(f"{key}: {msg}")

    def one_of(value, allowed, key):
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{key}: {value!r} is not one of {', '.join(allowed)}{hint}")

    def time_str(value: str, key: str, allow_dur: bool = False):
        ok = bool(_TIME_RE.match(value)) and (allow_dur or not value.endswith("dur"))
        if not ok:
            units = "ep, ba, tok, sp" + (", dur" if allow_dur else "")
            errors.append(f"{key}: {value!r} is not a duration; expected a number and a unit ({units}), "
                          f"e.g. 100ba")

    r, o, m, d = cfg.run, cfg.optim, cfg.model, cfg.data
    need(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", r.name)), "run.name",
         f"{r.name!r} must be a plain directory name (letters, digits, '_', '-', '.')")
    for key in ("max_duration", "eval_interval", "save_interval", "log_interval"):
        time_str(getattr(r, key), f"run.{key}")
    need(r.save_num_checkpoints_to_keep == -1 or r.save_num_checkpoints_to_keep >= 1,
         "run.save_num_checkpoints_to_keep", f"expected -1 (keep all) or at least 1, got {r.save_num_checkpoints_to_keep}")
    if isinstance(r.device_batch_size, str):
        need(r.device_batch_size == "auto", "run.device_batch_size",
             f"expected a positive integer or 'auto', got {r.device_batch_size!r}")
    else:
        need(r.device_batch_size > 0, "run.device_batch_size",
             f"expected a positive integer or 'auto', got {r.device_batch_size}")
        need(r.device_batch_size <= d.train_batch_size, "run.device_batch_size",
             f"{r.device_batch_size} is larger than data.train_batch_size {d.train_batch_size}")
    one_of(r.precision, PRECISIONS, "run.precision")
    one_of(r.device, DEVICES, "run.device")
    need(r.compile in (True, False, "auto"), "run.compile", f"expected true, false or auto, got {_show(r.compile)}")
    need(r.sample_tokens >= 0, "run.sample_tokens", f"expected 0 or more, got {r.sample_tokens}")

    one_of(o.name, OPTIMIZERS, "optim.name")
    one_of(o.schedule, SCHEDULES, "optim.schedule")
    need(o.lr > 0, "optim.lr", f"expected a positive number, got {o.lr}")
    need(o.weight_decay >= 0, "optim.weight_decay", f"expected 0 or more, got {o.weight_decay}")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
         f"expected two numbers in [0, 1), got {o.betas}")
    need(o.eps > 0, "optim.eps", f"expected a positive number, got {o.eps}")
    time_str(o.warmup, "optim.warmup", allow_dur=True)
    need(0 <= o.final_lr_fraction <= 1, "optim.final_lr_fraction", f"expected a number in [0, 1], got {o.final_lr_fraction}")
    need(o.clip_norm >= 0, "optim.clip_norm", f"expected 0 (off) or a positive number, got {o.clip_norm}")
    one_of(o.clip_type, CLIP_TYPES, "optim.clip_type")
    warm, total = _time(o.warmup), _time(r.max_duration)
    if warm and total:
        too_long = warm[0] > 1 if warm[1] == "dur" else (warm[1] == total[1] and warm[0] > total[0])
        need(not too_long, "optim.warmup", f"{o.warmup} is longer than the run (run.max_duration {r.max_duration}); "
             f"expected at most the run, or a fraction such as 0.02dur")
    if total:
        need(total[0] > 0, "run.max_duration", f"expected a positive duration, got {r.max_duration}")

    need(bool(m.config), "model.config", "expected a model name (see `rafale models`)")
    need(0 < o.layerwise_decay <= 1, "optim.layerwise_decay", f"expected a number in (0, 1], got {o.layerwise_decay}")
    if m.lora is not None:
        need(m.lora.rank > 0, "model.lora.rank", f"expected a positive integer, got {m.lora.rank}")
        need(m.lora.alpha > 0, "model.lora.alpha", f"expected a positive number, got {m.lora.alpha}")
        need(0 <= m.lora.dropout < 1, "model.lora.dropout", f"expected a fraction in [0, 1), got {m.lora.dropout}")
        need(bool(m.lora.targets), "model.lora.targets", "expected at least one of attention, mlp, all or a module name")
        need(m.hf is None, "model.lora", f"not supported with model.hf {m.hf!r} (transformers' models train "
             f"whole); use model.config: from_weights and model.weights: {m.hf} to train rafale's copy with LoRA")
        need(m.hf is not None or m.weights is not None, "model.lora",
             "LoRA on a model trained from scratch (no model.weights) freezes random weights, almost always a "
             "mistake; set model.weights to the pretrained model, or drop model.lora")
    if m.hf is not None:
        need(bool(m.hf), "model.hf", "expected a model directory or a hub id (owner/name)")
        need(m.weights is None, "model.weights", f"{m.weights!r} with model.hf {m.hf!r}; model.hf loads its own "
             f"weights, drop one of them")
        need(not m.overrides, "model.overrides", "not used with model.hf (its config.json gives the shapes); "
             "drop them")

    one_of(d.pipeline, PIPELINES, "data.pipeline")
    sources = d.source if isinstance(d.source, list) else [d.source]
    need(bool(sources) and all(sources), "data.source",
         "expected synthetic:<name>, a file, a list of files, a glob, a folder or a hub dataset id")
    one_of(d.txt_document, TXT_DOCUMENTS, "data.txt_document")
    one_of(d.fingerprint, FINGERPRINTS, "data.fingerprint")
    need(d.block_size > 0, "data.block_size", f"expected a positive integer, got {d.block_size}")
    need(d.train_batch_size > 0, "data.train_batch_size", f"expected a positive integer, got {d.train_batch_size}")
    need(d.eval_batch_size > 0, "data.eval_batch_size", f"expected a positive integer, got {d.eval_batch_size}")
    need(0 <= d.eval_split < 1, "data.eval_split", f"expected a fraction in [0, 1), got {d.eval_split}")
    if d.eval_max_tokens is not None:
        need(d.eval_max_tokens >= d.block_size, "data.eval_max_tokens", f"{d.eval_max_tokens} is less than one "
             f"example of data.block_size {d.block_size}; expected at least {d.block_size}, or null for no cap")
    if r.eval_batches is not None:
        need(r.eval_batches > 0, "run.eval_batches", f"expected a positive integer or null (all), got {r.eval_batches}")
    need(0 < d.mlm_probability < 1, "data.mlm_probability", f"expected a fraction in (0, 1), got {d.mlm_probability}")
    if d.labels is not None:
        need(len(d.labels) >= 2 and len(set(d.labels)) == len(d.labels), "data.labels",
             f"expected at least two distinct labels, got {d.labels}")
    if d.streaming:
        need(d.pipeline == "causal_lm", "data.streaming", f"supported with pipeline causal_lm, not "
             f"{d.pipeline!r}; set data.streaming: false to prepare a cache")
        need(d.shuffle_buffer is None or d.shuffle_buffer > 0, "data.shuffle_buffer",
             f"expected a positive number of blocks, or null to keep the stream's order, got {d.shuffle_buffer}")
        need(d.stream_batch > 0, "data.stream_batch", f"expected a positive number of documents, got {d.stream_batch}")
        need(d.eval_documents >= 0, "data.eval_documents", f"expected 0 or more documents, got {d.eval_documents}")
    if d.max_documents is not None:
        need(d.max_documents > 0, "data.max_documents", f"expected a positive integer, got {d.max_documents}")
    t = d.tokenizer
    if t.path is None and t.train is None:  # neither given: train the default tokenizer
        t.train = TokenizerTrainConfig()
    need((t.path is None) != (t.train is None), "data.tokenizer",
         "expected exactly one of path (a tokenizer.json, a directory or a hub id) or train ({vocab_size: ...})")
    if t.train is not None:
        one_of(t.train.type, TOKENIZER_TYPES, "data.tokenizer.train.type")
        need(t.train.vocab_size >= 260, "data.tokenizer.train.vocab_size",
             f"expected at least 260 (256 bytes plus special tokens), got {t.train.vocab_size}")
        need(t.train.min_frequency >= 1, "data.tokenizer.train.min_frequency",
             f"expected a positive integer, got {t.train.min_frequency}")
    _validate_eval(cfg.eval, errors)
    _validate_logging(cfg.logging, errors)
    _validate_sweep(cfg.sweep, errors)
    for i, name in enumerate(cfg.logging.loggers):
        one_of(name, LOGGERS, f"logging.loggers[{i}]")
        package = LOGGER_PACKAGES.get(name)
        if package:
            import importlib.util

            need(importlib.util.find_spec(package) is not None, f"logging.loggers[{i}]",
                 f"{name} needs the {package} package, which is not installed; pip install {package}, "
                 f"or drop {name}")


def _validate_logging(lg: LoggingConfig, errors: list[str]) -> None:
    if not re.fullmatch(r"[A-Z]{3}", lg.energy_country):
        errors.append(f"logging.energy_country: expected an ISO 3166 alpha-3 country code in capitals (USA, "
                      f"FRA, CAN, ...), got {lg.energy_country!r}")


def _validate_eval(e: EvalConfig, errors: list[str]) -> None:
    if any(not isinstance(t, str) or not t.strip() for t in e.tasks):
        errors.append(f"eval.tasks: expected task names, got {e.tasks}")
    if e.num_fewshot is not None and e.num_fewshot < 0:
        errors.append(f"eval.num_fewshot: expected 0 or more, got {e.num_fewshot}")
    for key in ("limit", "batch_size"):
        value = getattr(e, key)
        if value is not None and value < 1:
            errors.append(f"eval.{key}: expected a positive integer, got {value}")
    if e.context is not None and e.context < 0:
        errors.append(f"eval.context: expected 0 or more, got {e.context}")
    if e.data is not None and not (e.data if isinstance(e.data, list) else [e.data]):
        errors.append("eval.data: expected a data source (as data.source takes), got an empty list")


def _validate_sweep(s: SweepConfig, errors: list[str]) -> None:
    """Shapes only; rafale/sweep/points.py checks that grid keys are config keys and every point is valid."""
    for key, values in s.grid.items():
        if not isinstance(values, list) or not values:
            errors.append(f"sweep.grid.{key}: expected a non-empty list of values, got {_show(values)}")
    if s.random is not None and s.random < 1:
        errors.append(f"sweep.random: expected a positive integer, got {s.random}")
    if s.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", s.name):
        errors.append(f"sweep.name: {s.name!r} must be a plain directory name (letters, digits, '_', '-', '.')")


def _time(value: str) -> tuple[float, str] | None:
    m = _TIME_RE.match(value)
    return (float(value[: m.start(2)]), m.group(2)) if m else None


def _validate_against_raw(cfg: Config, raw: dict, errors: list[str]) -> None:
    """Checks that depend on what the user wrote, not only on the resolved values."""
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    every = _time(cfg.run.eval_interval)
    if cfg.data.eval_split == 0 and "eval_interval" in run and every and every[0] > 0:
        errors.append(f"run.eval_interval: {cfg.run.eval_interval} asks for evaluation but data.eval_split is 0 "
                      f"(no eval split); set data.eval_split > 0, or run.eval_interval=0ba")


def dump_config(cfg: Config, *, run_only: bool = False) -> str:
    """The config as YAML; `run_only` leaves out the sweep section (a run directory's config.yaml: it
    describes a sweep, not the run)."""
    raw = cfg.to_dict()
    if run_only:
        raw.pop("sweep")
    return yaml.safe_dump(raw, sort_keys=False)
