"""`model.hf`: train a transformers causal LM instead of a rafale model, through Composer's HuggingFaceModel.

For architectures rafale has no model for (or to compare against transformers' own implementation). The
batch is the causal_lm pipeline's `{"input_ids", "labels"}` (labels may be the input_ids themselves:
transformers shifts them inside the model). transformers is an optional dependency: it is imported only here.
"""

from __future__ import annotations

from rafale.errors import ModelError


def build_hf_model(path_or_id):
    """A composer.models.HuggingFaceModel around AutoModelForCausalLM.from_pretrained(path_or_id).

    Args:
        path_or_id: an HF-layout dir, a rafale run dir or its final/, or a hub id (fetched like model.weights:
            config, safetensors and tokenizer files only).
    Returns:
        the Composer model, with token cross-entropy and perplexity as its eval metrics, and the tokenizer
        when the checkpoint has one.
    Raises:
        ModelError: transformers is not installed, or the checkpoint cannot be found or read (safetensors only).
    """
    try:
        import transformers
    except ImportError:
        raise ModelError("model.hf needs transformers: pip install transformers") from None
    from composer.metrics import LanguageCrossEntropy, LanguagePerplexity
    from composer.models import HuggingFaceModel

    from rafale.models.checkpoint import locate, read_hf_config, read_hf_weights

    path = locate(path_or_id)
    read_hf_config(path)  # rafale's one-line errors for a missing config or weights, before transformers' own
    if not any(path.glob("*.safetensors")):
        read_hf_weights(path)  # raises: no safetensors (and names pickles as such)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"model.hf: transformers cannot load {path} as a causal LM ({why})") from None
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return HuggingFaceModel(model, tokenizer=tokenizer, use_logits=True, shift_labels=True,
                            eval_metrics=[LanguageCrossEntropy(), LanguagePerplexity()])
