"""Finding, reading and writing Hugging Face-layout checkpoints, for every family: the part that is not about names.

    locate("runs/quickstart")          -> runs/quickstart/final   (a run dir: its final/ export)
    locate("EleutherAI/pythia-14m")    -> the hub snapshot dir     (config, safetensors, tokenizer files only)
    read_hf_config(path)               -> config.json as a dict
    read_hf_weights(path)              -> {name: tensor} from model.safetensors or its shards
    write_hf_dir(out, config, tensors) -> out/config.json + out/model.safetensors, each written atomically

weights.py owns the names (the flat name maps, the conversion both ways) and encoder_weights.py the
encoders' part of them; this module owns the files. Safetensors only: a pickled .bin checkpoint can run
arbitrary code when it is loaded, so rafale never opens one.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rafale.errors import ModelError
from rafale.files import atomic_path, is_hub_id, write_json

# What a hub download fetches: configs, weights and tokenizer files; never pickles, never the training logs.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "vocab.*", "merges.txt", "*.model"]


@dataclass
class LoadReport:
    """What loading did besides filling the model, for the caller to print."""

    head: str  # the head that was built: "lm" (decoders), "backbone", "mlm" or "classification"
    initialized: list[str] = field(default_factory=list)  # model tensors absent from the checkpoint: fresh init
    ignored: list[str] = field(default_factory=list)  # checkpoint tensors of a head this model does not have


def listing(path: Path, limit: int = 12) -> str:
    """'found: a, b, c' for a directory, for error messages that say what is there instead."""
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return "the directory is empty"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "found: " + ", ".join(names[:limit]) + more


def names(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def locate(weights: str | os.PathLike) -> Path:
    """The HF-layout directory that `weights` names: a local dir, a rafale run dir (its final/), or a hub id.

    A hub id is fetched with huggingface_hub's snapshot_download (cached under its usual cache dir), only
    the files in HUB_PATTERNS. A local path always wins over a hub id of the same spelling.

    Raises:
        ModelError: an unfinished run dir, a path that is neither a directory nor a hub id, a hub id that
            cannot be fetched (offline, unknown or gated repository).
    """
    path = Path(weights).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "final").is_dir():
            return path / "final"
        if not (path / "config.json").exists() and (path / "checkpoints").is_dir():
            raise ModelError(f"{path}: this run has no final/ export yet (did it finish?)")
        return path
    if path.exists():
        raise ModelError(f"{path}: is a file; expected an HF-layout model dir (config.json + model.safetensors), "
                         f"a rafale run dir or a hub id")
    if not is_hub_id(weights):
        raise ModelError(f"{path}: no such directory; expected an HF-layout model dir (config.json + "
                         f"model.safetensors), a rafale run dir or a hub id like EleutherAI/pythia-14m")
    return download(str(weights))


def download(repo_id: str) -> Path:
    """Fetch a hub model's config, safetensors and tokenizer files (or reuse the cached copy)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                            RepositoryNotFoundError)
    except ImportError:
        raise ModelError(f"{repo_id!r} is not a local directory, and fetching it from the hub needs "
                         f"huggingface_hub: pip install huggingface_hub") from None
    local_copy = (f"download it where there is network (`hf download {repo_id} --local-dir DIR`) and set "
                  f"model.weights (or the command's path) to DIR")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise ModelError(f"{repo_id!r} is not a local directory and the hub cannot be reached "
                         f"(offline, or HF_HUB_OFFLINE=1) with no cached copy; {local_copy}") from None
    except GatedRepoError:
        raise ModelError(f"{repo_id!r} is gated on the hub; accept its licence and log in "
                         f"(`hf auth login`), or {local_copy}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo_id!r} is neither a local directory nor a model on the hub") from None


def checkpoint_name(path: Path) -> str:
    """A readable name for a located checkpoint: the run for a run's final/, the repository for a hub snapshot."""
    path = Path(path).resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.parent.name if path.name == "final" else path.name


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def read_hf_config(path: Path) -> dict:
    """config.json of an HF-layout dir, as a dict.

    Raises:
        ModelError: no such directory, or no config.json in it (the message lists what is there).
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such directory; expected an HF-layout model dir (config.json + "
                         f"model.safetensors)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json ({listing(path)}); expected an HF-layout model dir")
    return read_json(path / "config.json")


def unreadable(file: Path, e: BaseException) -> ModelError:
    return ModelError(f"{file}: not a readable safetensors file ({e}); was the download or copy cut short?")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF-layout dir: model.safetensors, or the shards model.safetensors.index.json lists.

    Raises:
        ModelError: no safetensors weights (pickles are named as such), a bad index, a missing shard.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelError(f"{index}: no 'weight_map' object; expected a safetensors shard index")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (path / shard).is_file():
                raise ModelError(f"{index}: lists shard {shard!r}, which is not in {path}")
        return [path / shard for shard in shards]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ModelError(
            f"{path}: only pickle weights (*.bin/*.pt), no safetensors ({listing(path)}); rafale reads safetensors "
            "only. Convert once with transformers: AutoModel...from_pretrained(dir).save_pretrained(dir)"
        )
    raise ModelError(f"{path}: no model.safetensors or model.safetensors.index.json ({listing(path)}); "
                     f"rafale reads safetensors weights only")


def check_readable_weights(path: Path) -> None:
    """Fail fast, before any data work, on an HF-layout dir whose weights rafale cannot read (see
    weight_files), or whose files have a header that does not parse or data cut short. Reads only headers.
    """
    for file in weight_files(path):
        try:
            with safe_open(file, framework="pt") as f:  # checks the header covers the file: no cut-short data
                f.keys()
        except (SafetensorError, OSError) as e:
            raise unreadable(file, e) from None


def read_hf_weights(path: Path) -> dict:
    """All tensors of an HF-layout dir (see weight_files for the errors it raises)."""
    tensors = {}
    for file in weight_files(path):
        try:
            tensors.update(load_file(file))
        except (SafetensorError, OSError) as e:
            raise unreadable(file, e) from None
    return tensors


def write_hf_dir(out, hf_config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write config.json and model.safetensors into `out` (created if missing); transformers reads the pair.

    Each file is written under a temporary name and renamed, so a failure leaves no half-written file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, tmp, metadata={"format": "pt"})
    write_json(out / "config.json", hf_config)
    return out
