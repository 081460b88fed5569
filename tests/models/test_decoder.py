"""The decoder on its own: config validation, shapes, masks, and the KV cache against recomputation."""

import pytest
import torch

from rafale.models.decoder import Decoder, DecoderConfig, KVCache, apply_rope, rope_tables

# Tiny stand-ins for the two families; init_std is large so that greedy decoding has clear winners.
NEOX = dict(name="neox-test", vocab_size=128, n_layer=2, n_head=4, n_embd=64, rotary_pct=0.25,
            parallel_residual=True, norm="layernorm", mlp="gelu", bias=True, init_std=0.2)
LLAMA = dict(name="llama-test", vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
             intermediate_size=96, norm="rmsnorm", mlp="swiglu", tie_embeddings=True, init_std=0.2)
FAMILIES = pytest.mark.parametrize("kwargs", [NEOX, LLAMA], ids=["neox", "llama"])


def make(kwargs, **overrides) -> Decoder:
    return Decoder(DecoderConfig(**{**kwargs, **overrides})).eval()


# --- config ----------------------------------------------------------------------------------------------


def test_config_derives_sizes():
    c = DecoderConfig(n_embd=64, n_head=4, mlp="gelu", rotary_pct=0.25)
    assert (c.head_dim, c.n_kv_head, c.intermediate_size, c.rope_dim) == (16, 4, 256, 4)
    assert DecoderConfig(n_embd=96, n_head=4, mlp="swiglu").intermediate_size == 256  # 8/3 * 96 = 256


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(n_embd=65), "n_embd 65 is not divisible by n_head 4"),
        (dict(n_kv_head=3), "n_head 4 is not a multiple of n_kv_head 3"),
        (dict(norm="batchnorm"), "norm must be"),
        (dict(mlp="relu"), "mlp must be"),
        (dict(rotary_pct=0.1), "rotary dims"),
        (dict(rope_scaling={"factor": 8.0}), "rope_scaling needs exactly the keys"),
        (dict(n_layer=0), "n_layer must be positive"),
    ],
)
def test_config_rejects_inconsistent_values(bad, match):
    with pytest.raises(ValueError, match=f"DecoderConfig 'x': {match}"):
        DecoderConfig(name="x", n_embd=bad.pop("n_embd", 64), n_head=4, **bad)


# --- forward ---------------------------------------------------------------------------------------------


@FAMILIES
def test_forward_is_lm_head_of_hidden_states(kwargs):
    model = make(kwargs)
    ids = torch.randint(0, 128, (2, 10))
    h = model.hidden_states(ids)
    assert h.shape == (2, 10, 64)
    assert isinstance(model.lm_head, torch.nn.Linear)
    torch.testing.assert_close(model(ids), model.lm_head(h), rtol=0, atol=0)


@FAMILIES
def test_training_step_reaches_every_parameter(kwargs):
    model = make(kwargs, dropout=0.1).train()
    ids = torch.randint(0, 128, (2, 10))
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_tied_embeddings_share_one_parameter():
    model = make(LLAMA)
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


@FAMILIES
def test_explicit_mask_matches_causal_fast_path(kwargs):
    model = make(kwargs)
    ids = torch.randint(0, 128, (2, 12))
    fast = model(ids)
    masked = model(ids, attention_mask=torch.ones(2, 12, dtype=torch.long))
    torch.testing.assert_close(masked, fast, rtol=1e-5, atol=1e-5)


@FAMILIES
def test_left_padding_does_not_change_real_positions(kwargs):
    model = make(kwargs)
    short, long = torch.randint(0, 128, (1, 5)), torch.randint(0, 128, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(batch, position_ids=position_ids, attention_mask=mask)
    assert torch.isfinite(logits).all()  # padding rows included
    torch.testing.assert_close(logits[0, 4:], model(short)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], model(long)[0], rtol=1e-5, atol=1e-5)


