"""`rafale export`: a run (or any model dir rafale reads) as a Hugging Face-layout dir, checked by transformers.

    export_run("runs/quickstart", "out/quickstart-hf")
      -> out/quickstart-hf/config.json, model.safetensors, tokenizer.json, tokenizer_config.json

The weights go through the same exporter as a run's final/ (weights.export_model), so the
output is what transformers' Auto classes load. A rafale tokenizer.json is plain `tokenizers` JSON; the
tokenizer_config.json written next to it names PreTrainedTokenizerFast and the special tokens, which is
all AutoTokenizer needs. Verification (transformers installed, not --no-verify) reloads the written dir
with the Auto class of its architecture (for a RetNet, the one rafale.hf registers) and compares logits on
a few tokens, and AutoTokenizer's ids with the tokenizer's, before anything is moved into place: the output dir appears complete, verified, or not at all.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from rafale.data.tokenizer import (BOS_CANDIDATES, CLS_CANDIDATES, EOS_CANDIDATES, MASK_CANDIDATES, PAD_CANDIDATES,
                                   SEP_CANDIDATES)
from rafale.errors import ModelError
from rafale.files import replace_dir, write_json
from rafale.models.checkpoint import listing, locate

# Special tokens that tokenizer_config.json names when the vocabulary has them, by the names rafale's
# tokenizer loader looks for (its own first, then those of BERT/RoBERTa/GPT-NeoX/Llama tokenizers).
SPECIAL_TOKENS = {"eos_token": EOS_CANDIDATES, "bos_token": BOS_CANDIDATES, "pad_token": PAD_CANDIDATES,
                  "unk_token": ("<unk>", "[UNK]"), "cls_token": CLS_CANDIDATES, "sep_token": SEP_CANDIDATES,
                  "mask_token": MASK_CANDIDATES}
# Copied as they are when the source has them (a run's final/ has tokenizer.json and generation_config.json).
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                "merges.txt", "tokenizer.model", "generation_config.json")
AUTO_CLASSES = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM",
                "classification": "AutoModelForSequenceClassification", "backbone": "AutoModel"}
VERIFY_TEXT = "Once upon a time, a small model was exported."


@dataclass
class ExportResult:
    out: Path
    family: str  # the transformers model_type
    head: str
    n_params: int
    files: list[str]
    verified: Optional[str]  # what was checked, or None
    not_verified_why: Optional[str] = None


def tokenizer_config(tokenizer_json: Path, max_len: int) -> dict:
    """A minimal tokenizer_config.json for a bare tokenizer.json: the fast tokenizer class and its special tokens."""
    from tokenizers import Tokenizer

    try:
        vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ModelError(f"{tokenizer_json}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False}
    for key, candidates in SPECIAL_TOKENS.items():
        token = next((t for t in candidates if t in vocab), None)
        if token is not None:
            config[key] = token
    return config


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: is a file; expected a directory to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ModelError(f"{out}: not empty ({listing(out)}); choose another directory or pass --force to replace it")


def _verify(model, head: str, tmp: Path, tokenizer_json: Optional[Path]) -> str:
    """Reload `tmp` with transformers and compare; returns what was checked. Raises RuntimeError on a mismatch."""
    import transformers

    import rafale.hf  # noqa: F401  registers rafale_retnet with the Auto classes
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar would interleave with our lines
    auto = getattr(transformers, AUTO_CLASSES[head])
    hf_model = auto.from_pretrained(tmp, attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    ids = (torch.arange(8) * 7 + 3) % vocab
    ids = ids[None]  # (1, 8)
    with torch.no_grad():
        ours = model(ids).float()
        out = hf_model(input_ids=ids)
        theirs = (out.last_hidden_state if head == "backbone" else out.logits).float()
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(f"export verification failed: {AUTO_CLASSES[head]} logits differ from rafale's "
                           f"by {diff:.3g}")
    checked = f"{type(hf_model).__name__} logits match on {ids.numel()} tokens (max diff {diff:.1e})"
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        hf_tok = transformers.AutoTokenizer.from_pretrained(tmp)
        expected = Tokenizer.from_file(str(tokenizer_json)).encode(VERIFY_TEXT, add_special_tokens=False).ids
        got = hf_tok(VERIFY_TEXT, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise RuntimeError(f"export verification failed: AutoTokenizer gives {got[:8]}..., "
                               f"tokenizers {expected[:8]}...")
        checked += f"; AutoTokenizer ({type(hf_tok).__name__}) encodes like tokenizer.json"
    return checked


def export_run(src, out, *, force: bool = False, verify: bool = True) -> ExportResult:
    """Write the model of `src` (a run dir, its final/, or an HF-layout dir) to `out` in HF layout.

    Args:
        src: what to export; anything rafale.models.from_pretrained reads.
        out: the output directory; it must be missing or empty unless `force`.
        force: replace a non-empty `out` (only once the new export is complete and verified).
        verify: reload with transformers (when installed) and compare logits before moving into place.
    Raises:
        ModelError: a bad source (see from_pretrained), a non-empty `out` without force.
        RuntimeError: transformers loads the export but computes different logits (a bug in rafale).
    """
    from rafale.models import export_model, load_pretrained
    from rafale.models.weights import hf_model_type

    out = Path(out).expanduser()
    _prepare_out_dir(out, force)
    path = locate(src)
    model, report = load_pretrained(path)
    family = hf_model_type(model.config)
    tokenizer_json = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the export's permissions
    try:
        export_model(model, tmp)
        for name in COPIED_FILES:
            if (path / name).is_file():
                shutil.copyfile(path / name, tmp / name)
        if tokenizer_json is not None and not (path / "tokenizer_config.json").is_file():
            write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer_json, model.config.max_seq_len))
        verified, why_not = None, None
        if not verify:
            why_not = "--no-verify"
        else:
            try:
                import transformers  # noqa: F401
            except ImportError:
                why_not = "transformers is not installed (pip install transformers)"
            else:
                verified = _verify(model, report.head, tmp, tokenizer_json)
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:  # safetensors writes 0600; an export is meant to be shared like any other file
            os.chmod(tmp / name, 0o666 & ~umask)
        replace_dir(tmp, out)  # an existing out (--force, checked above) goes only now that the new one is complete
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    return ExportResult(out, family, report.head, n_params, files, verified, why_not)
