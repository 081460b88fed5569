"""ComposerClassifier and ComposerMLM: thin adapters between rafale's encoders and Composer's Trainer.

The batch is a dict, as the classification and mlm data pipelines collate it:

    input_ids       (B, T) long
    attention_mask  (B, T) long, 1 for real tokens, 0 for padding
    token_type_ids  (B, T) long, optional (BERT's sentence A/B)
    labels          (B,) long class ids (classification), or (B, T) long token ids with -100 everywhere
                    but the masked positions (mlm)

Training and evaluation both compute the full logits: an encoder's vocabulary and sequence lengths are
small enough that the chunked loss of composer_lm.py would buy nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from composer.metrics import LanguageCrossEntropy, LanguagePerplexity, LossMetric, MaskedAccuracy
from composer.models import ComposerModel
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from rafale.data import IGNORE_INDEX


class _ComposerEncoder(ComposerModel):
    """An encoder under Composer: the batch's encoder inputs in, the head's output out; metrics by name."""

    def __init__(self, model: torch.nn.Module, train_metrics: dict, val_metrics: dict):
        super().__init__()
        self.model, self.train_metrics, self.val_metrics = model, train_metrics, val_metrics

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          token_type_ids=batch.get("token_type_ids"))  # (B, num_labels) or (B, T, V)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.val_metrics

    def update_metric(self, batch: dict, outputs: torch.Tensor, metric: Metric) -> None:
        metric.update(outputs, batch["labels"])


class ComposerClassifier(_ComposerEncoder):
    """An EncoderForSequenceClassification: cross-entropy loss; accuracy in training and evaluation."""

    def __init__(self, model: torch.nn.Module):
        n = model.config.num_labels
        super().__init__(model, {"MulticlassAccuracy": MulticlassAccuracy(num_classes=n, average="micro")},
                         {"MulticlassAccuracy": MulticlassAccuracy(num_classes=n, average="micro"),
                          "CrossEntropy": LossMetric(F.cross_entropy)})

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["labels"])


class ComposerMLM(_ComposerEncoder):
    """An EncoderForMaskedLM: cross-entropy on the masked positions; their accuracy, loss and perplexity."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, {"MaskedAccuracy": MaskedAccuracy(ignore_index=IGNORE_INDEX)},
                         {"MaskedAccuracy": MaskedAccuracy(ignore_index=IGNORE_INDEX),
                          "CrossEntropy": LanguageCrossEntropy(ignore_index=IGNORE_INDEX),
                          "Perplexity": LanguagePerplexity(ignore_index=IGNORE_INDEX)})

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
