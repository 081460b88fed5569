"""`rafale eval --data`: loss, perplexity and bits per byte of a decoder on any text.

    r = evaluate_text(model, tok, texts, block_size=128, context=64)
    r.bits_per_byte, r.perplexity, r.tokens, r.bytes

What is scored: each document is tokenized on its own and preceded by the tokenizer's BOS token (EOS
when it has none), which is only context; every token of the document is then scored exactly once, given
the document before it. A document longer than `block_size` tokens is read through a sliding window:
the first window scores its first block_size tokens; each next window moves by `stride = block_size -
context` tokens and scores only the tokens it adds, so each of them sees at least `context` tokens of
the document before it (all of them, while the document is shorter than the window). context 0 means
disjoint windows (fastest); a larger context costs block_size / stride times the compute.

Bits per byte is the summed negative log-likelihood in bits divided by the UTF-8 bytes of the scored
text: unlike perplexity, it does not depend on how a tokenizer cuts the text, so it compares models
with different tokenizers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from rafale.eval.scoring import Row, score


@dataclass
class TextScores:
    loss: float  # mean negative log-likelihood per scored token, in nats
    perplexity: float  # exp(loss)
    bits_per_byte: float  # summed NLL in bits / UTF-8 bytes of the scored text
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the documents
    documents: int
    windows: int  # forward rows: one per document that fits, more for long ones
    block_size: int
    context: int
    seconds: float
    tokens_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, block_size: int, context: int) -> list[tuple[int, int, int]]:
    """The windows that score tokens 1..n_tokens of a sequence (token 0 is the prefix, never scored).

    Returns:
        (start, end, n_scored) per window: the model reads tokens[start:end] and scores the targets
        tokens[end - n_scored + 1 : end + 1]; every target is scored by exactly one window.
    """
    if not 0 <= context < block_size:
        raise ValueError(f"context {context} must be in [0, block_size {block_size})")
    stride = block_size - context
    end = min(block_size, n_tokens)
    out = [(0, end, end)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        out.append((new_end - block_size, new_end, new_end - end))
        end = new_end
    return out


def evaluate_text(model, tok, texts: Sequence[str], *, block_size: Optional[int] = None, context: Optional[int] = None,
                  batch_size: int = 8, advance: Optional[Callable[[int], None]] = None,
                  on_total: Optional[Callable[[int], None]] = None) -> TextScores:
    """Score every document of `texts` with a decoder (see the module docstring for what is scored).

    Args:
        block_size: window length in tokens; default the model's max_seq_len.
        context: minimum left context of a token in a later window; default half the block.
        on_total, advance: told the number of windows, then of windows done (a progress bar).
    """
    t0 = time.perf_counter()
    block_size = block_size or model.config.max_seq_len
    context = block_size // 2 if context is None else context
    prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
    encoded = [e.ids for e in tok.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
    rows = []
    for ids in encoded:
        tokens = [prefix] + ids
        rows += [Row(tokens[start:end + 1], n) for start, end, n in windows(len(ids), block_size, context)
                 if n > 0]
    if on_total:
        on_total(len(rows))
    scores = score(model, rows, batch_size, advance=advance, greedy=False)
    nll = -sum(s.logprob for s in scores)
    n_tokens = sum(s.n for s in scores)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    seconds = time.perf_counter() - t0
    loss = nll / max(n_tokens, 1)
    return TextScores(loss=loss, perplexity=math.exp(min(loss, 700)), bits_per_byte=nll / math.log(2) / max(n_bytes, 1),
                      tokens=n_tokens, bytes=n_bytes, documents=len(texts), windows=len(rows), block_size=block_size,
                      context=context, seconds=round(seconds, 3), tokens_per_second=round(n_tokens / max(seconds, 1e-9), 1))
