"""Evaluation that does not dominate a run: periodic evaluations take run.eval_batches, the final one the
whole held-out split, and data.eval_max_tokens caps that split with the same evenly spaced examples each time."""

from __future__ import annotations

import pytest
import torch
from composer import Trainer
from composer.core import Callback

from rafale.config import config_from_dict
from rafale.data.prepare import PreparedData
from rafale.errors import ConfigError
from rafale.train import trainer as tr
from rafale.train.plan import make_plan, model_config
from rafale.train.run import held_out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(["a fox ran.", "the bear slept."] * 20, "bpe", 300, 1, DECODER_SPECIALS).save(str(path))
    return str(path)


def _cfg(tok, run=None, data=None):
    return config_from_dict({"run": run or {}, "model": {"overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2,
                                                                       "vocab_size": 320}},
                             "data": {"block_size": 16, "train_batch_size": 4, "eval_batch_size": 2,
                                      "tokenizer": tok, **(data or {})}}, source="x.yaml")


class EvalBatches(Callback):
    """How many batches each evaluation took, and at which step."""

    def __init__(self):
        self.evals: list[tuple[int, int]] = []

    def eval_start(self, state, logger):
        self.evals.append((state.timestamp.batch.value, 0))

    def eval_batch_end(self, state, logger):
        step, n = self.evals[-1]
        self.evals[-1] = (step, n + 1)


@pytest.mark.parametrize("interval, periodic", [("4ba", [(4, 2)]), ("0ba", [])])
def test_periodic_evals_are_capped_and_the_final_one_covers_the_split(tok, interval, periodic):
    from rafale.data.causal_lm import collate
    from rafale.models.decoder import Decoder

    cfg = _cfg(tok, run={"max_duration": "8ba", "eval_interval": interval, "eval_batches": 2})
    blocks = list(torch.randint(0, 250, (20, 16)))
    train = torch.utils.data.DataLoader(blocks[:16], batch_size=4, collate_fn=collate)
    evals = torch.utils.data.DataLoader(blocks, batch_size=2, collate_fn=collate)  # 10 batches
    seen = EvalBatches()
    trainer = Trainer(**tr.trainer_kwargs(make_plan(cfg, debug=True), Decoder(model_config(cfg)), train, evals,
                                          callbacks=[seen]))
    trainer.fit()
    assert seen.evals == periodic  # none at step 8, the end: final_eval's
    tr.final_eval(trainer)
    assert seen.evals[-1] == (8, 10)
    trainer.close()


def test_eval_max_tokens_takes_evenly_spaced_examples(tok):
    assert tr.eval_indices(10, None, 16) == range(10)
    assert tr.eval_indices(10, 10 * 16, 16) == range(10)
    assert tr.eval_indices(10, 4 * 16 + 15, 16) == [0, 2, 5, 7]  # whole examples only
    data = list(range(100))
    capped = tr.capped_eval(data, _cfg(tok, data={"eval_max_tokens": 25 * 16}))
    assert [capped[i] for i in range(len(capped))] == list(range(0, 100, 4))
    assert tr.capped_eval(data, _cfg(tok, data={"eval_max_tokens": None})) is data
    meta = {"splits": {"eval": {"documents": 9, "tokens": 1700, "blocks": 100, "examples": 100}}}
    plan = make_plan(_cfg(tok, data={"eval_max_tokens": 25 * 16}), debug=True)
    assert held_out(plan, PreparedData(None, "k", meta, None, True)) == {
        "examples": 100, "evaluated_examples": 25, "periodic_batches": 20, "tokens": 1600, "evaluated_tokens": 400}


@pytest.mark.parametrize("override, needle", [({"data": {"eval_max_tokens": 8}}, "data.eval_max_tokens: 8 is less"),
                                              ({"run": {"eval_batches": 0}}, "run.eval_batches: expected a positive")])
def test_caps_are_validated(tok, override, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(tok, **override)
