"""RetNet: the three forms of retention equal (float64), the whole model equal across them (fp32), generation
with the recurrent state, packed rows, save/load, transformers through rafale.hf, and the registry sizes."""

import pytest
import torch

from rafale.errors import ModelError
from rafale.models import Decoder, RetNet, export_model, from_pretrained, get_config, list_models
from rafale.models.generate import Sampling, generate
from rafale.models.registry import retnets
from rafale.models.retnet import (chunkwise_retention, decay_mask, log_gammas, parallel_retention,
                                  recurrent_retention)

B, NH, T, DK, DV = 3, 4, 37, 8, 16
PROMPTS = [[5, 17, 99, 3, 42, 7, 7, 200], [11], [64, 65, 66, 67]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are dispatch-bound: extra threads only wait for each other on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def empty_state(dtype=torch.float64):
    return (torch.zeros(B, NH, DK, DV, dtype=dtype), torch.zeros(B, NH, 1, DK, dtype=dtype),
            torch.zeros(B, NH, 1, 1, dtype=dtype))


def random_qkv():
    # Large enough that some rows' sums pass 1 and the |sum| normalisation acts, others not.
    return tuple(torch.randn(B, NH, T, d, dtype=torch.float64) for d in (DK, DK, DV))


def recurrent_all(q, k, v, log_gamma, keep=None):
    state, outputs = empty_state(), []
    for t in range(q.size(2)):
        o, state = recurrent_retention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], log_gamma, state,
                                       None if keep is None else keep[:, t])
        outputs.append(o)
    return torch.cat(outputs, dim=2), state


def test_three_forms_are_equal_in_float64():
    q, k, v = random_qkv()
    log_gamma = log_gammas(NH).double()
    parallel = parallel_retention(q, k, v, decay_mask(log_gamma, T))
    recurrent, final_state = recurrent_all(q, k, v, log_gamma)
    assert (recurrent - parallel).abs().max() < 1e-10
    for chunk_size in (1, 5, 16, T, 64):  # one token, uneven chunks, exactly T, more than T
        chunkwise, state = chunkwise_retention(q, k, v, log_gamma, empty_state(), chunk_size)
        assert (chunkwise - parallel).abs().max() < 1e-10
        for a, b in zip(state, final_state):  # the chunkwise form also ends in the recurrent form's state
            assert (a - b).abs().max() < 1e-10


def test_padding_keys_stay_out_in_every_form():
    q, k, v = random_qkv()
    log_gamma = log_gammas(NH).double()
    keep = torch.ones(B, T, dtype=torch.float64)
    keep[1, :10], keep[2, :3] = 0, 0  # left padding
    parallel = parallel_retention(q, k, v, decay_mask(log_gamma, T, keep))
    recurrent, _ = recurrent_all(q, k, v, log_gamma, keep)
    chunkwise, _ = chunkwise_retention(q, k, v, log_gamma, empty_state(), 7, keep)
    real = keep.bool()[:, None, :, None].expand_as(parallel)
    assert (recurrent - parallel)[real].abs().max() < 1e-10
    assert (chunkwise - parallel)[real].abs().max() < 1e-10
    alone = parallel_retention(q[1:2, :, 10:], k[1:2, :, 10:], v[1:2, :, 10:], decay_mask(log_gamma, T - 10))
    assert (alone - parallel[1:2, :, 10:]).abs().max() < 1e-10


def tiny(**overrides) -> RetNet:
    """A random tiny RetNet with weights spread out (not near-ties for greedy decoding), in eval mode."""
    config = get_config("retnet-14m", n_layer=2, n_embd=64, vocab_size=256, max_seq_len=128, **overrides)
    model = RetNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_model_logits_equal_across_forms_in_fp32(mlp):
    model = tiny(mlp=mlp, chunk_size=64)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        parallel = model(ids)  # 40 <= chunk_size: parallel
        state = model.make_kv_cache(2, 40)
        recurrent = torch.cat([model(ids[:, t:t + 1], kv_cache=state) for t in range(40)], dim=1)
        model.config.chunk_size = 16
        for block in model.blocks:
            block.retention.chunk_size = 16
        chunkwise = model(ids)  # 40 > chunk_size: chunkwise
    assert state.pos == 40
    assert (recurrent - parallel).abs().max() < 1e-4
    assert (chunkwise - parallel).abs().max() < 1e-4


