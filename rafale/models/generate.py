"""Text generation with a preallocated KV cache: batched, streaming, greedy or sampled.

Layers, each usable on its own:

    sample(logits, temperature, top_k, top_p, generator)   pure: (B, V) logits -> (B,) token ids
    next_token(logits, seen, settings, generator)          repetition penalty, then sample
    generate(model, prompts_ids, ...)                      iterator: one list of B new ids per step
    generate_texts(model, tok, prompts, ...)               strings in, Completion objects out (stop strings)
    complete(model, tok, prompt, max_new_tokens)           one greedy continuation, as text

    from rafale.models import from_pretrained
    from rafale.data.tokenizer import tokenizer_beside
    model, tok = from_pretrained("runs/quickstart"), tokenizer_beside("runs/quickstart")
    for ids in generate(model, [tok.tokenizer.encode("Once").ids], max_new_tokens=20):
        print(ids)                                        # [token] per step, None once a row is done

Batched prompts of different lengths are left-padded: every row's last prompt token sits in the same
column, so each step appends one column to all rows. Padding is masked out of attention and rotary
positions count real tokens only, so a row decodes exactly as it would alone. A batch without padding
passes no mask and no positions at all (the decoder's fastest path). Finished rows keep a slot in the
batch (removing them would mean copying the cache) but their outputs are ignored, and the loop ends when
every row is done. A RetNet goes through the same loop: its `make_kv_cache` gives its recurrent state,
whose size does not grow with the text. The `rafale generate` command's terminal and file I/O is
rafale/prompts.py.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from rafale.errors import ConfigError
from rafale.models import decode
from rafale.models.decode import DecodeStep

FINISH_EOS, FINISH_STOP, FINISH_LENGTH = "eos", "stop", "length"
# On CPU, a few rows of hidden state times the output head laid out as (C, V) run up to 2-3x faster than
# F.linear's (V, C) layout (pythia-14m, one row: 66 vs 123 us at vocab 8192, 0.7 vs 2.3 ms at 50304), so
# generate() decodes with a transposed copy of the head; above this size the copy costs too much memory.
HEAD_COPY_MAX_BYTES = 256 * 2**20
# Compiling the decoding step: the gain expected per device and the compile time it must pay back. On CPU
# the compiled step measured no faster than the eager DecodeStep (pythia-14m shape, torch 2.7, 2 cores)
# after 13 s (warm cache) to 90 s (cold) of compiling, so CPU never compiles unless asked. On a GPU a step
# of a small model is kernel launches, which a CUDA graph replays at once: assumed 4x, not yet measured here.
COMPILED_SPEEDUP = {"cpu": 1.0, "cuda": 4.0}
COMPILE_SECONDS = 60.0
MEASURED_STEPS = 8  # eager steps timed before deciding


# ---- Sampling: pure functions of logits ------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """How the next token is picked. temperature 0 is greedy (argmax); the defaults are greedy."""

    temperature: float = 0.0
    top_k: Optional[int] = None  # keep the k most likely tokens
    top_p: Optional[float] = None  # keep the smallest set of tokens whose probability reaches p
    repetition_penalty: Optional[float] = None  # > 1 discourages tokens already in the prompt or output

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float],
                   repetition_penalty: Optional[float] = None) -> None:
    """Raise ConfigError for a value out of range; the message names the CLI option too."""
    if not temperature >= 0:  # also catches NaN
        raise ConfigError(f"temperature (--temperature) must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k (--top-k) must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p (--top-p) must be in (0, 1], got {top_p}")
    if repetition_penalty is not None and not repetition_penalty > 0:
        raise ConfigError(f"repetition_penalty (--repetition-penalty) must be > 0 (1 is none), "
                          f"got {repetition_penalty}")


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token id per row of logits (B, V): argmax if temperature is 0 or top_k is 1, else a draw
    from softmax(logits / temperature) restricted to the top_k tokens and then to the top_p nucleus."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as transformers applies it: for tokens already seen (B, V bool),
    divide positive logits by `penalty` and multiply negative ones by it."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def next_token(logits: torch.Tensor, seen: Optional[torch.Tensor], settings: Sampling,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The next token id per row from the last position's logits (B, V)."""
    if settings.repetition_penalty not in (None, 1.0):
        logits = penalize_repeats(logits, seen, settings.repetition_penalty)
    return sample(logits, settings.temperature, settings.top_k, settings.top_p, generator)


