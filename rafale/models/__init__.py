"""Models: the decoder (GPT-NeoX/Pythia and Llama families), the registry of named configs, HF weights.

    from rafale.models import from_pretrained, get_config, Decoder
    model = from_pretrained("runs/quickstart")          # a run dir, its final/, or any HF-layout dir
    model = Decoder(get_config("pythia-14m", n_layer=2))  # from scratch, random init

Importing this package imports torch and safetensors, never transformers.
"""

from pathlib import Path
from typing import Optional

import torch

from rafale.errors import ModelError
from rafale.models.decoder import Decoder, DecoderConfig, KVCache
from rafale.models.registry import get_config, list_models
from rafale.models.weights import export_hf, load_hf_checkpoint

__all__ = [
    "Decoder", "DecoderConfig", "KVCache", "export_hf", "from_pretrained", "get_config", "list_models",
    "load_hf_checkpoint",
]


def from_pretrained(path, device="cpu", dtype: Optional[torch.dtype] = None) -> Decoder:
    """A Decoder with the weights of an HF-layout dir or a rafale run dir, in eval mode.

    Args:
        path: a dir with config.json + model.safetensors (or a sharded index), or a run dir whose
            `final/` holds them.
        device: where the weights go.
        dtype: parameter dtype; None keeps float32 whatever the checkpoint stores.
    Raises:
        ModelError: see load_hf_checkpoint.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        if (path / "final").is_dir():
            path = path / "final"
        elif (path / "checkpoints").is_dir():
            raise ModelError(f"{path}: this run has no final/ export yet (did it finish?)")
    config, state_dict = load_hf_checkpoint(path)
    with torch.device("meta"):
        model = Decoder(config)  # no memory and no random init: the checkpoint fills everything
    model.to_empty(device=device)
    model.to(dtype or torch.float32)
    model.init_buffers()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