def new_tokens(model, prompts, n, **kw):
    rows = [[] for _ in prompts]
    for out in generate(model, prompts, n, **kw):
        for row, token in enumerate(out):
            if token is not None:
                rows[row].append(token)
    return rows


def test_batched_left_padded_generation_equals_each_prompt_alone():
    model = tiny(chunk_size=4)  # the 8-token prompt fills its state in two chunks
    together = new_tokens(model, PROMPTS, 20)
    assert together == [new_tokens(model, [p], 20)[0] for p in PROMPTS]
    with torch.no_grad():  # and greedy decoding follows the parallel form's argmax
        ids = torch.tensor([PROMPTS[0] + together[0]])
        assert model(ids)[0, len(PROMPTS[0]) - 1:-1].argmax(-1).tolist() == together[0]
    sampling = Sampling(temperature=0.8, top_p=0.9)  # sampling runs through the same state, reproducibly
    assert new_tokens(model, PROMPTS, 12, seed=3, sampling=sampling) == \
        new_tokens(model, PROMPTS, 12, seed=3, sampling=sampling)


def test_packed_segments_are_retained_as_if_alone():
    model = tiny()
    a, b = torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 6))
    row = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    segments = torch.tensor([[1] * 9 + [2] * 6 + [0] * 3])
    with torch.no_grad():
        packed = model.hidden_states(row, segment_ids=segments)
        assert (packed[:, :9] - model.hidden_states(a)).abs().max() < 1e-5
        assert (packed[:, 9:15] - model.hidden_states(b)).abs().max() < 1e-5


def test_save_and_load_give_equal_logits(tmp_path):
    model = tiny(mlp="swiglu", tie_embeddings=True)
    export_model(model, tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"model_type": "rafale_retnet"' in config
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config.__class__(**{**model.config.__dict__, "name": loaded.config.name})
    ids = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.lm_head.weight is loaded.wte.weight


def test_transformers_loads_and_generates_through_rafale_hf(tmp_path):
    pytest.importorskip("transformers")
    import rafale.hf  # noqa: F401
    from transformers import AutoModelForCausalLM

    model = tiny(chunk_size=4)
    export_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5
    width = max(len(p) for p in PROMPTS)
    inputs = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(inputs)
    for row, p in enumerate(PROMPTS):
        inputs[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    out = hf.generate(inputs, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert out[:, width:].tolist() == new_tokens(model, PROMPTS, 10)


@pytest.mark.parametrize("entry", retnets, ids=lambda e: e["name"])
def test_registry_entry_is_within_5_percent_of_its_pythia(entry):
    with torch.device("meta"):
        ours = RetNet(get_config(entry["name"])).num_params()
        pythia = Decoder(get_config(entry["name"].replace("retnet", "pythia"))).num_params()
    assert abs(ours - pythia) / pythia < 0.05


def test_rafale_models_lists_the_retnets():
    families = {name: family for name, family, _ in list_models()}
    assert all(families[e["name"]] == "rafale_retnet" for e in retnets)


@pytest.mark.parametrize("overrides, message", [
    ({"n_head": 3}, r"model.overrides: RetNetConfig 'retnet-14m': n_embd 128 is not divisible by n_head 3"),
    ({"chunk_size": 0}, r"model.overrides: RetNetConfig 'retnet-14m': chunk_size must be positive, got 0"),
    ({"mlp": "relu"}, r"mlp must be 'gelu' or 'swiglu', got 'relu'"),
])
def test_bad_overrides_are_model_errors(overrides, message):
    with pytest.raises(ModelError, match=message):
        get_config("retnet-14m", **overrides)
    assert get_config("retnet-14m", n_layer=2, chunk_size=64).chunk_size == 64  # good ones apply
