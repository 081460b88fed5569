"""ComposerClassifier and ComposerMLM train a tiny random encoder with a real Composer Trainer on CPU."""

import pytest
import torch
from composer import Trainer

from rafale.models import EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification
from rafale.data import IGNORE_INDEX
from rafale.train.composer_encoder import ComposerClassifier, ComposerMLM

VOCAB, T, PAD, MASK = 32, 8, 0, 3
TINY = dict(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=T, dropout=0.0,
            attn_dropout=0.0, num_labels=3)


def classification_batches(n=32, batch_size=8):
    """Class c is the token 10 + c right after [CLS]; rows end in 0-3 pads."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=gen)
    ids = torch.randint(4, VOCAB, (n, T), generator=gen)
    ids[:, 0], ids[:, 1] = 2, 10 + labels
    mask = torch.ones_like(ids)
    for i in range(n):
        pads = i % 4
        if pads:
            ids[i, -pads:], mask[i, -pads:] = PAD, 0
    return loader(ids, mask, labels, batch_size)


def mlm_batches(n=32, batch_size=8):
    """Rising runs of tokens (t, t+1, ...), two positions per row masked: the neighbours give the answer."""
    gen = torch.Generator().manual_seed(0)
    ids = (torch.randint(4, VOCAB - T, (n, 1), generator=gen) + torch.arange(T)).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    masked = torch.stack([torch.randperm(T - 2, generator=gen)[:2] + 1 for _ in range(n)])
    rows = torch.arange(n)[:, None]
    labels[rows, masked] = ids[rows, masked]
    ids[rows, masked] = MASK
    mask = torch.ones_like(ids)
    return loader(ids, mask, labels, batch_size)


def loader(ids, mask, labels, batch_size):
    """The batch format of the classification and mlm pipelines: dicts of stacked tensors."""
    examples = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    return torch.utils.data.DataLoader(examples, batch_size=batch_size)


@torch.no_grad()
def mean_loss(composer_model, batches):
    composer_model.eval()
    return sum(composer_model.loss(composer_model(b), b).item() for b in batches) / len(batches)


def fit(composer_model, batches, steps):
    trainer = Trainer(model=composer_model, train_dataloader=batches, eval_dataloader=batches,
                      max_duration=f"{steps}ba", eval_interval=f"{steps}ba",
                      optimizers=torch.optim.AdamW(composer_model.parameters(), lr=3e-3), device="cpu",
                      progress_bar=False, log_to_console=False, loggers=[], seed=0,
                      python_log_level=None)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("wrapper, head, batches, metric", [
    (ComposerClassifier, EncoderForSequenceClassification, classification_batches, "MulticlassAccuracy"),
    (ComposerMLM, EncoderForMaskedLM, mlm_batches, "MaskedAccuracy"),
])
def test_composer_trainer_fits_a_tiny_encoder(wrapper, head, batches, metric):
    data = batches()
    composer_model = wrapper(head(EncoderConfig(**TINY)))
    before = mean_loss(composer_model, data)
    trainer = fit(composer_model, data, steps=24)  # 6 epochs of 4 batches
    after = mean_loss(composer_model, data)
    assert after < 0.9 * before, (before, after)
    accuracy = trainer.state.eval_metrics["eval"][metric].compute().item()
    assert 0.0 <= accuracy <= 1.0
    if wrapper is ComposerMLM:
        perplexity = trainer.state.eval_metrics["eval"]["Perplexity"].compute().item()
        assert 1.0 <= perplexity < VOCAB


def test_mlm_loss_ignores_unmasked_positions():
    composer_model = ComposerMLM(EncoderForMaskedLM(EncoderConfig(**TINY))).eval()
    batch = next(iter(mlm_batches(n=4, batch_size=4)))
    logits = composer_model(batch)
    changed = logits.clone()
    changed[batch["labels"] == IGNORE_INDEX] += torch.randn(VOCAB)  # only where nothing is predicted
    assert torch.equal(composer_model.loss(logits, batch), composer_model.loss(changed, batch))
