"""The four pipelines end to end through prepare(), with exact checks on hand-made examples."""

import numpy as np
import pytest
import torch

from rafale.data.prepare import prepare
from rafale.data import IGNORE_INDEX as IGNORE
from rafale.data.sft import layout
from rafale.errors import DataError
from tests.data.conftest import data_cfg, sentences, write_jsonl


def test_causal_lm_blocks_and_eos(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(sentences(60)))
    data = prepare(data_cfg(source=str(tmp_path / "a.txt"), eval_split=0.1))
    train = data.dataset("train")
    assert len(train) == data.meta["splits"]["train"]["blocks"] > 0
    batch = data.collator()([train[0], train[1]])
    assert batch["input_ids"].shape == (2, 16)
    flat = np.asarray(train.tokens)
    assert (flat == data.tokenizer.eos_id).sum() >= 1
    s = data.meta["splits"]["train"]
    assert s["tokens"] == s["blocks"] * 16 + s["dropped_tokens"]


def test_sft_masking_exact():
    pairs = [([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8]), ([9, 10, 11], [IGNORE, 10, 11])]
    a = layout(pairs, block_size=6, pad_id=0, packing=False)
    assert a["input_ids"].tolist() == [[5, 6, 7, 8, 0, 0], [9, 10, 11, 0, 0, 0]]
    assert a["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, IGNORE, IGNORE], [IGNORE, 10, 11, IGNORE, IGNORE, IGNORE]]
    assert a["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    p = layout(pairs, block_size=8, pad_id=0, packing=True)
    assert p["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 0]]
    assert p["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, IGNORE, 10, 11, IGNORE]]
    assert p["segment_ids"].tolist() == [[1, 1, 1, 1, 2, 2, 2, 0]]


def test_sft_end_to_end_eos_truncation_and_defaults(tmp_path):
    rows = [{"prompt": "the cat", "generation": " sat on a mat"} for _ in range(20)]
    rows.append({"prompt": "the dog", "generation": " ran" * 40})  # longer than the block
    write_jsonl(tmp_path / "sft.jsonl", rows)
    data = prepare(data_cfg(pipeline="sft", source=str(tmp_path / "sft.jsonl"), eval_split=0, block_size=24))
    tok = data.tokenizer.tokenizer
    ex = data.dataset("train")[0]
    p = tok.encode("the cat", add_special_tokens=False).ids
    r = tok.encode(" sat on a mat", add_special_tokens=False).ids
    n = len(p) + len(r) + 1
    assert ex["input_ids"][:n].tolist() == p + r + [data.tokenizer.eos_id]
    assert ex["labels"].tolist() == [IGNORE] * len(p) + r + [data.tokenizer.eos_id] + [IGNORE] * (24 - n)
    assert ex["attention_mask"].tolist() == [1] * n + [0] * (24 - n)
    assert data.meta["splits"]["train"]["truncated"] == 1
    batch = data.collator()([data.dataset("train")[i] for i in range(3)])
    assert batch["labels"].shape == (3, 24)


def test_sft_missing_field_named(tmp_path):
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"no field 'generation'.*found: prompt, answer"):
        prepare(data_cfg(pipeline="sft", source=str(tmp_path / "sft.jsonl")))


def cls_rows(labels, n=30):
    return [{"text": s, "other": s[::-1], "label": labels[i % len(labels)]} for i, s in enumerate(sentences(n))]


def test_classification_labels_template_and_pairs(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", cls_rows(["pos", "neg", "neutral"]))
    write_jsonl(tmp_path / "validation.jsonl", cls_rows(["neg", "pos"], n=4))
    cfg = dict(pipeline="classification", source=str(tmp_path), block_size=40,
               tokenizer={"train": {"type": "wordpiece", "vocab_size": 300, "min_frequency": 1}})
    data = prepare(data_cfg(**cfg))
    assert data.meta["labels"] == ["neg", "neutral", "pos"]
    ev = data.dataset("eval")
    assert [int(ev[i]["labels"]) for i in range(4)] == [0, 2, 0, 2]
    t = data.tokenizer.tokenizer
    cls, sep = t.token_to_id("[CLS]"), t.token_to_id("[SEP]")
    row = data.dataset("train")[0]
    ids = row["input_ids"][row["attention_mask"].bool()].tolist()
    assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 1
    pair = prepare(data_cfg(**cfg, text_pair_field="other"))
    ids = pair.dataset("train")[0]["input_ids"]
    assert ids[0] == cls and ids.tolist().count(sep) == 2
    given = prepare(data_cfg(**cfg, labels=["pos", "neg", "neutral"]))
    assert given.meta["labels"] == ["pos", "neg", "neutral"] and given.key != data.key


def test_classification_unseen_eval_label_is_an_error(tmp_path, cache_dir):
    write_jsonl(tmp_path / "train.jsonl", cls_rows([0, 1]))
    write_jsonl(tmp_path / "validation.jsonl", cls_rows([2], n=2))
    with pytest.raises(DataError, match=r"eval has labels '2' not in the train split \(0, 1\)"):
        prepare(data_cfg(pipeline="classification", source=str(tmp_path), block_size=40))
    assert [p for p in (cache_dir / "data").iterdir() if not p.name.startswith(".")] == []


def test_mlm_masking_rates_and_specials(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(sentences(400)))
    data = prepare(data_cfg(pipeline="mlm", source=str(tmp_path / "a.txt"), block_size=64,
                            tokenizer={"train": {"type": "wordpiece", "vocab_size": 300, "min_frequency": 1}}))
    blocks = data.dataset("train")
    collate = data.collator(probability=0.15, generator=torch.Generator().manual_seed(0))
    items = [blocks[i] for i in range(len(blocks))]
    orig = torch.stack(items)
    out = collate(items)
    special = torch.isin(orig, torch.tensor(data.tokenizer.special_ids()))
    assert special.any()  # [SEP] between documents
    picked = out["labels"] != -100
    assert not (picked & special).any() and torch.equal(out["input_ids"][special], orig[special])
    assert torch.equal(out["labels"][picked], orig[picked])
    rate = picked.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.02
    mask_id = data.meta["mask_id"]
    masked = (out["input_ids"] == mask_id) & picked
    kept = (out["input_ids"] == orig) & picked
    n = picked.sum()
    assert abs(masked.sum() / n - 0.8) < 0.04 and abs(kept.sum() / n - 0.1) < 0.03
    assert not torch.isin(out["input_ids"][picked & ~masked & ~kept], torch.tensor(data.tokenizer.special_ids())).any()


def test_fewer_tokens_than_one_block_leaves_no_entry(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("\n\n".join(sentences(40)))
    with pytest.raises(DataError, match=r"fewer than one block of data.block_size 4096"):
        prepare(data_cfg(source=str(tmp_path / "a.txt"), block_size=4096, eval_split=0))
    assert [p for p in (cache_dir / "data").iterdir() if not p.name.startswith(".")] == []


def test_missing_label_field_named(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a b", "target": 1}])
    with pytest.raises(DataError, match=r"no field 'label'.*found: text, target"):
        prepare(data_cfg(pipeline="classification", source=str(tmp_path / "a.jsonl")))


def test_config_rejects_bad_data_values():
    from rafale.config import config_from_dict
    from rafale.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.pipeline: 'sfft'.*did you mean 'sft'.*data.txt_document"):
        config_from_dict({"data": {"pipeline": "sfft", "txt_document": "line"}})
