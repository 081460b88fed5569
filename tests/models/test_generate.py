"""Generation: cached decoding against the uncached model and against transformers, batching, sampling, stops.

Tiny random models only; every HF parameter is randomised (as in test_weights.py) so the logits are
spread out and greedy choices are not near-ties.
"""

import pytest
import torch

from rafale.errors import ConfigError
from rafale.models import Decoder, DecoderConfig, from_pretrained
from rafale.models.decode import DecodeStep
from rafale.models.generate import Sampling, compile_pays, generate, sample

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig  # noqa: E402

VOCAB = 256
SIZES = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=64)
HF_CONFIGS = {
    "neox": lambda: GPTNeoXConfig(**SIZES, rotary_pct=0.25, use_parallel_residual=True),
    "llama": lambda: LlamaConfig(**SIZES, num_key_value_heads=2),
}
PROMPTS = [[5, 17, 99, 3, 42, 7, 7, 200], [11], [64, 65, 66, 67]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decoding a tiny model is dispatch-bound: extra threads only wait for each other (100x slower on a
    busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF model, the same weights loaded by rafale) for GPT-NeoX and Llama."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(HF_CONFIGS[request.param](), attn_implementation="eager")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
    path = tmp_path_factory.mktemp(request.param)
    hf.eval().save_pretrained(path)
    return hf, from_pretrained(path)


def tokens(model, prompts, n, **kw):
    """The new ids of every prompt, generated together."""
    rows = [[] for _ in prompts]
    for out in generate(model, prompts, n, **kw):
        for row, t in enumerate(out):
            if t is not None:
                rows[row].append(t)
    return rows


@torch.no_grad()
def uncached_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_cached_decoding_equals_uncached(pair):
    _, model = pair
    for prompt in PROMPTS:
        assert tokens(model, [prompt], 20) == [uncached_greedy(model, prompt, 20)]


def test_greedy_equals_transformers_generate(pair):
    hf, model = pair
    for prompt in PROMPTS:
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
        assert tokens(model, [prompt], 20) == [out[0, len(prompt):].tolist()]


def test_a_batch_of_different_lengths_equals_each_prompt_alone(pair):
    _, model = pair
    alone = [tokens(model, [p], 16)[0] for p in PROMPTS]
    assert tokens(model, PROMPTS, 16) == alone


def test_repetition_penalty_in_a_padded_batch_equals_alone(pair):
    _, model = pair
    s = Sampling(repetition_penalty=1.5)
    assert tokens(model, PROMPTS, 12, sampling=s) == [tokens(model, [p], 12, sampling=s)[0] for p in PROMPTS]


def test_top_k_1_equals_greedy_and_a_seed_reproduces_sampling(pair):
    _, model = pair
    greedy = tokens(model, PROMPTS, 12)
    assert tokens(model, PROMPTS, 12, sampling=Sampling(temperature=1.5, top_k=1), seed=3) == greedy
    s = Sampling(temperature=1.5, top_k=50, top_p=0.9)
    a, b = tokens(model, PROMPTS, 12, sampling=s, seed=7), tokens(model, PROMPTS, 12, sampling=s, seed=7)
    assert a == b and a != greedy
    assert tokens(model, PROMPTS, 12, sampling=s, seed=8) != a


def test_eos_ends_a_row_and_the_others_go_on(pair):
    _, model = pair
    free = tokens(model, PROMPTS, 10)
    eos = free[0][3]
    first = free[0].index(eos)
    out = tokens(model, PROMPTS, 10, eos_id=eos)
    assert out[0] == free[0][: first + 1]
    for got, want in zip(out[1:], free[1:]):
        assert got == (want[: want.index(eos) + 1] if eos in want else want)


def test_generation_stops_at_the_models_positions():
    model = Decoder(DecoderConfig(vocab_size=32, n_layer=1, n_head=2, n_embd=16, max_seq_len=12)).eval()
    assert len(tokens(model, [[1, 2, 3, 4, 5]], 100)[0]) == 12 - 5
    with pytest.raises(ConfigError, match="at most 12 positions"):
        tokens(model, [list(range(12))], 1)
    with pytest.raises(ConfigError, match="prompt 2 is empty"):
        tokens(model, [[1], []], 1)


def test_sample_is_pure_and_validates_its_ranges():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert sample(logits).tolist() == [1, 0]
    assert sample(logits, temperature=2.0, top_k=1).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = {tuple(sample(logits, 1.0, top_p=0.5, generator=g).tolist()) for _ in range(20)}
    assert draws == {(1, 0)}  # the nucleus of p=0.5 is the top token alone for both rows
    draws = {sample(logits[:1], 1.0, top_k=2, generator=g).item() for _ in range(50)}
    assert draws == {1, 3}
    for kw, match in [(dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
                      (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k")]:
        with pytest.raises(ConfigError, match=match):
            sample(logits, **kw)


def test_the_decoding_step_follows_weights_changed_in_place(pair):
    _, model = pair
    before = tokens(model, PROMPTS, 8)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(-1.0)
    try:
        assert tokens(model, PROMPTS, 8) == [uncached_greedy(model, p, 8) for p in PROMPTS] != before
    finally:
        with torch.no_grad():
            model.blocks[0].attn.qkv.weight.mul_(-1.0)


def test_compiled_decoding_gives_the_eager_tokens_and_falls_back_without_a_compiler(capfd):
    """The step compiled with fixed shapes (the whole cache, a position tensor), padded rows included,
    through torch.compile's aot_eager backend (inductor's C++ build takes a minute here: benchmarks/
    generate.py --compiled checks its tokens); then inductor on a machine without a C++ compiler: one
    warning line, and the eager step's tokens."""
    import torch._dynamo
    import torch._inductor.config as inductor

    model = Decoder(DecoderConfig(vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=2, n_embd=32,
                                  max_seq_len=64)).eval()
    eager = tokens(model, PROMPTS, 12, compiled=False)
    assert DecodeStep.for_model(model).compile(backend="aot_eager")
    assert tokens(model, PROMPTS, 12, compiled=True) == eager

    other = Decoder(DecoderConfig(vocab_size=VOCAB, n_layer=1, n_head=4, n_embd=32, max_seq_len=64)).eval()
    cxx = inductor.cpp.cxx
    inductor.cpp.cxx = (None, "/nonexistent/c++")
    try:
        capfd.readouterr()
        out = tokens(other, PROMPTS, 6, compiled=True)
    finally:
        inductor.cpp.cxx = cxx
        torch._dynamo.reset()
    assert out == tokens(other, PROMPTS, 6, compiled=False)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: compiling the decoding step failed (InductorError); decoding eagerly"]


def test_the_step_is_compiled_only_where_the_planned_steps_pay_for_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compile_pays(cpu, step_s=0.01, steps_left=10**6)  # measured no faster on CPU
    assert not compile_pays(cuda, step_s=0.001, steps_left=256)  # a short generation
    assert compile_pays(cuda, step_s=0.001, steps_left=200_000)  # eval's many prompts, long completions
    model = Decoder(DecoderConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, max_seq_len=64)).eval()
    tokens(model, PROMPTS, 20, planned_steps=10**6)
    assert DecodeStep.for_model(model).compiled is None  # auto on CPU: eager, nothing compiled
