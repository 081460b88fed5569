"""What the config hands to Composer's Trainer, without training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rafale.config import config_from_dict
from rafale.errors import ConfigError
from rafale.train import trainer as tr
from rafale.train.mfu import flops_per_token


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, n, block):
        self.x = torch.randint(0, 250, (n, block))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


class _Data:  # the part of PreparedData the trainer builder reads
    meta = {"pipeline": "causal_lm"}

    @staticmethod
    def dataset(split):
        return _Blocks(16, 16) if split == "train" else None

    @staticmethod
    def collator(**_):
        from rafale.data.causal_lm import collate

        return collate


def _cfg(**sections):
    base = {"model": {"overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 256}},
            "data": {"block_size": 16, "train_batch_size": 4, "tokenizer": {"train": {"vocab_size": 512}}}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return config_from_dict(base, source="x.yaml")


def _model(cfg):
    from rafale.models.decoder import Decoder

    return Decoder(tr.model_config(cfg))


def _kwargs(cfg, **kw):
    return tr.trainer_kwargs(cfg, _model(cfg), _Data, save_folder=None, callbacks=[], **kw)


def test_fsdp_reaches_composer_parallelism_config(monkeypatch):
    cfg = _cfg(run={"fsdp": {"sharding_strategy": "FULL_SHARD", "mixed_precision": "PURE"}})
    assert tr.parallelism_config(cfg, "gpu") == {"fsdp": {"sharding_strategy": "FULL_SHARD",
                                                          "mixed_precision": "PURE"}}
    with pytest.raises(ConfigError, match="run.fsdp: FSDP needs GPUs"):
        _kwargs(cfg)
    assert _kwargs(_cfg())["parallelism_config"] is None


def test_compile_clip_and_microbatch_options():
    kw = _kwargs(_cfg(run={"compile": True, "device_batch_size": 2}, optim={"clip_type": "value", "clip_norm": 0.5}))
    assert kw["compile_config"] == {}
    assert kw["device_train_microbatch_size"] == 2
    (clip,) = kw["algorithms"]
    assert (clip.clipping_type, clip.clipping_threshold) == ("value", 0.5)
    kw = _kwargs(_cfg(optim={"clip_norm": 0}))
    assert kw["compile_config"] is None and kw["algorithms"] == []
    assert kw["device_train_microbatch_size"] == 4  # auto on CPU: the whole batch


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_skip_decay_on_norms_biases_embeddings(name, cls):
    cfg = _cfg(optim={"name": name, "weight_decay": 0.1}, model={"overrides": {"n_layer": 1, "n_embd": 32,
                                                                              "n_head": 2, "vocab_size": 256,
                                                                              "bias": True}})
    model = _model(cfg)
    opt = tr.build_optimizer(cfg, model)
    assert isinstance(opt, cls)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim == 2 and n != "wte.weight"), n


def test_flops_per_token_skips_the_input_embedding_only():
    cfg = _cfg()
    model = _model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert flops_per_token(model, 16) == 6 * (n - 256 * 32) + 12 * 1 * 32 * 16


def test_mlm_eval_masks_are_the_same_at_every_evaluation():
    from rafale.data.mlm import MLMCollator

    class MLMData:
        meta = {"pipeline": "mlm"}

        @staticmethod
        def collator(probability, generator):
            return MLMCollator(mask_id=4, special_ids=[0, 1, 2, 3, 4], vocab_size=64, probability=probability,
                               generator=generator)

    blocks = list(torch.randint(5, 64, (4, 32)))
    cfg = _cfg()
    evals, train = tr.collate_fn(cfg, MLMData, None, "eval"), tr.collate_fn(cfg, MLMData, None, "train")
    assert torch.equal(evals(blocks)["labels"], evals(blocks)["labels"])
    assert not torch.equal(train(blocks)["labels"], train(blocks)["labels"])  # training: fresh masks each time