# ---- The decoding loop -----------------------------------------------------------------------------------

def left_pad(prompts_ids: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(B, T) ids, right-aligned, and the (B, T) mask of real tokens (None when no row is padded)."""
    T = max(len(p) for p in prompts_ids)
    ids = torch.full((len(prompts_ids), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts_ids):
        ids[row, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, T - len(p):] = 1
    return ids, (None if bool(mask.all()) else mask)


def check_prompts(prompts_ids: Sequence[Sequence[int]], max_seq_len: int) -> None:
    if len(prompts_ids) == 0:
        raise ConfigError("no prompts given; expected at least one")
    for i, p in enumerate(prompts_ids):
        if len(p) == 0:
            raise ConfigError(f"prompt {i + 1} is empty; expected at least one token")
        if len(p) >= max_seq_len:
            raise ConfigError(f"prompt {i + 1} has {len(p)} tokens; the model attends to at most {max_seq_len} "
                              f"positions, so a prompt may have at most {max_seq_len - 1}")


def last_logits(model, input_ids, head_t: Optional[torch.Tensor] = None, **kw) -> torch.Tensor:
    """Logits (B, V) of the last position only: the output head on one (B, C) matrix, not on every
    prompt position (and a 2-D matmul is faster than a 3-D one). `head_t` is lm_head's weight as a
    contiguous (C, V) matrix, or None to call lm_head."""
    h = model.hidden_states(input_ids, **kw)[:, -1]
    return model.lm_head(h) if head_t is None else h @ head_t


def cache_len(total: int, max_seq_len: int) -> int:
    """The KV cache length for `total` positions when the step may be compiled: rounded up to a multiple
    of 256, so generations of similar lengths share one compiled graph (its shapes are fixed)."""
    return min(-(-total // 256) * 256, max_seq_len)


def compile_pays(device: torch.device, step_s: float, steps_left: int) -> bool:
    """Whether compiling the decoding step saves time overall: `steps_left` steps of `step_s` seconds
    (eager) made faster by the device's expected gain, against its expected compile time."""
    gain = COMPILED_SPEEDUP.get(device.type, 1.0)
    return gain > 1 and steps_left * step_s * (1 - 1 / gain) > COMPILE_SECONDS


@torch.inference_mode()
def generate(
    model,
    prompts_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    sampling: Sampling = Sampling(),
    eos_id: Optional[int] = None,
    seed: Optional[int] = None,
    pad_id: int = 0,
    is_done: Optional[Callable[[int, list[int]], bool]] = None,
    compiled: Optional[bool] = None,
    planned_steps: Optional[int] = None,
) -> Iterator[list[Optional[int]]]:
    """Yield, per step, the new token of every row (None for rows already finished).

    A row finishes after `eos_id` (which is yielded), after `max_new_tokens`, when the model's positions
    run out, or when `is_done(row, new_ids)` says so (stop strings). `seed` makes sampling reproducible.
    `compiled`: True compiles the decoding step, False never; None (auto) measures the first eager steps
    and compiles when `planned_steps` (default: this call's steps; more if other batches follow) pay for it.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens (--max-new-tokens) must be >= 1, got {max_new_tokens}")
    max_seq_len = model.config.max_seq_len
    check_prompts(prompts_ids, max_seq_len)
    device = model.lm_head.weight.device
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    B = len(prompts_ids)
    ids, mask = left_pad(prompts_ids, pad_id, device)
    T = ids.size(1)
    total = min(T + max_new_tokens, max_seq_len)  # the cache holds the prompt and every new token
    planned_steps = total - T if planned_steps is None else planned_steps

    step = DecodeStep.for_model(model) if decode.supports(model) else None  # None: RetNet, LoRA
    may_compile = step is not None and compiled is not False and (
        compiled or (COMPILED_SPEEDUP.get(device.type, 1.0) > 1 and step.compiled is not False))
    if may_compile:  # fixed shapes: a rounded length and the same buffers every time
        cache = step.cache(model, B, cache_len(total, max_seq_len))
        use_compiled = bool(compiled) or bool(step.compiled)
        if use_compiled:
            use_compiled = step.compile()
    else:
        cache, use_compiled = model.make_kv_cache(B, total, device=device), False

    positions = key_mask = None
    if mask is not None:  # per-row positions counting real tokens only, and a mask over all columns
        key_mask = torch.ones(B, cache.max_len if may_compile else total, dtype=torch.bool, device=device)
        key_mask[:, :T] = mask.bool()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seen = None
    if sampling.repetition_penalty not in (None, 1.0):
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts_ids):
            seen[row, list(p)] = True

    if step is not None:
        head_t = step.head if step.head.is_contiguous() else None
    else:
        head = model.lm_head.weight
        head_t = head.t().contiguous() if device.type == "cpu" and head.nbytes <= HEAD_COPY_MAX_BYTES else None
    logits = last_logits(model, ids, head_t, position_ids=positions, attention_mask=mask, kv_cache=cache)
    if positions is not None:
        positions = positions[:, -1]  # (B,): the last prompt token's
    new_ids: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    eager_s: list[float] = []
    for n in range(total - T):
        tokens = next_token(logits, seen, sampling, generator)
        out: list[Optional[int]] = [None] * B
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            out[row] = token
            new_ids[row].append(token)
            done[row] = token == eos_id or (is_done is not None and is_done(row, new_ids[row]))
        yield out
        if all(done) or n == total - T - 1:
            return
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        if positions is not None:
            positions = positions + 1
        if step is None:
            kw = {} if positions is None else dict(position_ids=positions[:, None],
                                                    attention_mask=key_mask[:, :cache.pos + 1].long())
            logits = last_logits(model, tokens[:, None], head_t, kv_cache=cache, **kw)
            continue
        t0 = time.perf_counter()
        logits = step(cache, tokens, positions, key_mask, use_compiled)
        eager_s.append(time.perf_counter() - t0)
        if compiled is None and may_compile and not use_compiled and len(eager_s) == MEASURED_STEPS:
            if compile_pays(device, statistics.median(eager_s), planned_steps - n):
                use_compiled = step.compile()


# ---- Text in, text out -----------------------------------------------------------------------------------

@dataclass
class Completion:
    prompt: str
    completion: str = ""
    tokens: list[int] = field(default_factory=list)  # the new token ids (the stop string's included)
    finish_reason: str = FINISH_LENGTH  # "eos", "stop" or "length"


@dataclass
class Stats:
    """Token counts and wall time, split between the prompt (prefill) and the decoding steps.

    The prompt's forward pass also makes each row's first new token; `decoded_tokens` counts the others,
    the ones the decoding steps (`decode_s`) made.
    """

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    new_tokens: int = 0
    decoded_tokens: int = 0
    decode_s: float = 0.0

    def summary(self) -> str:
        prompt_tps = self.prompt_tokens / max(self.prefill_s, 1e-9)
        decode_tps = self.decoded_tokens / max(self.decode_s, 1e-9)
        return (f"prompt: {self.prompt_tokens} tokens, {prompt_tps:,.0f} tokens/s; "
                f"decoding: {self.new_tokens} new tokens, {decode_tps:,.0f} tokens/s")


def _cut_at_stop(text: str, stop: Sequence[str]) -> Optional[int]:
    """Where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def encode_prompts(model, tok, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of every prompt; ConfigError for an empty one or one that fills the model's positions."""
    encoded = [tok.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    for i, (p, ids) in enumerate(zip(prompts, encoded)):
        if not ids:
            raise ConfigError(f"prompt {i + 1} ({p!r}) is empty; expected some text to continue")
    check_prompts(encoded, model.config.max_seq_len)
    return encoded


def generate_texts(
    model,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    sampling: Sampling = Sampling(),
    stop: Sequence[str] = (),
    seed: Optional[int] = None,
    batch_size: int = 8,
    on_text: Optional[Callable[[int, str], None]] = None,
    on_row_done: Optional[Callable[[int], None]] = None,
    stats: Optional[Stats] = None,
    compiled: Optional[bool] = None,
) -> list[Completion]:
    """Complete every prompt (`tok` is a TokenizerInfo), `batch_size` prompts at a time.

    A completion ends at EOS (not included in its text), at the first of the `stop` strings (cut off
    there) or after max_new_tokens. `on_text(i, piece)` receives prompt i's completion text as it grows
    (the pieces add up to the final text); `on_row_done(i)` is called once per finished prompt.
    `compiled` is generate()'s; by default the decoding step is compiled when all the batches' steps
    together pay for it (many prompts, long completions).
    """
    stop = [s for s in stop if s]
    encoded = encode_prompts(model, tok, prompts)
    results = [Completion(p) for p in prompts]
    stats = stats if stats is not None else Stats()
    hold = max((len(s) for s in stop), default=1) - 1  # text that may yet become a stop string
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    decode = tok.tokenizer.decode

    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        shown = {i: 0 for i in rows}  # characters already passed to on_text

        def text_of(ids: list[int]) -> str:
            return decode([t for t in ids if t != tok.eos_id])

        def is_done(_row: int, ids: list[int]) -> bool:
            return _cut_at_stop(text_of(ids), stop) is not None

        batches_left = -(-(len(prompts) - start) // batch_size)
        steps = generate(model, [encoded[i] for i in rows], max_new_tokens, sampling=sampling,
                         eos_id=tok.eos_id, seed=seed, pad_id=pad, is_done=is_done if stop else None,
                         compiled=compiled, planned_steps=batches_left * max_new_tokens)
        t0 = time.perf_counter()
        for n_step, out in enumerate(steps):
            if n_step == 0:  # the first tokens come out of the prompt's forward pass
                t1 = time.perf_counter()
                stats.prompt_tokens += sum(len(encoded[i]) for i in rows)
                stats.prefill_s += t1 - t0
            for row, token in enumerate(out):
                if token is None:
                    continue
                i = start + row
                r = results[i]
                r.tokens.append(token)
                stats.new_tokens += 1
                stats.decoded_tokens += n_step > 0
                finished = token == tok.eos_id
                text = text_of(r.tokens)
                cut = _cut_at_stop(text, stop) if stop else None
                if finished:
                    r.finish_reason = FINISH_EOS
                elif cut is not None:
                    r.finish_reason, text, finished = FINISH_STOP, text[:cut], True
                r.completion = text
                # Stream what can no longer change: not a trailing partial UTF-8 character, nor the
                # last `hold` characters, which may be the start of a stop string.
                safe = len(text) if finished else max(len(text.rstrip("\ufffd")) - hold, shown[i])
                if on_text is not None and safe > shown[i]:
                    on_text(i, text[shown[i]:safe])
                shown[i] = max(shown[i], safe)
                if finished and on_row_done is not None:
                    on_row_done(i)
        stats.decode_s += time.perf_counter() - t1
        for i in rows:  # rows that ran out of tokens: flush what was held back
            r = results[i]
            if r.finish_reason == FINISH_LENGTH:
                if on_text is not None and len(r.completion) > shown[i]:
                    on_text(i, r.completion[shown[i]:])
                if on_row_done is not None:
                    on_row_done(i)
    return results


def complete(model, tok, prompt: str, max_new_tokens: int) -> str:
    """The prompt followed by its greedy continuation, as text (`tok` is a TokenizerInfo)."""
    return prompt + generate_texts(model, tok, [prompt], max_new_tokens)[0].completion
