"""The masked-LM pipeline: documents -> tokens (+[SEP] each) -> flat blocks; masking in the collator.

The cache holds unmasked blocks, the same flat format as causal_lm, so `data.mlm_probability` is not
part of the cache key and every epoch sees a fresh mask. The collator picks `mlm_probability` of the
non-special tokens (specials such as [CLS], [SEP], [PAD] are never picked); of those, 80% become
[MASK], 10% a random non-special token and 10% stay as they are (BERT's recipe). Labels are the
original ids at picked positions and -100 elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rafale.config import DataConfig
from rafale.data import IGNORE_INDEX, causal_lm
from rafale.data.tokenizer import MASK_CANDIDATES, SEP_CANDIDATES, TokenizerInfo

fields, params, texts_for_tokenizer = causal_lm.fields, causal_lm.params, causal_lm.texts_for_tokenizer


def build(cfg: DataConfig, splits: dict, tok: TokenizerInfo, out: Path, progress) -> dict:
    meta = causal_lm.build(cfg, splits, tok, out, progress, separator=tok.special(SEP_CANDIDATES, "[SEP]"))
    meta.update(mask_id=tok.special(MASK_CANDIDATES, "[MASK]"), special_ids=tok.special_ids(),
                vocab_size=tok.vocab_size)
    return meta


dataset, file_sizes = causal_lm.dataset, causal_lm.file_sizes


class MLMCollator:
    def __init__(self, mask_id: int, special_ids: list[int], vocab_size: int, probability: float = 0.15,
                 generator: torch.Generator | None = None):
        self.mask_id, self.vocab_size, self.p = mask_id, vocab_size, probability
        self.special = torch.tensor(sorted(special_ids), dtype=torch.long)
        self.generator = generator

    def __call__(self, blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = torch.stack(blocks)
        g = self.generator
        can = ~torch.isin(ids, self.special)
        picked = (torch.rand(ids.shape, generator=g) < self.p) & can
        labels = torch.where(picked, ids, torch.full_like(ids, IGNORE_INDEX))
        roll = torch.rand(ids.shape, generator=g)
        to_mask = picked & (roll < 0.8)
        to_random = picked & (roll >= 0.8) & (roll < 0.9)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=g)
        while True:  # a random replacement is never a special token
            bad = to_random & torch.isin(random_ids, self.special)
            if not bad.any():
                break
            random_ids[bad] = torch.randint(self.vocab_size, (int(bad.sum()),), generator=g)
        inputs = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(to_random, random_ids, inputs)
        return {"input_ids": inputs, "labels": labels, "attention_mask": torch.ones_like(ids)}


def collator(meta: dict, probability: float = 0.15, generator: torch.Generator | None = None):
    """Pass `probability=cfg.data.mlm_probability`: it is a training setting, not part of the cache."""
    return MLMCollator(meta["mask_id"], meta["special_ids"], meta["vocab_size"], probability, generator)
