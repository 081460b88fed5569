"""The run/optim/logging config sections: bad values are one clear error naming the key."""

from __future__ import annotations

import pytest

from rafale.config import config_from_dict
from rafale.errors import ConfigError


def cfg(**sections):
    sections.setdefault("data", {})
    sections["data"].setdefault("tokenizer", {"train": {"vocab_size": 512}})
    return config_from_dict(sections, source="x.yaml")


@pytest.mark.parametrize("raw, match", [
    ({"optim": {"name": "adam"}}, r"x.yaml: optim.name: 'adam' is not one of .* \(did you mean 'adamw'\?\)"),
    ({"optim": {"schedule": "cosine"}}, r"optim.schedule: 'cosine' is not one of constant, linear-warmup"),
    ({"optim": {"warmup": "30ba"}, "run": {"max_duration": "20ba"}}, r"optim.warmup: 30ba is longer than the run"),
    ({"optim": {"warmup": "1.5dur"}}, r"optim.warmup: 1.5dur is longer than the run"),
    ({"optim": {"clip_type": "adaptive"}}, r"optim.clip_type: 'adaptive' is not one of norm, value"),
    ({"run": {"max_duration": "20 batches"}}, r"run.max_duration: '20 batches' is not a duration"),
    ({"run": {"max_duration": "0ba"}}, r"run.max_duration: expected a positive duration"),
    ({"run": {"eval_interval": "50ba"}, "data": {"eval_split": 0}}, r"run.eval_interval: 50ba asks for evaluation"),
    ({"run": {"precision": "bf16"}}, r"run.precision: 'bf16' is not one of"),
    ({"run": {"compile": "yes"}}, r"run.compile: expected true, false or auto, got 'yes'"),
    ({"run": {"fsdp": "full"}}, r"run.fsdp: expected a mapping or null"),
    ({"logging": {"loggers": ["console", "wandb"]}}, r"logging.loggers\[1\]: wandb needs the wandb package"),
])
def test_bad_values(raw, match, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError, match=match):
        cfg(**raw)


def test_no_eval_split_without_explicit_interval_is_fine():
    # the default eval_interval is not a request: with no eval split there is simply no evaluation
    assert cfg(data={"eval_split": 0}).data.eval_split == 0
    assert cfg(data={"eval_split": 0}, run={"eval_interval": "0ba"}).run.eval_interval == "0ba"


def test_warmup_in_other_units_than_the_run_is_not_judged():
    assert cfg(optim={"warmup": "5000tok"}, run={"max_duration": "20ba"}).optim.warmup == "5000tok"
