"""A model and the tokenizer saved beside it, from any path a command accepts: the one place that
`rafale generate` and `rafale eval` resolve what they were given.

    model, tok = model_and_tokenizer("runs/quickstart")            # a run dir, its final/, an HF-layout dir
    model, tok = model_and_tokenizer("owner/name", decoder_for="rafale generate")   # or a hub id
"""

from __future__ import annotations

from pathlib import Path

from rafale.errors import DataError, ModelError


def model_and_tokenizer(path, *, decoder_for: str | None = None, device="cpu"):
    """(the model that `path` names, loaded once in eval mode, and the TokenizerInfo beside it).

    Args:
        path: a run directory, its final/, an HF-layout model directory or a hub id (checkpoint.locate).
        decoder_for: the command that needs a decoder (e.g. "rafale generate"); an encoder is then refused.
        device: where the weights go.
    Raises:
        ModelError: `path` is not a model, or holds an encoder where `decoder_for` needs a decoder.
        DataError: no tokenizer.json beside the model.
    """
    from rafale.data.tokenizer import tokenizer_beside
    from rafale.models import CAUSAL_LMS, from_pretrained
    from rafale.models.checkpoint import locate
    from rafale.models.weights import hf_model_type

    model_dir = locate(path)  # a run dir's final/, or a hub id's downloaded copy
    try:
        tok = tokenizer_beside(model_dir)
    except DataError:
        if Path(path).expanduser().exists():
            raise
        raise DataError(f"{path}: the hub repository has no tokenizer.json (expected it in its download, "
                        f"{model_dir}); rafale needs a tokenizers-library tokenizer.json") from None
    model = from_pretrained(model_dir, device=device)
    if decoder_for and not isinstance(model, CAUSAL_LMS):
        raise ModelError(f"{path} holds an encoder ({hf_model_type(model.config)}), which cannot generate text; "
                         f"{decoder_for} needs a decoder (gpt_neox, llama, qwen2 or rafale_retnet)")
    return model, tok
