"""run.precision auto on a CPU, bf16 autocast, run.compile and its fallback: what reaches Composer, what a
bf16 run learns next to fp32, and a compiler that fails."""

from __future__ import annotations

import json

import pytest
import torch

from rafale.config import config_from_dict
from rafale.errors import ConfigError
from rafale.train import compiling, mfu
from rafale.train import trainer as tr
from rafale.train.plan import BF16_GAIN, make_plan, model_config, resolve_precision


@pytest.fixture(scope="module")
def tok300(tmp_path_factory):
    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(["a fox ran.", "the bear slept."] * 20, "bpe", 300, 1, DECODER_SPECIALS).save(str(path))
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh $RAFALE_CACHE: the peaks and the compile records of this test only."""
    monkeypatch.setenv("RAFALE_CACHE", str(tmp_path))
    mfu.cpu_peak.cache_clear()
    yield tmp_path
    mfu.cpu_peak.cache_clear()


@pytest.fixture
def one_thread():
    """Training in this process on one thread, as the command-line tests' runs do (a busy 2-core machine
    stalls every parallel region of a two-thread step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(tok300, **run):
    return config_from_dict({"run": {"seed": 3, **run}, "optim": {"lr": 3e-3, "schedule": "constant", "warmup": "0ba"},
                             "model": {"overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 320}},
                             "data": {"block_size": 16, "train_batch_size": 4, "tokenizer": tok300}}, source="x.yaml")


def _rows(n: int = 32) -> list[torch.Tensor]:
    """Learnable blocks: arithmetic sequences of token ids (each row its own start and stride)."""
    g = torch.Generator().manual_seed(0)
    start, stride = torch.randint(2, 300, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
    return list((start + stride * torch.arange(16)) % 298 + 2)


def _fit(cfg, steps: int, compile: bool | None = None) -> list[float]:
    """Train in this process through rafale's Composer arguments; the loss of every step."""
    from composer import Trainer
    from composer.core import Callback

    from rafale.data.causal_lm import collate
    from rafale.models.decoder import Decoder

    class Losses(Callback):
        def __init__(self):
            self.values = []

        def batch_end(self, state, logger):
            self.values.append(float(state.loss))

    losses = Losses()
    torch.manual_seed(cfg.run.seed)
    model = Decoder(model_config(cfg))
    loader = torch.utils.data.DataLoader(_rows(), batch_size=4, shuffle=True, drop_last=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    kw = tr.trainer_kwargs(make_plan(cfg, debug=True), model, loader, None, callbacks=[losses], compile=compile)
    trainer = Trainer(**{**kw, "max_duration": f"{steps}ba"})
    trainer.fit()
    trainer.close()
    return losses.values


def _write_peak(cache, dtype: str, flops: float) -> None:
    name = "cpu_peak.json" if dtype == "fp32" else f"cpu_peak_{dtype}.json"
    key = f"{mfu.cpu_name()}-torch{torch.__version__}-{torch.get_num_threads()}threads"
    (cache / name).write_text(json.dumps({"key": key, "time": 0, "flops": flops}))


def test_precision_auto_follows_the_measured_peaks(tok300, cache):
    cfg = _cfg(tok300)
    _write_peak(cache, "bf16", 1e18)  # far above any fp32 peak this CPU measures
    precision, why = resolve_precision(cfg, "cpu")
    assert precision == "amp_bf16" and why.startswith("auto: bf16 matmul 1,000,000,000 GFLOP/s vs fp32 ")
    assert mfu.peak_flops("cpu", precision) == (1e18, "measured bf16 matmul")  # MFU against the bf16 peak

    mfu.cpu_peak.cache_clear()
    _write_peak(cache, "fp32", 1e18 / BF16_GAIN * 1.01)  # bf16 no longer clearly faster
    assert resolve_precision(cfg, "cpu")[0] == "fp32"
    assert mfu.peak_flops("cpu", "fp32")[1] == "measured fp32 matmul"

    assert resolve_precision(_cfg(tok300, precision="amp_bf16"), "cpu") == ("amp_bf16", "")  # asked: no measuring
    with pytest.raises(ConfigError, match="run.precision: amp_fp16 needs a GPU"):
        resolve_precision(_cfg(tok300, precision="amp_fp16"), "cpu")


def test_autocast_and_compile_reach_composer(tok300):
    from rafale.data.causal_lm import collate

    batch = collate([torch.arange(16)] * 2)
    model = _model(tok300)
    dtypes = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    kw = tr.trainer_kwargs(make_plan(_cfg(tok300, precision="amp_bf16", compile=True), debug=True), model,
                           [batch], None, callbacks=[])
    assert kw["precision"] == "fp32"  # Composer refuses amp on a CPU: the autocast is rafale's, around the model
    hidden = kw["model"](batch)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # every matmul of the forward in bf16
    assert kw["model"].loss(hidden, batch).dtype == torch.float32
    assert kw["compile_config"] == {"backend": compiling.inductor_or_eager}

    kw = tr.trainer_kwargs(make_plan(_cfg(tok300, precision="fp32"), debug=True), model, [batch], None,
                           callbacks=[])
    dtypes.clear()
    kw["model"](batch)
    assert kw["compile_config"] is None and set(dtypes) == {torch.float32}  # auto: eager unless decided
    assert tr.trainer_kwargs(make_plan(_cfg(tok300), debug=True), _model(tok300), [batch], None, callbacks=[],
                             compile=True)["compile_config"] is not None


def _model(tok300):
    from rafale.models.decoder import Decoder

    return Decoder(model_config(_cfg(tok300)))


def test_compile_auto_pays_back_from_the_recorded_figures(tok300, cache):
    plan = make_plan(_cfg(tok300, precision="fp32"), debug=True)
    first = compiling.decide(plan, 100_000)  # no FLOPs (DEBUG=1 plans skip them) and nothing measured yet
    assert not first.compile and "no step time of this run's shape yet" in first.why

    compiling.record(compiling.shape_key(plan), eager_step_s=0.1)  # what an eager run records
    estimated = compiling.decide(plan, 100_000)
    assert estimated.compile and "compile 45 s estimated; step 100 ms eager measured, 93 ms compiled estimated" \
        in estimated.why
    compiling.record(compiling.shape_key(plan), compile_s=10.0, compiled_step_s=0.05)  # what a compiled run records
    short, long = compiling.decide(plan, 199), compiling.decide(plan, 201)
    assert (short.compile, long.compile) == (False, True) and long.break_even_steps == pytest.approx(200)
    assert ("run.compile auto: compiling (compile 10 s measured; step 100 ms eager measured, 50 ms compiled "
            "measured: pays back after 200 steps; this run has 201)") == long.why
    compiling.record(compiling.shape_key(plan), compiled_step_s=0.2)  # compiled is slower here: never
    assert not compiling.decide(plan, 10**9).compile and "never pays back" in compiling.decide(plan, 5).why

    assert compiling.decide(make_plan(_cfg(tok300, compile=True), debug=True), 5).compile
    assert not compiling.decide(make_plan(_cfg(tok300, compile=False), debug=True), 10**9).compile
    assert compiling.planned_steps("2ep", 10, 64) == 20 and compiling.planned_steps("640tok", 10, 64, done=4) == 6
    assert compiling.planned_steps("2ep", None, 64) is None


def test_bf16_training_stays_close_to_fp32(tok300, one_thread):
    """A bf16 CPU step through Composer, 80 of them, next to fp32: a tiny decoder on learnable sequences
    (benchmarks/precision.py compares a few hundred steps of a real run). bf16 keeps 8 bits of mantissa (a
    relative rounding of 2^-9 per operation) and the two runs drift apart step by step, so the test asks for
    the same learning, not the same numbers: the last 10 steps' mean loss within 3% of fp32's, after both
    fell by more than a third."""
    fp32 = _fit(_cfg(tok300, precision="fp32"), 80)
    bf16 = _fit(_cfg(tok300, precision="amp_bf16"), 80)
    end32, end16 = sum(fp32[-10:]) / 10, sum(bf16[-10:]) / 10
    assert end32 < fp32[0] * 2 / 3 and end16 < bf16[0] * 2 / 3, (fp32[0], end32, bf16[0], end16)
    assert end16 == pytest.approx(end32, rel=0.03), (end32, end16)
    assert bf16[0] == pytest.approx(fp32[0], rel=0.01)  # the same model and data at step 1
    assert bf16 != fp32  # it did train in bf16


def test_a_failing_compiler_warns_once_and_trains_eagerly(tok300, capfd, monkeypatch, one_thread):
    """No working C++ compiler (CXX points nowhere, no cached kernels): one warning line, no traceback, and
    the same losses as an eager run."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    cfg = _cfg(tok300, precision="fp32", compile=True)
    eager = _fit(cfg, 2, compile=False)
    monkeypatch.setattr(compiling, "COMPILE_FAILED", False)
    torch._dynamo.reset()
    try:
        with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
            compiled = _fit(cfg, 2, compile=True)
    finally:
        torch._dynamo.reset()
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "run.compile" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: run.compile: torch.compile failed"), err
    assert "training eagerly" in warnings[0] and "Traceback" not in err
    assert compiled == pytest.approx(eager, rel=1e-6)
