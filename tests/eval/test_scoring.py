"""Scoring: shared contexts and sorted batches give the numbers of one plain forward per row; the sliding
window scores every token once; bits per byte equals a direct computation."""

import math
import random

import pytest
import torch

from rafale.eval.perplexity import evaluate_text, windows
from rafale.eval.scoring import Row, score
from rafale.loading import model_and_tokenizer
from rafale.models import Decoder, get_config


def direct(model, tokens, n):
    """log p of the last n tokens, and whether each is the argmax, from one forward over the whole row."""
    t = torch.tensor(tokens)[None]
    with torch.no_grad():
        logp = model(t[:, :-1]).log_softmax(-1)[0, -n:]
    target = t[0, -n:]
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize("family", ["pythia-14m", "llama-tiny"])
def test_shared_contexts_and_batches_score_as_one_row_at_a_time(family):
    torch.manual_seed(0)
    overrides = {"n_kv_head": 2} if family == "llama-tiny" else {}
    model = Decoder(get_config(family, vocab_size=200, n_layer=2, n_embd=32, n_head=4, max_seq_len=40,
                               init_std=0.2, **overrides)).eval()
    rng = random.Random(0)
    rows = []
    for _ in range(9):  # questions with 1 or 4 answers of 1..9 tokens, contexts of 1..30 tokens
        context = [rng.randrange(200) for _ in range(rng.randint(1, 30))]
        for _ in range(rng.choice([1, 4])):
            answer = [rng.randrange(200) for _ in range(rng.randint(1, 9))]
            rows.append(Row(context + answer, len(answer)))
    for got, row in zip(score(model, rows, batch_size=5), rows):
        logprob, greedy = direct(model, row.tokens, row.n_scored)
        assert got.logprob == pytest.approx(logprob, abs=1e-4) and got.greedy == greedy and got.n == row.n_scored
    # log-likelihoods alone: the same numbers, no greedy pass; chunks of logits smaller than a batch as well
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rafale.eval.scoring.MIN_CHUNK_ROWS", 3)
        mp.setattr("rafale.eval.scoring.LOGITS_CHUNK", 1)
        for got, row in zip(score(model, rows, batch_size=5, greedy=False), rows):
            assert got.logprob == pytest.approx(direct(model, row.tokens, row.n_scored)[0], abs=1e-4)
            assert got.greedy is None and got.n == row.n_scored


@pytest.mark.parametrize("n,block,context", [(1, 8, 0), (8, 8, 4), (9, 8, 4), (50, 8, 0), (50, 8, 7), (37, 16, 5)])
def test_the_sliding_window_scores_every_token_once_with_its_context(n, block, context):
    scored = []
    for start, end, k in windows(n, block, context):
        assert 0 <= start and end - start <= block and 1 <= k <= end - start
        targets = range(end - k + 1, end + 1)  # the tokens this window scores
        assert all(t - start >= min(context, t) for t in targets if start > 0)  # left context in the window
        scored += targets
    assert sorted(scored) == list(range(1, n + 1))


def test_bits_per_byte_equals_a_direct_and_a_token_by_token_computation(neox_dir):
    model, tok = model_and_tokenizer(neox_dir)
    text = "Once upon a time, a small fox found a red ball. \"Is it yours?\" she asked the owl. Café!"
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    tokens = [tok.eos_id] + ids
    assert len(tokens) <= model.config.max_seq_len
    with torch.no_grad():  # one forward over the whole text
        logp = model(torch.tensor(tokens)[None, :-1]).log_softmax(-1)[0]
    nll_direct = -logp.gather(1, torch.tensor(ids)[:, None]).sum().item()
    nll_steps = 0.0  # one token at a time through the KV cache
    cache = model.make_kv_cache(1, len(tokens))
    with torch.no_grad():
        for i in range(len(ids)):
            logits = model(torch.tensor([[tokens[i]]]), kv_cache=cache)[0, -1]
            nll_steps -= logits.log_softmax(-1)[ids[i]].item()
    n_bytes = len(text.encode("utf-8"))
    r = evaluate_text(model, tok, [text])
    assert r.tokens == len(ids) and r.bytes == n_bytes and r.windows == 1
    for nll in (nll_direct, nll_steps):
        assert r.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(nll_direct / len(ids)), rel=1e-5)


def test_a_long_text_in_windows_scores_each_token_with_the_context_its_window_gives(neox_dir):
    model, tok = model_and_tokenizer(neox_dir)
    text = " ".join(["The fox and the owl went to the lake to look for the lost red ball."] * 8)
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    tokens = [tok.eos_id] + ids
    block, context = 24, 10
    expected = 0.0
    with torch.no_grad():
        for start, end, k in windows(len(ids), block, context):
            logp = model(torch.tensor(tokens[start:end])[None]).log_softmax(-1)[0, -k:]
            expected -= logp.gather(1, torch.tensor(tokens[end - k + 1:end + 1])[:, None]).sum().item()
    r = evaluate_text(model, tok, [text], block_size=block, context=context)
    assert r.tokens == len(ids) and r.windows > 3
    assert r.loss * r.tokens == pytest.approx(expected, rel=1e-5)
