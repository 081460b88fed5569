"""optim.layerwise_decay: each block's learning rate is decay^(blocks above it) times optim.lr."""

from __future__ import annotations

import pytest
import torch

from rafale.config import config_from_dict
from rafale.models import get_config, model_from_config
from rafale.train.trainer import build_optimizer, group_lrs, param_groups


def test_groups_by_depth_head_and_top_block_at_full_rate():
    model = model_from_config(get_config("pythia-14m", n_layer=3, n_embd=32, n_head=2, vocab_size=64))
    cfg = config_from_dict({"optim": {"lr": 1.0, "layerwise_decay": 0.5}})
    assert group_lrs(cfg, model) == {"embeddings": 0.125, "block 0": 0.25, "block 1": 0.5, "block 2": 1.0,
                                     "head": 1.0}
    opt = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.wte.weight)] == 0.125 and lr_of[id(model.blocks[0].attn.qkv.weight)] == 0.25
    assert lr_of[id(model.lm_head.weight)] == 1.0 and lr_of[id(model.norm.weight)] == 1.0
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.blocks[0].attn.qkv.bias)] == 0.0 and decay[id(model.blocks[0].attn.qkv.weight)] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_encoders_too_and_off_by_default():
    model = model_from_config(get_config("bert-tiny", n_layer=2, vocab_size=64), head="classification")
    lrs = param_groups(model, 0.1, lr=1e-3, layerwise_decay=0.8)
    assert [g["name"] for g in lrs][::2] == ["embeddings", "block 0", "block 1", "head"]
    assert {g["name"]: g["lr"] for g in lrs}["embeddings"] == pytest.approx(1e-3 * 0.8 ** 2)
    assert group_lrs(config_from_dict({}), model) == {}
    assert len(param_groups(model, 0.1)) == 2  # off: the decay and no-decay groups, as without it


def test_schedules_keep_the_ratios():
    model = torch.nn.Sequential()
    model.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
    opt = torch.optim.AdamW(param_groups(model, 0.0, lr=1.0, layerwise_decay=0.5))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.3)  # how Composer applies a schedule
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups][::2] == pytest.approx([0.15, 0.3])
