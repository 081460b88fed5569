"""LoRA: low-rank adapters on a frozen model's linear layers, saved in PEFT's layout.

    model = apply_lora(model, rank=8, alpha=16, dropout=0.05, targets=["attention"], modules_to_save=[])
    ...train: only the adapters (and modules_to_save) have requires_grad...
    save_adapter(model, "final/adapter", base="path/to/base")   # adapter_config.json + adapter_model.safetensors
    merge_lora(model)                                           # back to plain nn.Linear: W + (alpha/rank) B A

A LoRALinear keeps the frozen `weight` and `bias` of the nn.Linear it replaces under the same names, so
the model's own parameter names do not change, and adds `lora_A` (rank x in, Kaiming-uniform) and `lora_B`
(out x rank, zeros): the model is unchanged at step 0. The adapters go on the linear layers inside the
transformer blocks only; a head is trained fully instead (`modules_to_save`), because the decoder's loss
reads lm_head's weight directly (chunked cross-entropy) and would not see an adapter on it.

Fused projections keep one adapter: B's rows follow the weight's rows, so the adapter is written out with
the same layout fixes as the weight (weights.py). GPT-NeoX's `query_key_value` is one HF module whose rows
interleave q/k/v per head: B's rows are reordered the same way. Llama's q_proj, k_proj and v_proj are
three HF modules: rafale's fused qkv adapter becomes three PEFT adapters that share lora_A and split
lora_B's rows, which is exact (B_q A x, B_k A x, B_v A x are the rows of B A x). So on Llama one adapter
of rank r serves q, k and v together, where PEFT would train three of rank r.

Adapter names are the HF module paths of the exported model under PEFT's prefix
(`base_model.model.gpt_neox.layers.0.attention.query_key_value.lora_A.weight`), so
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)` loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rafale.errors import ConfigError, ModelError
from rafale.files import atomic_path, write_json
from rafale.models.decoder import Decoder
from rafale.models.retnet import RetNet
from rafale.models.encoder import Encoder, EncoderForMaskedLM, EncoderForSequenceClassification
from rafale.models.encoder_weights import NAME_MAPS as ENCODER_MAPS
from rafale.models.encoder_weights import canonical_key
from rafale.models.weights import NAME_MAPS, from_map_names, hf_model_type, map_key, rafale_to_hf

GROUPS = ("attention", "mlp", "all")  # model.lora.targets may name these, or linear modules
IN_BLOCK = re.compile(r"(^|\.)(blocks|layers)\.\d+\.")  # adapters go on the linear layers of the blocks
HEADS = {Decoder: ["lm_head"], RetNet: ["lm_head"], EncoderForSequenceClassification: ["pooler", "classifier"],
         EncoderForMaskedLM: ["dense", "ln", "decoder"], Encoder: []}
PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TASK_TYPES = {Decoder: "CAUSAL_LM", RetNet: "CAUSAL_LM", EncoderForSequenceClassification: "SEQ_CLS"}


class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha / rank) * B(A(dropout(x))), with W and b frozen.

    Takes over the `weight` and `bias` Parameters of `base` (the same tensors, not copies), so a state
    dict names them as before; `lora_A` starts Kaiming-uniform and `lora_B` at zero, so y starts equal
    to base(x).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank <= 0 or alpha <= 0:
            raise ValueError(f"LoRA rank and alpha must be positive, got rank {rank}, alpha {alpha}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self):
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's own init
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """(alpha / rank) B A, the (out, in) change the adapter makes to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function, W + (alpha / rank) B A (computed in fp32)."""
        w = self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                           dtype=w.dtype)
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        linear.weight.copy_(w.float() + delta)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear


# ---- which modules -----------------------------------------------------------------------------------------
def linear_modules(model: nn.Module) -> list[str]:
    """The linear layers inside the transformer blocks: where adapters may go."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and IN_BLOCK.search(n)
            and not n.endswith((".lora_A", ".lora_B"))]


