"""Attention masks and dropout, for both families: padding never changes a real token's output, dropout acts
only in training, and a row that is all padding stays finite (SDPA's fully masked rows)."""

import pytest
import torch

from rafale.models import Decoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification, get_config

ENCODERS = {"bert": dict(), "roberta": dict(pad_token_id=1, position_offset=2, classifier="roberta")}
TINY = dict(vocab_size=64, n_layer=2, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=16)


@pytest.mark.parametrize("family", list(ENCODERS))
@torch.no_grad()
def test_encoder_padding_does_not_change_real_tokens(family):
    config = EncoderConfig(**TINY, **ENCODERS[family])
    model = EncoderForMaskedLM(config).eval()
    short, long = torch.randint(3, 64, (1, 5)), torch.randint(3, 64, (1, 9))
    batch = torch.cat([torch.cat([short, torch.full((1, 4), config.pad_token_id)], 1), long])
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    logits = model(batch, attention_mask=mask)
    torch.testing.assert_close(logits[0, :5], model(short)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], model(long)[0], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_all_padding_rows_stay_finite():
    ids = torch.randint(3, 64, (2, 6))
    mask = torch.ones_like(ids)
    mask[1] = 0
    classifier = EncoderForSequenceClassification(EncoderConfig(**TINY)).eval()
    decoder = Decoder(get_config("llama-tiny", n_layer=1, vocab_size=64)).eval()
    assert torch.isfinite(classifier(ids, attention_mask=mask)).all()
    assert torch.isfinite(decoder(ids, attention_mask=mask)).all()


@pytest.mark.parametrize("name", ["pythia-tiny", "llama-tiny"])
def test_decoder_dropout_only_in_training(name):
    torch.manual_seed(0)
    model = Decoder(get_config(name, n_layer=1, vocab_size=64, dropout=0.5))
    ids = torch.randint(0, 64, (2, 10))
    assert not torch.equal(model.train()(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)), model(ids, attention_mask=torch.ones_like(ids)))


@pytest.mark.parametrize("T, dtype", [(256, torch.float32), (257, torch.bfloat16)])
def test_cpu_bf16_autocast_attends_in_fp32_for_short_sequences(T, dtype):
    from rafale.models.attention import sdpa

    q, k, v = (torch.randn(2, 2, T, 16, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, None, True, 0.0)
    assert y.dtype == dtype
    if dtype == torch.float32:  # the very numbers of fp32 attention, gradients flowing back to every input
        torch.testing.assert_close(y, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
        y.sum().backward()
        assert all(t.grad is not None for t in (q, k, v))
