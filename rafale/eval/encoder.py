"""`rafale eval --data` for encoders: accuracy and macro-F1 of a classifier, masked-token accuracy and loss
of a masked LM.

    classification_scores(model, tok, texts, labels, label_names)  -> {"accuracy", "macro_f1", "examples"}
    mlm_scores(model, tok, texts, block_size)                       -> {"masked_accuracy", "masked_loss", ...}

Inputs are built as the training pipelines build them (rafale/data/classification.py, mlm.py): `[CLS] text
[SEP]` cut to the block for a classifier; documents joined with [SEP] and cut into blocks for a masked LM,
masked by the training collator with a fixed seed (MASK_SEED), so two models, or two runs of one, are
scored on the same masked positions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from rafale.errors import DataError

MASK_SEED = 0


def classification_scores(model, tok, texts: Sequence[str], labels: Sequence, label_names: list[str],
                          block_size: int, batch_size: int = 32) -> dict:
    from rafale.data.tokenizer import CLS_CANDIDATES, SEP_CANDIDATES

    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(y) for y in labels} - set(index))
    if unknown:
        raise DataError(f"--data: labels {', '.join(map(repr, unknown[:5]))} are not among the model's labels "
                        f"({', '.join(label_names[:10])}; config.json id2label)")
    cls, sep = tok.special(CLS_CANDIDATES, "[CLS]"), tok.special(SEP_CANDIDATES, "[SEP]")
    pad = tok.pad_id if tok.pad_id is not None else sep
    ids = [[cls] + e.ids[: block_size - 2] + [sep]
           for e in tok.tokenizer.encode_batch_fast(list(map(str, texts)), add_special_tokens=False)]
    predicted = []
    with torch.inference_mode():
        for s in range(0, len(ids), batch_size):
            batch = ids[s:s + batch_size]
            T = max(map(len, batch))
            x = torch.full((len(batch), T), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), T, dtype=torch.long)
            for b, row in enumerate(batch):
                x[b, : len(row)], mask[b, : len(row)] = torch.as_tensor(row), 1
            predicted += model(x, attention_mask=mask).argmax(-1).tolist()
    truth = [index[str(y)] for y in labels]
    f1s = []
    for c in range(len(label_names)):
        tp = sum(p == c and t == c for p, t in zip(predicted, truth))
        fp = sum(p == c and t != c for p, t in zip(predicted, truth))
        fn = sum(p != c and t == c for p, t in zip(predicted, truth))
        if tp + fp + fn:  # a class absent from both truth and predictions does not count
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": sum(p == t for p, t in zip(predicted, truth)) / len(truth),
            "macro_f1": sum(f1s) / len(f1s), "examples": len(truth)}


def mlm_scores(model, tok, texts: Sequence[str], block_size: int, probability: float = 0.15,
               batch_size: int = 32) -> dict:
    import numpy as np

    from rafale.data.causal_lm import tokenize_flat
    from rafale.data.mlm import MLMCollator
    from rafale.data.tokenizer import MASK_CANDIDATES, SEP_CANDIDATES

    flat = tokenize_flat(list(texts), tok, tok.special(SEP_CANDIDATES, "[SEP]"), np.int64)
    n_blocks = len(flat) // block_size
    if n_blocks == 0:
        raise DataError(f"--data: {len(flat)} tokens, less than one block of {block_size}; use a smaller "
                        f"--block-size or more text")
    blocks = torch.from_numpy(flat[: n_blocks * block_size]).view(n_blocks, block_size)
    collate = MLMCollator(tok.special(MASK_CANDIDATES, "[MASK]"), tok.special_ids(), tok.vocab_size, probability,
                          torch.Generator().manual_seed(MASK_SEED))
    nll, correct, masked = 0.0, 0, 0
    with torch.inference_mode():
        for s in range(0, n_blocks, batch_size):
            batch = collate(list(blocks[s:s + batch_size]))
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
            picked = batch["labels"] >= 0
            logits, target = logits[picked].float(), batch["labels"][picked]
            nll += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(-1) == target).sum())
            masked += int(picked.sum())
    return {"masked_accuracy": correct / max(masked, 1), "masked_loss": nll / max(masked, 1),
            "masked_tokens": masked, "blocks": n_blocks, "mask_seed": MASK_SEED}