@FAMILIES
@torch.no_grad()
def test_packed_segments_equal_each_segment_alone(kwargs):
    model = make(kwargs)
    a, b, c = torch.randint(0, 128, (1, 5)), torch.randint(0, 128, (1, 7)), torch.randint(0, 128, (1, 16))
    packed = torch.cat([torch.cat([a, b, torch.zeros(1, 4, dtype=torch.long)], 1), c])  # two examples + padding
    segment_ids = torch.tensor([[1] * 5 + [2] * 7 + [0] * 4, [1] * 16])
    h = model.hidden_states(packed, segment_ids=segment_ids)
    assert torch.isfinite(h).all()  # padding rows included
    torch.testing.assert_close(h[:1, :5], model.hidden_states(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[:1, 5:12], model.hidden_states(b), rtol=1e-4, atol=1e-5)  # rope: offset-free
    torch.testing.assert_close(h[1:], model.hidden_states(c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(packed, segment_ids=segment_ids), model.lm_head(h), rtol=0, atol=0)
    with pytest.raises(ValueError, match="segment_ids must be"):
        model(packed, segment_ids=segment_ids, kv_cache=model.make_kv_cache(2, 16))


def test_sequence_longer_than_max_seq_len_is_refused():
    model = make(NEOX, max_seq_len=8)
    with pytest.raises(ValueError, match="cannot attend to 9 positions, max_seq_len is only 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_partial_rope_leaves_the_tail_alone():
    config = DecoderConfig(n_embd=64, n_head=4, rotary_pct=0.25)
    cos, sin, perm = rope_tables(config)
    assert cos.shape == (2048, 16)
    x = torch.randn(1, 4, 3, 16)
    out = apply_rope(x, cos[:3], sin[:3], 2)
    torch.testing.assert_close(out[..., 4:], x[..., 4:], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # position 0: no rotation
    # bit for bit the "rotate half" formula of transformers' GPT-NeoX, on the first 4 dims
    c, s = cos[:3, :4], -sin[:3, :2].repeat(1, 2)
    x1, x2 = x[..., :2], x[..., 2:4]
    torch.testing.assert_close(out[..., :4], x[..., :4] * c + torch.cat((-x2, x1), dim=-1) * s, rtol=0, atol=0)


@pytest.mark.parametrize("rotary_pct,dtype", [(0.25, torch.float32), (1.0, torch.float32), (0.25, torch.bfloat16)])
def test_rope_and_its_written_out_backward_equal_autograd_through_the_gather_bit_for_bit(rotary_pct, dtype):
    config = DecoderConfig(n_embd=128, n_head=4, rotary_pct=rotary_pct)
    cos, sin, perm = rope_tables(config)
    half = config.rope_dim // 2
    torch.manual_seed(0)
    for T in (5, 1):  # several positions and one (decoding)
        x = torch.randn(2, T, 3, 32, dtype=dtype)
        g = torch.randn(2, T, 3, 32)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = apply_rope(a, cos[:T, None], sin[:T, None], half)
        reference = b * cos[:T, None] + b.index_select(-1, perm) * sin[:T, None]
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
        ours.backward(g), reference.backward(g)
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(apply_rope(x, cos[:T, None], sin[:T, None], half), reference, rtol=0, atol=0)


def test_meta_device_build_allocates_nothing():
    with torch.device("meta"):
        model = Decoder(DecoderConfig(vocab_size=50304, n_layer=24, n_head=16, n_embd=1024, mlp="gelu"))
    assert model.wte.weight.is_meta
    assert model.num_params() > 300_000_000


def test_init_buffers_restores_rope_and_tie_after_to_empty():
    reference = make(LLAMA)
    with torch.device("meta"):
        model = Decoder(DecoderConfig(**LLAMA))
    model.to_empty(device="cpu")
    model.init_buffers()
    model.load_state_dict(reference.state_dict())
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(model.eval()(ids), reference(ids), rtol=0, atol=0)


def test_num_params_excluding_embeddings():
    model = make(NEOX)
    n_emb = 128 * 64
    assert model.num_params() - model.num_params(exclude_embedding=True) == 2 * n_emb  # untied: wte + lm_head
    tied = make(LLAMA)
    assert tied.num_params() - tied.num_params(exclude_embedding=True) == n_emb


# --- KV cache ----------------------------------------------------------------------------------------------


def greedy(model, prompt, steps, use_cache, attention_mask=None):
    ids, mask = prompt, attention_mask
    cache = model.make_kv_cache(prompt.size(0), prompt.size(1) + steps) if use_cache else None
    new = ids
    for _ in range(steps):
        position_ids = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
        if cache is not None and position_ids is not None:
            position_ids = position_ids[:, -new.size(1):]
        logits = model(new if cache is not None else ids, position_ids=position_ids,
                       attention_mask=mask, kv_cache=cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        new = nxt if cache is not None else ids
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


@FAMILIES
@torch.no_grad()
def test_kv_cache_greedy_equals_recomputation(kwargs):
    model = make(kwargs)
    prompt = torch.randint(0, 128, (2, 7))
    torch.testing.assert_close(greedy(model, prompt, 20, True), greedy(model, prompt, 20, False), rtol=0, atol=0)


@FAMILIES
@torch.no_grad()
def test_kv_cache_greedy_with_left_padding(kwargs):
    model = make(kwargs)
    prompt = torch.randint(1, 128, (2, 7))
    prompt[0, :3] = 0
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    cached = greedy(model, prompt, 20, True, attention_mask=mask)
    torch.testing.assert_close(cached, greedy(model, prompt, 20, False, attention_mask=mask), rtol=0, atol=0)
    torch.testing.assert_close(cached[0, 3:], greedy(model, prompt[:1, 3:], 20, False)[0], rtol=0, atol=0)


@FAMILIES
@torch.no_grad()
def test_kv_cache_chunked_prefill_matches_full_logits(kwargs):
    model = make(kwargs)
    ids = torch.randint(0, 128, (2, 12))
    cache = model.make_kv_cache(2, 12)
    chunks = [model(ids[:, a:b], kv_cache=cache) for a, b in ((0, 5), (5, 6), (6, 12))]
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(ids), rtol=1e-5, atol=1e-5)


def test_kv_cache_is_preallocated_and_written_in_place():
    model = make(LLAMA)
    cache = model.make_kv_cache(2, 16)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 2, 2, 16, 16)  # (n_layer, B, n_kv_head, max_len, head_dim)
    k_ptr = cache.k.data_ptr()
    with torch.no_grad():
        model(torch.randint(0, 128, (2, 3)), kv_cache=cache)
        model(torch.randint(0, 128, (2, 1)), kv_cache=cache)
    assert cache.pos == 4 and cache.k.data_ptr() == k_ptr
    assert cache.k[:, :, :, :4].abs().sum() > 0 and cache.k[:, :, :, 4:].abs().sum() == 0


def test_kv_cache_refuses_overflow_and_oversized_buffers():
    model = make(NEOX, max_seq_len=32)
    with pytest.raises(ValueError, match="KV cache max_len 33 is larger than the model's max_seq_len 32"):
        model.make_kv_cache(1, 33)
    cache = model.make_kv_cache(1, 4)
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="3 filled; cannot add 1 x 2"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=cache)
    assert cache.pos == 3  # a refused call leaves the cache as it was


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@FAMILIES
@torch.no_grad()
def test_on_cuda_kv_cache_and_outputs_match_cpu(kwargs):
    model = make(kwargs)
    prompt = torch.randint(0, 128, (2, 7))
    cpu_ids = greedy(model, prompt, 20, False)
    model.cuda()
    torch.testing.assert_close(greedy(model, prompt.cuda(), 20, True).cpu(), cpu_ids, rtol=0, atol=0)
    model.to(torch.bfloat16)
    logits = model(prompt.cuda()).float().cpu()
    assert torch.isfinite(logits).all() and logits.shape == (2, 7, 128)