def templated(names) -> str:
    """Module names with layer numbers as {}, each once: 'blocks.{}.attn.qkv, blocks.{}.mlp.up_proj'."""
    return ", ".join(dict.fromkeys(IN_BLOCK.sub(lambda m: f"{m.group(1)}{m.group(2)}.{{}}.", n) for n in names))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The modules model.lora.targets names: attention (the q/k/v or fused qkv and output projections), mlp
    (the feed-forward projections), all (both), or linear module names (whole, or their last parts).

    Raises:
        ConfigError: a target that matches no linear layer of a block (the message lists those there are).
    """
    linear = linear_modules(model)
    chosen = []
    for t in targets:
        if t in GROUPS:
            groups = ("attn", "mlp") if t == "all" else ("attn",) if t == "attention" else ("mlp",)
            found = [n for n in linear if any(f".{g}." in f".{n}." for g in groups)]
        else:
            found = [n for n in linear if _matches(n, t)]
        if not found:
            raise ConfigError(f"model.lora.targets: {t!r} matches no linear layer of {type(model).__name__} "
                              f"{model.config.name!r}; expected {', '.join(GROUPS)} or one of: {templated(linear)}")
        chosen += found
    return list(dict.fromkeys(n for n in linear if n in chosen))  # in model order, each once


def resolve_modules_to_save(model: nn.Module, names: list[str]) -> list[str]:
    """The modules trained fully: `head` (the model's head) or module names (whole, or their last parts).

    Raises:
        ConfigError: a name that matches no module with parameters (the message lists the top-level ones).
    """
    with_params = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    chosen = []
    for name in names:
        found = HEADS[type(model)] if name == "head" else [n for n in with_params if _matches(n, name)]
        if not found:
            tops = ", ".join(dict.fromkeys(n.split(".")[0] for n in with_params))
            raise ConfigError(f"model.lora.modules_to_save: {name!r} matches no module of {model.config.name!r}; "
                              f"expected head or a module name: {tops}, or a deeper one like {templated(with_params[:3])}")
        chosen += found
    return list(dict.fromkeys(chosen))


# ---- apply, count, merge -------------------------------------------------------------------------------------
def apply_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, targets=("attention",),
               modules_to_save=()) -> nn.Module:
    """Freeze `model`, put a LoRALinear on every target module and unfreeze the modules to save. In place.

    Args:
        targets: groups or module names, see resolve_targets.
        modules_to_save: "head" or module names, trained fully (see resolve_modules_to_save).
    Raises:
        ConfigError: a target or module to save that matches nothing, or a module that is both.
    """
    names = resolve_targets(model, list(targets))
    keep = resolve_modules_to_save(model, list(modules_to_save))
    both = [n for n in names if any(_matches(n, k) or n.startswith(k + ".") for k in keep)]
    if both:
        raise ConfigError(f"model.lora: {both[0]} is both a LoRA target and in modules_to_save; pick one")
    model.requires_grad_(False)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, LoRALinear(getattr(owner, attr), rank, alpha, dropout))
    for name in keep:
        model.get_submodule(name).requires_grad_(True)
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a tied matrix counts once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by the nn.Linear it computes (W + (alpha/rank) B A). In place."""
    for name, module in lora_modules(model).items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module.merged())
    return model


# ---- PEFT's layout -----------------------------------------------------------------------------------------
def _hf_rows(model: nn.Module, name: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """{HF module path: its part of `rows`} for a tensor whose rows follow module `name`'s weight rows (B of
    an adapter): the weight's layout fixes move them (NeoX's per-head order, Llama's split q/k/v)."""
    return {k.removesuffix(".weight"): t for k, t in rafale_to_hf(model, {f"{name}.weight": rows}).items()}


def _base_hf_names(model: nn.Module) -> dict:
    """The model's own parameters under HF names (adapters left out), for the module paths PEFT will see."""
    plain = {n: p for n, p in model.named_parameters() if ".lora_" not in n}
    return rafale_to_hf(model, plain)


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters and the fully trained modules of `model`, under the names PEFT saves them."""
    out = {}
    for name, m in lora_modules(model).items():
        for path, b in _hf_rows(model, name, m.lora_B.weight.detach()).items():
            out[f"{PREFIX}{path}.lora_A.weight"] = m.lora_A.weight.detach()
            out[f"{PREFIX}{path}.lora_B.weight"] = b
    lora_names = {f"{n}.{p}" for n in lora_modules(model) for p in ("weight", "bias")}
    saved = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n
             and n not in lora_names}
    if saved:
        out |= {PREFIX + k: t for k, t in rafale_to_hf(model, saved).items()}
    return {k: t.contiguous().clone() for k, t in out.items()}  # no shared storage: safetensors refuses it


def peft_module_names(paths: set[str], among: set[str]) -> list[str]:
    """The shortest suffixes that PEFT's target matching (`key == t or key.endswith('.' + t)`) maps onto
    exactly `paths` among the model's module paths `among`: ['query_key_value', 'dense'], not one per layer."""
    out = set()
    for path in paths:
        parts = path.split(".")
        for i in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[i:])
            if all(p in paths for p in among if _matches(p, suffix)):
                out.add(suffix)
                break
    return sorted(out)


def save_adapter(model: nn.Module, out_dir, base: str) -> Path:
    """Write `out_dir`/adapter_config.json and adapter_model.safetensors, as peft's save_pretrained does.

    Args:
        base: base_model_name_or_path: where the model the adapter was trained on is (a dir or a hub id).
    """
    loras = lora_modules(model)
    if not loras:
        raise ValueError("save_adapter: the model has no LoRA adapter")
    first = next(iter(loras.values()))
    among = {k.rsplit(".", 1)[0] for k in _base_hf_names(model)}
    targets = {p for n, m in loras.items() for p in _hf_rows(model, n, m.lora_B.weight.detach())}
    tensors = adapter_tensors(model)
    saved = sorted({k.removeprefix(PREFIX).rsplit(".", 1)[0] for k in tensors if ".lora_" not in k})
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES.get(type(model)), "base_model_name_or_path": str(base),
        "r": first.rank, "lora_alpha": first.alpha,
        "lora_dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        "target_modules": peft_module_names(targets, among), "modules_to_save": saved or None,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(out / ADAPTER_CONFIG, config)
    return out


