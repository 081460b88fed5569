"""What the config hands to Composer's Trainer, without training."""

from __future__ import annotations

import pytest
import torch

from rafale.config import config_from_dict
from rafale.errors import ConfigError
from rafale.train import trainer as tr
from rafale.train.plan import make_plan, model_config, parallelism_config
from rafale.train.mfu import flops_per_token


@pytest.fixture(scope="module")
def tok300(tmp_path_factory):
    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(["a fox ran.", "the bear slept."] * 20, "bpe", 300, 1, DECODER_SPECIALS).save(str(path))
    return str(path)


def _cfg(tok300, **sections):
    base = {"model": {"overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 320}},
            "data": {"block_size": 16, "train_batch_size": 4, "tokenizer": tok300}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return config_from_dict(base, source="x.yaml")


def _model(cfg):
    from rafale.models.decoder import Decoder

    return Decoder(model_config(cfg))


def _kwargs(cfg, **kw):
    from rafale.data.causal_lm import collate

    loader = torch.utils.data.DataLoader(list(torch.randint(0, 250, (16, 16))), batch_size=4, collate_fn=collate)
    return tr.trainer_kwargs(make_plan(cfg, debug=True), _model(cfg), loader, None, callbacks=[], **kw)


def test_fsdp_reaches_composer_parallelism_config(tok300):
    cfg = _cfg(tok300, run={"fsdp": {"sharding_strategy": "FULL_SHARD", "mixed_precision": "PURE"}})
    assert parallelism_config(cfg, "gpu") == {"fsdp": {"sharding_strategy": "FULL_SHARD",
                                                          "mixed_precision": "PURE"}}
    with pytest.raises(ConfigError, match="run.fsdp: FSDP needs GPUs"):
        _kwargs(cfg)
    assert _kwargs(_cfg(tok300))["parallelism_config"] is None


def test_compile_clip_and_microbatch_options(tok300):
    kw = _kwargs(_cfg(tok300, run={"compile": True, "device_batch_size": 2}, optim={"clip_type": "value", "clip_norm": 0.5}))
    from rafale.train.compiling import inductor_or_eager

    assert kw["compile_config"] == {"backend": inductor_or_eager}  # inductor, with the eager fallback
    assert kw["device_train_microbatch_size"] == 2
    (clip,) = kw["algorithms"]
    assert (clip.clipping_type, clip.clipping_threshold) == ("value", 0.5)
    kw = _kwargs(_cfg(tok300, optim={"clip_norm": 0}))
    assert kw["compile_config"] is None and kw["algorithms"] == []
    assert kw["device_train_microbatch_size"] == 4  # auto on CPU: the whole batch


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_skip_decay_on_norms_biases_embeddings(name, cls, tok300):
    cfg = _cfg(tok300, optim={"name": name, "weight_decay": 0.1}, model={"overrides": {"n_layer": 1, "n_embd": 32,
                                                                              "n_head": 2, "vocab_size": 320,
                                                                              "bias": True}})
    model = _model(cfg)
    opt = tr.build_optimizer(cfg, model)
    assert isinstance(opt, cls)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim == 2 and n != "wte.weight"), n


def test_flops_per_token_skips_the_input_embedding_only(tok300):
    cfg = _cfg(tok300)
    model = _model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert flops_per_token(model, 16) == 6 * (n - 320 * 32) + 12 * 1 * 32 * 16


def test_mlm_eval_masks_are_the_same_at_every_evaluation(tok300):
    from rafale.data.mlm import MLMCollator

    class MLMData:
        meta = {"pipeline": "mlm"}

        @staticmethod
        def collator(probability, generator):
            return MLMCollator(mask_id=4, special_ids=[0, 1, 2, 3, 4], vocab_size=64, probability=probability,
                               generator=generator)

    blocks = list(torch.randint(5, 64, (4, 32)))
    cfg = _cfg(tok300)
    evals, train = tr.collate_fn(cfg, MLMData, None, "eval"), tr.collate_fn(cfg, MLMData, None, "train")
    assert torch.equal(evals(blocks)["labels"], evals(blocks)["labels"])
    assert not torch.equal(train(blocks)["labels"], train(blocks)["labels"])  # training: fresh masks each time


def test_composer_reads_the_cpu_name_without_py_cpuinfo(monkeypatch):
    import cpuinfo
    from composer.utils import collect_env

    from rafale.train.mfu import cpu_name

    def probe():
        raise AssertionError("py-cpuinfo's subprocess probe ran")

    monkeypatch.setattr(cpuinfo, "get_cpu_info", probe)
    assert collect_env.get_composer_env_dict()["cpu_model"] == cpu_name()  # what checkpoints store
