"""Tokenizers: load a `tokenizer.json` (file, folder or hub id), or train one on the train split and cache it.

Trainable types: `bpe` (byte-level, GPT-2 style: any text round-trips), `wordpiece` (BERT style) and
`unigram` (SentencePiece style, Metaspace). The special tokens default to the pipeline's needs:
`<|endoftext|>` and `<|pad|>` for causal_lm/sft, `[PAD] [UNK] [CLS] [SEP] [MASK]` for classification/mlm.
BPE training is deterministic: the same corpus and settings give the same file, byte for byte.
WordPiece and Unigram are not (their trainers break ties in hash-map order, so two trainings can differ
in a few tokens or scores); that is harmless here because a trained tokenizer is cached and reused, and the data cache is
keyed by the tokenizer file's content.

A trained tokenizer is cached under `$RAFALE_CACHE/tokenizers/`, keyed by the source fingerprint (which
holds the split settings) and the training settings, so a second run finds it without reading any text;
one whose tokenizer.json no longer loads is trained again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from rafale.config import DataConfig
from rafale.data.cache import build_entry, cache_root, file_sha256, key_hash, slug
from rafale.errors import DataError
from rafale.files import is_hub_id

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Names other tokenizers use for end-of-text, tried in order when loading one.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")
PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")
BOS_CANDIDATES = ("<|startoftext|>", "<s>", "<bos>", "<|begin_of_text|>", "[CLS]")
CLS_CANDIDATES = ("[CLS]", "<s>", "<cls>")
SEP_CANDIDATES = ("[SEP]", "</s>", "<sep>")
MASK_CANDIDATES = ("[MASK]", "<mask>")
DECODER_SPECIALS = [EOS_TOKEN, PAD_TOKEN]
ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TokenizerInfo:
    tokenizer: Tokenizer
    path: Path  # the tokenizer.json in use
    sha256: str  # content hash: part of the data cache key
    eos_id: int
    pad_id: int | None
    bos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def special(self, candidates, what: str) -> int:
        i = _first_id(self.tokenizer, candidates)
        if i is None:
            raise DataError(f"{self.path}: no {what} token; expected one of {', '.join(candidates)} "
                            f"(train one with data.tokenizer.train.special_tokens including it)")
        return i

    def special_ids(self) -> list[int]:
        return sorted(i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special)

    def describe(self) -> str:
        name = lambda i: "-" if i is None else f"{self.tokenizer.id_to_token(i)}={i}"
        return (f"tokenizer {self.path} ({self.vocab_size} tokens; bos {name(self.bos_id)}, "
                f"eos {name(self.eos_id)}, pad {name(self.pad_id)})")


def load_tokenizer(path: str | Path) -> TokenizerInfo:
    """Load a tokenizer.json, a directory holding one, or (when no such path exists) a hub id."""
    given = str(path)
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    # a path that names a file (tokenizer.json) is a path, never a hub id: no network call for a typo
    if not path.is_file() and not path.parent.exists() and is_hub_id(given) and not given.endswith(".json"):
        path = _from_hub(given)
    if not path.is_file():
        raise DataError(f"data.tokenizer.path: {path} does not exist; expected a tokenizer.json file, "
                        f"a directory holding one, or a hub id (owner/name)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    eos = _first_id(tok, EOS_CANDIDATES)
    if eos is None:
        raise DataError(f"{path}: no end-of-text token; expected one of {', '.join(EOS_CANDIDATES)}")
    return TokenizerInfo(tok, path, file_sha256(path), eos, _first_id(tok, PAD_CANDIDATES),
                         _first_id(tok, BOS_CANDIDATES))


def _from_hub(repo: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, "tokenizer.json"))
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"data.tokenizer.path: cannot fetch tokenizer.json of hub id {repo!r}: {first}; without "
                        f"network, download it once (huggingface-cli download {repo} tokenizer.json) and set "
                        f"data.tokenizer.path to the file") from None


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


def train_tokenizer(docs: list[str], type: str, vocab_size: int, min_frequency: int,
                    special_tokens: list[str]) -> Tokenizer:
    """Train a tokenizer of `type` on `docs`; deterministic for the same inputs."""
    if type == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif type == "wordpiece":
        unk = "[UNK]" if "[UNK]" in special_tokens else special_tokens[0]
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            show_progress=False, special_tokens=special_tokens)
    else:  # unigram
        unk = next((t for t in special_tokens if "unk" in t.lower()), None)
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False,
                                          special_tokens=special_tokens, unk_token=unk)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def default_specials(pipeline: str) -> list[str]:
    return ENCODER_SPECIALS if pipeline in ("classification", "mlm") else DECODER_SPECIALS


def get_tokenizer(cfg: DataConfig, source_fp: dict, train_docs: Callable[[], list[str]],
                  log=print) -> TokenizerInfo:
    """The tokenizer for `cfg`: loaded from `cfg.tokenizer.path`, or trained (cached) on the train docs.

    `train_docs` is called only when a tokenizer must be trained, so a cache hit reads no text.
    """
    if cfg.tokenizer.path is not None:
        return load_tokenizer(cfg.tokenizer.path)
    t = cfg.tokenizer.train
    specials = t.special_tokens or default_specials(cfg.pipeline)
    parts = {"source": source_fp, "type": t.type, "vocab_size": t.vocab_size,
             "min_frequency": t.min_frequency, "special_tokens": specials}
    from rafale.data.sources import describe

    final = cache_root() / "tokenizers" / f"{slug(describe(cfg))}-{t.type}{t.vocab_size}-{key_hash(parts)}"
    with build_entry(final, log, check=damage) as tmp:
        if tmp is not None:
            docs = train_docs()  # reads the source: a bad one fails here, before any training
            tok = train_tokenizer(docs, t.type, t.vocab_size, t.min_frequency, specials)
            tok.save(str(tmp / "tokenizer.json"))
            n = tok.get_vocab_size()
            short = f" (the corpus offers no more merges under min_frequency {t.min_frequency})" if n < t.vocab_size else ""
            log(f"trained a {t.type} tokenizer on {len(docs):,} train documents: {n} tokens of {t.vocab_size} asked{short}")
    return load_tokenizer(final / "tokenizer.json")


def damage(entry: Path) -> str | None:
    """What is wrong with a cached trained tokenizer, or None: its tokenizer.json must load."""
    try:
        Tokenizer.from_file(str(entry / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception for missing and malformed files
        return f"tokenizer.json does not load ({str(e).splitlines()[0][:120]})"
    return None
