"""Log-likelihoods of chosen tokens under a decoder: the one scoring routine behind `rafale eval`.

    rows = [Row([eos, 17, 4, 9], n_scored=3), Row([eos, 17, 4, 12], n_scored=3)]
    scores = score(model, rows, batch_size=8)     # [Score(logprob, greedy, n), ...] in the order given

A Row is a token sequence whose last `n_scored` tokens are scored, each given every token before it
(the model reads tokens[:-1]). Three things keep this fast without changing a number:

- Rows are sorted by length before batching, so a batch pads little; the padding goes on the right,
  where causal attention never lets a real token see it, so no mask is built (SDPA's causal fast path).
- Rows that share their unscored part (a multiple-choice question and its answers) share its
  computation, when that saves more tokens than the rows add: the context runs once through the model into a KV cache, then every answer runs on
  top of it, attending to the cached keys. A four-choice question costs one context instead of four.
- Only the scored positions go through the output head and the softmax: a 100-token context followed by
  a 3-token answer computes 3 rows of logits, not 103.
- Whether each scored token is the model's first choice costs a pass over every row of logits; callers
  that only want log-likelihoods (perplexity, rolling windows) say `greedy=False` and skip it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

# Logit elements computed at once (rows x vocabulary) when scoring hidden states: 8 MB in float32. The
# output head's matmul runs near its speed from a few hundred rows on, and torch's fused log_softmax reads
# each row once, so no larger buffer pays (measured at one thread, hidden 128: 256 rows at vocabulary
# 8192 and 128 rows at 50304 score 1.3-1.8x faster than 32 rows; materialising every position's logits
# is slower again and costs memory).
LOGITS_CHUNK = 2**21
MIN_CHUNK_ROWS = 128  # a large vocabulary still gets matmuls tall enough to run at speed


@dataclass(frozen=True)
class Row:
    tokens: Sequence[int]  # the whole sequence: context, then the scored tokens
    n_scored: int  # how many of the last tokens are scored; at least one token of context stays before them

    @property
    def context(self) -> tuple[int, ...]:
        return tuple(self.tokens[: len(self.tokens) - self.n_scored])


@dataclass
class Score:
    logprob: float  # sum of log p(token | everything before it) over the scored tokens, in nats
    greedy: Optional[bool]  # every scored token is the model's most likely next token; None when not asked
    n: int  # tokens scored


def score(model, rows: Sequence[Row], batch_size: int = 8,
          advance: Optional[Callable[[int], None]] = None, greedy: bool = True) -> list[Score]:
    """Score every row with `model` (a rafale Decoder in eval mode); results in the order of `rows`.

    Args:
        batch_size: rows per forward pass (a shared context counts once per row that uses it).
        advance: called with the number of rows finished after each batch (a progress bar).
        greedy: find whether each row's tokens are the model's first choices (Score.greedy); else None.
    """
    max_len = model.config.max_seq_len
    for i, row in enumerate(rows):
        if not 1 <= row.n_scored < len(row.tokens) or len(row.tokens) - 1 > max_len:
            raise ValueError(f"row {i}: {len(row.tokens)} tokens, {row.n_scored} scored; expected at least one "
                             f"token of context and at most {max_len + 1} tokens (the model's max_seq_len + 1)")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.context, []).append(i)
    # Sharing a context pays when it saves more tokens than the rows add (a question and its short answers);
    # rows that share only a prefix token (lm-eval's rolling windows) go through the plain path.
    from rafale.models import Decoder

    copyable = isinstance(model, Decoder)  # a KV cache is copied per row; a RetNet's recurrent state is not
    shares = {c: copyable and (len(m) - 1) * len(c) >= sum(rows[i].n_scored for i in m) for c, m in groups.items()}
    alone = [i for c, members in groups.items() if not shares[c] for i in members]
    shared = [(c, members) for c, members in groups.items() if shares[c]]
    out: list[Optional[Score]] = [None] * len(rows)
    with torch.inference_mode():
        collect = functools.partial(_collect, model, greedy=greedy)
        _score_alone(model, rows, alone, batch_size, out, advance, collect)
        _score_shared(model, rows, shared, batch_size, out, advance, collect)
    return out  # type: ignore[return-value]


def _score_alone(model, rows, idx: list[int], batch_size: int, out: list, advance, collect) -> None:
    """Rows with a context of their own: longest first, right-padded, one plain causal forward per batch."""
    device = model.wte.weight.device
    idx = sorted(idx, key=lambda i: -len(rows[i].tokens))
    for start in range(0, len(idx), batch_size):
        batch = idx[start:start + batch_size]
        T = len(rows[batch[0]].tokens) - 1
        x = torch.zeros(len(batch), T, dtype=torch.long)
        picks, targets = [], []
        for b, i in enumerate(batch):
            tokens, n = rows[i].tokens, rows[i].n_scored
            x[b, : len(tokens) - 1] = torch.as_tensor(tokens[:-1])
            picks.append(b * T + torch.arange(len(tokens) - 1 - n, len(tokens) - 1))
            targets.extend(tokens[-n:])
        h = model.hidden_states(x.to(device))  # (B, T, C)
        h = h.reshape(-1, h.size(-1))[torch.cat(picks).to(device)]  # (scored, C)
        collect(h, targets, [rows[i].n_scored for i in batch], batch, out)
        if advance:
            advance(len(batch))


def _score_shared(model, rows, groups: list, batch_size: int, out: list, advance, collect) -> None:
    """Groups of rows with one context: the contexts of a batch of groups run once into a KV cache, then
    the scored tokens of every row (all but the last, which is only a target) run on top of it."""
    device = model.wte.weight.device
    max_len = model.config.max_seq_len
    groups = sorted(groups, key=lambda g: -len(g[0]))
    batches, current, rows_in, longest_tail = [], [], 0, 0
    for context, members in groups:
        tail = max(rows[i].n_scored for i in members) - 1
        fits = current and rows_in + len(members) <= batch_size \
            and len(current[0][0]) + max(longest_tail, tail) <= max_len
        if current and not fits:
            batches.append(current)
            current, rows_in, longest_tail = [], 0, 0
        current.append((context, members))
        rows_in, longest_tail = rows_in + len(members), max(longest_tail, tail)
    if current:
        batches.append(current)

    for batch in batches:
        G, P = len(batch), len(batch[0][0])  # contexts in the batch, the longest context
        members = [i for _, m in batch for i in m]
        Q = max(rows[i].n_scored for i in members) - 1  # the longest run of scored tokens fed as input
        cache = model.make_kv_cache(G, P + Q)
        x = torch.zeros(G, P, dtype=torch.long)
        for g, (context, _) in enumerate(batch):
            x[g, : len(context)] = torch.as_tensor(context)
        h_context = model.hidden_states(x.to(device), kv_cache=cache)  # (G, P, C)
        # the last context position predicts each row's first scored token
        first = h_context[torch.arange(G, device=device), torch.tensor([len(c) - 1 for c, _ in batch], device=device)]  # (G, C)
        group_of = torch.tensor([g for g, (_, m) in enumerate(batch) for _ in m])
        h_rest = None
        if Q > 0:
            R = len(members)
            rest = model.make_kv_cache(R, P + Q)
            rest.k.copy_(cache.k.index_select(1, group_of.to(device)))
            rest.v.copy_(cache.v.index_select(1, group_of.to(device)))
            rest.pos = P
            keep = torch.ones(R, P + Q, dtype=torch.bool)
            y = torch.zeros(R, Q, dtype=torch.long)
            positions = torch.zeros(R, Q, dtype=torch.long)
            for r, i in enumerate(members):
                n_context = len(rows[i].tokens) - rows[i].n_scored
                keep[r, n_context:P] = False  # the padding after a shorter context
                inputs = rows[i].tokens[n_context:-1]
                y[r, : len(inputs)] = torch.as_tensor(inputs, dtype=torch.long)
                positions[r] = torch.arange(n_context, n_context + Q)
            h_rest = model.hidden_states(y.to(device), position_ids=positions.to(device),
                                         attention_mask=keep.to(device), kv_cache=rest)  # (R, Q, C)
        picked, targets = [], []
        for r, i in enumerate(members):
            n = rows[i].n_scored
            picked.append(first[int(group_of[r])][None])
            if n > 1:
                picked.append(h_rest[r, : n - 1])
            targets.extend(rows[i].tokens[-n:])
        collect(torch.cat(picked), targets, [rows[i].n_scored for i in members], members, out)
        if advance:
            advance(len(members))


def _collect(model, h: torch.Tensor, targets: list[int], counts: list[int], which: list[int], out: list,
             greedy: bool = True) -> None:
    """Score the hidden states h (N, C) of N scored positions against their targets; row which[k] owns the
    next counts[k] of them."""
    target = torch.as_tensor(targets, device=h.device)
    logprob = torch.empty(len(targets), device=h.device)
    first = torch.empty(len(targets), dtype=torch.bool, device=h.device) if greedy else None
    step = max(MIN_CHUNK_ROWS, LOGITS_CHUNK // model.config.vocab_size)
    for s in range(0, len(targets), step):
        logits = model.lm_head(h[s:s + step]).float()  # (n, V)
        t = target[s:s + step, None]
        if first is not None:
            first[s:s + step] = logits.argmax(-1) == t[:, 0]
        # one fused kernel (max, sum of exponentials, subtraction) per row while the row is in cache
        logprob[s:s + step] = torch.log_softmax(logits, -1, out=logits).gather(1, t)[:, 0]
    row_of = torch.repeat_interleave(torch.arange(len(counts), device=h.device),
                                     torch.as_tensor(counts, device=h.device))
    sums = torch.zeros(len(counts), dtype=torch.float64, device=h.device).index_add_(0, row_of, logprob.double())
    misses = None
    if first is not None:
        misses = torch.zeros(len(counts), dtype=torch.long, device=h.device)
        misses = misses.index_add_(0, row_of, (~first).long()).tolist()
    for k, (i, s) in enumerate(zip(which, sums.tolist())):
        out[i] = Score(s, None if misses is None else misses[k] == 0, counts[k])
