"""Tokenizers: load a `tokenizer.json`, or train a byte-level BPE on the train split and cache it.

A trained tokenizer is cached under `$RAFALE_CACHE/tokenizers/`, keyed by the source fingerprint, the
held-out split and the training settings, so a second run finds it without reading any text. Training
is deterministic: the same corpus and settings give the same file, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rafale.config import DataConfig
from rafale.data.cache import build_entry, cache_root, file_sha256, key_hash, slug
from rafale.errors import DataError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Names other tokenizers use for end-of-text, tried in order when loading one.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")
PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")


@dataclass
class TokenizerInfo:
    tokenizer: Tokenizer
    path: Path  # the tokenizer.json in use
    sha256: str  # content hash: part of the data cache key
    eos_id: int
    pad_id: int | None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def load_tokenizer(path: str | Path) -> TokenizerInfo:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"data.tokenizer.path: {path} does not exist; expected a tokenizer.json file "
                        f"or a directory holding one")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    eos = _first_id(tok, EOS_CANDIDATES)
    if eos is None:
        raise DataError(f"{path}: no end-of-text token; expected one of {', '.join(EOS_CANDIDATES)}")
    return TokenizerInfo(tok, path, file_sha256(path), eos, _first_id(tok, PAD_CANDIDATES))


def tokenizer_beside(model_path: str | Path) -> TokenizerInfo:
    """The tokenizer saved with a model: in the directory itself or in its final/ (a run directory)."""
    path = Path(model_path)
    for candidate in (path / "tokenizer.json", path / "final" / "tokenizer.json"):
        if candidate.is_file():
            return load_tokenizer(candidate)
    raise DataError(f"{path}: no tokenizer.json here or in {path / 'final'}; expected a run directory or a "
                    f"model directory saved by rafale")


def _first_id(tok: Tokenizer, names) -> int | None:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def train_bpe(docs: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[EOS_TOKEN, PAD_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def get_tokenizer(cfg: DataConfig, source_fp: dict, train_docs: Callable[[], list[str]],
                  log=print) -> TokenizerInfo:
    """The tokenizer for `cfg`: loaded from `cfg.tokenizer.path`, or trained (cached) on the train docs.

    `train_docs` is called only when a tokenizer must be trained, so a cache hit reads no text.
    """
    if cfg.tokenizer.path is not None:
        return load_tokenizer(cfg.tokenizer.path)
    t = cfg.tokenizer.train
    parts = {"source": source_fp, "eval_split": cfg.eval_split, "split_seed": cfg.seed,
             "type": t.type, "vocab_size": t.vocab_size, "min_frequency": t.min_frequency}
    final = cache_root() / "tokenizers" / f"{slug(cfg.source)}-{t.type}{t.vocab_size}-{key_hash(parts)}"
    with build_entry(final) as tmp:
        if tmp is not None:
            tok = train_bpe(train_docs(), t.vocab_size, t.min_frequency)
            tok.save(str(tmp / "tokenizer.json"))
            n = tok.get_vocab_size()
            short = f" (the corpus offers no more merges under min_frequency {t.min_frequency})" if n < t.vocab_size else ""
            log(f"trained a {t.type.upper()} tokenizer on the train split: {n} tokens of {t.vocab_size} asked{short}")
    return load_tokenizer(final / "tokenizer.json")
