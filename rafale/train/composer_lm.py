"""ComposerLM: the thin adapter between a rafale decoder and Composer's Trainer.

Training calls `forward` (final hidden states) then `loss` (chunked next-token cross-entropy, see
loss.py), so the full logits tensor is never built. Evaluation sums the same loss over tokens; the
metrics turn the sums into cross-entropy and perplexity (reduced across processes by sum).

The batch is `{"input_ids"}` (causal_lm: every next token is a target) or, from the sft pipeline,
`{"input_ids", "labels", "attention_mask", "segment_ids"?}` with labels aligned with input_ids and -100
on the prompt and the padding: the loss then covers the response tokens only. Padding sits at the end
of a row, so causal attention alone keeps real tokens from seeing it. Packed rows pass their
`segment_ids` to the decoder, which keeps each example from attending to the one before it in the row.
"""

from __future__ import annotations

import torch
from composer.models import ComposerModel
from torchmetrics import Metric

from rafale.data import IGNORE_INDEX
from rafale.train.loss import chunked_cross_entropy, shift_targets


class TokenCrossEntropy(Metric):
    """Mean next-token cross-entropy (nats) over all evaluated tokens."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        self.loss_sum += loss_sum.detach().to(self.loss_sum)
        self.tokens += tokens.detach().to(self.tokens)

    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.tokens.clamp(min=1)


class TokenPerplexity(TokenCrossEntropy):
    """exp(mean next-token cross-entropy)."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def targets(batch: dict) -> torch.Tensor:
    """Next-token targets: the batch's labels (sft) shifted, or else its input_ids shifted."""
    return shift_targets(batch["labels"] if "labels" in batch else batch["input_ids"])


class ComposerLM(ComposerModel):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.val_metrics = {"CrossEntropy": TokenCrossEntropy(), "Perplexity": TokenPerplexity()}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.hidden_states(batch["input_ids"], segment_ids=batch.get("segment_ids"))

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return chunked_cross_entropy(outputs, self.model.lm_head.weight, targets(batch))

    def eval_forward(self, batch: dict, outputs=None) -> dict:
        with torch.no_grad():
            hidden = outputs if outputs is not None else self.forward(batch)
            targets_ = targets(batch)
            tokens = (targets_ != IGNORE_INDEX).sum()
            mean = chunked_cross_entropy(hidden, self.model.lm_head.weight, targets_)
        return {"loss_sum": mean.double() * tokens, "tokens": tokens}

    def get_metrics(self, is_train: bool = False) -> dict:
        return {} if is_train else self.val_metrics

    def update_metric(self, batch, outputs: dict, metric: Metric) -> None:
        metric.update(outputs["loss_sum"], outputs["tokens"])