# ---- loading an adapter back ---------------------------------------------------------------------------------
def adapter_dir(path) -> Path | None:
    """`path`/adapter when `path` holds an adapter and no model of its own (a run with model.lora.merge: false)."""
    path = Path(path)
    adapter = path / "adapter"
    if (adapter / ADAPTER_CONFIG).is_file() and not (path / "config.json").exists():
        return adapter
    return None


def adapter_base(adapter: Path) -> str:
    """The adapter's base_model_name_or_path, checked to exist when it is a local path.

    Raises:
        ModelError: the config is unreadable, or the base it names is gone.
    """
    from rafale.files import is_hub_id
    from rafale.models.checkpoint import read_json

    base = read_json(adapter / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter / ADAPTER_CONFIG}: no base_model_name_or_path; expected the model the adapter "
                         f"was trained on")
    if not Path(base).exists() and (Path(base).is_absolute() or not is_hub_id(base)):
        raise ModelError(f"{adapter}: the adapter's base model {base} is missing (base_model_name_or_path in "
                         f"{ADAPTER_CONFIG}); restore it there, or use a run saved with model.lora.merge: true")
    return base


def adapter_task(adapter: Path) -> str | None:
    return json.loads((adapter / ADAPTER_CONFIG).read_text()).get("task_type")


def adapter_num_labels(adapter: Path) -> int | None:
    """The classes of a classification head the adapter trained fully (BERT's `classifier`, RoBERTa's
    `classifier.out_proj`), or None."""
    from safetensors import safe_open

    with safe_open(adapter / ADAPTER_WEIGHTS, framework="pt") as f:
        for key in (f"{PREFIX}classifier.weight", f"{PREFIX}classifier.out_proj.weight"):
            if key in f.keys():
                return f.get_slice(key).get_shape()[0]
    return None


def _to_rafale(model: nn.Module, hf_tensors: dict) -> dict:
    """HF-named tensors (full names, e.g. '...query_key_value.weight') into `model`'s names and layout."""
    model_type = hf_model_type(model.config)
    canon = (lambda k: canonical_key(k, model_type)) if model_type in ENCODER_MAPS else (lambda k: k)
    return from_map_names({map_key(canon(k), NAME_MAPS[model_type]): t for k, t in hf_tensors.items()}, model)


def load_adapter(model: nn.Module, adapter: Path) -> nn.Module:
    """Put the adapter saved in `adapter` (save_adapter's layout) on `model` (in place) and return it unmerged.

    Raises:
        ModelError: an adapter that does not fit the model: unknown modules, or (Llama) q/k/v adapters that
            do not share lora_A, which rafale's fused qkv cannot hold.
    """
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    tensors = {k.removeprefix(PREFIX): t for k, t in load_file(adapter / ADAPTER_WEIGHTS).items()}
    # where each linear layer's adapter lives in HF names, to find which of them the file adapts
    paths = {n: _hf_rows(model, n, torch.empty(model.get_submodule(n).weight.shape, device="meta"))
             for n in linear_modules(model)}
    names = [n for n, p in paths.items() if any(f"{q}.lora_A.weight" in tensors for q in p)]
    apply_lora(model, rank=config["r"], alpha=config["lora_alpha"], targets=names)
    used = set()
    for name in names:
        module, keys = model.get_submodule(name), list(paths[name])
        a = [tensors[f"{k}.lora_A.weight"] for k in keys]
        if any(not torch.equal(a[0], other) for other in a[1:]):
            raise ModelError(f"{adapter}: {', '.join(keys)} have different lora_A; rafale's fused {name} shares "
                             f"one, so load this adapter with peft instead")
        b = _to_rafale(model, {f"{k}.weight": tensors[f"{k}.lora_B.weight"] for k in keys})
        module.lora_A.weight.data.copy_(a[0])
        module.lora_B.weight.data.copy_(b[f"{name}.weight"])
        used |= {f"{k}.lora_{x}.weight" for k in keys for x in "AB"}
    rest = {k: t for k, t in tensors.items() if k not in used}
    unknown = [k for k in rest if ".lora_" in k]
    if unknown:
        raise ModelError(f"{adapter}: {len(unknown)} adapter tensors fit no module of the model ({unknown[0]}, ...)")
    if rest:  # modules that were trained fully
        model.load_state_dict(_to_rafale(model, rest), strict=False)
    return model


def fingerprint(path: Path) -> str:
    """sha256 of the files that hold a model's weights (and, for an adapter-only dir, of its base's too)."""
    from rafale.models.checkpoint import locate, weight_files

    path = Path(path)
    adapter = adapter_dir(path)
    files = [adapter / ADAPTER_WEIGHTS] if adapter else weight_files(path)
    h = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    if adapter:
        h.update(fingerprint(locate(adapter_base(adapter))).encode())
    return h.hexdigest()
