"""Every registry entry builds, and has the size transformers gives the same checkpoint."""

import pytest
import torch

from rafale.errors import ModelError
from rafale.models import Decoder, get_config, list_models
from rafale.models.registry import decoders, name_to_config
from rafale.models.weights import config_from_hf, config_to_hf

# Total parameter counts published by the checkpoints' authors (Pythia: the model card's table of
# exact counts), independent of rafale's own translation of the configs.
PUBLISHED = {
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
}
PUBLISHED_NON_EMBEDDING = {"pythia-14m": 1_189_888, "pythia-31m": 4_739_072, "pythia-70m": 18_915_328}


def meta_decoder(name: str) -> Decoder:
    with torch.device("meta"):
        return Decoder(get_config(name))


@pytest.mark.parametrize("name", [c["name"] for c in decoders])
def test_entry_matches_transformers_parameter_count(name):
    transformers = pytest.importorskip("transformers")
    config = get_config(name)
    hf_config = config_to_hf(config)
    assert config_from_hf(hf_config, name=name) == config
    model_class = getattr(transformers, hf_config["architectures"][0])  # imported outside the meta context
    with torch.device("meta"):
        hf_model = model_class(transformers.AutoConfig.for_model(**hf_config))
    assert meta_decoder(name).num_params() == sum(p.numel() for p in hf_model.parameters())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_entry_matches_published_parameter_count(name):
    assert meta_decoder(name).num_params() == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PUBLISHED_NON_EMBEDDING))
def test_entry_matches_published_non_embedding_count(name):
    assert meta_decoder(name).num_params(exclude_embedding=True) == PUBLISHED_NON_EMBEDDING[name]


def test_overrides_replace_fields():
    config = get_config("llama-tiny", n_layer=2, vocab_size=512)
    assert (config.n_layer, config.vocab_size, config.n_kv_head) == (2, 512, 2)
    assert get_config("llama-tiny").n_layer == 4  # the registry entry itself is untouched


def test_entries_do_not_share_mutable_values():
    get_config("Llama-3.2-1B").rope_scaling["factor"] = 1.0
    assert get_config("Llama-3.2-1B").rope_scaling["factor"] == 32.0


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ModelError, match=r"^model.config: 'pythia-14' is not a known model; did you mean "
                                         r"'pythia-14m'\? \(see `rafale models`\)$"):
        get_config("pythia-14")
    with pytest.raises(ModelError, match="did you mean 'SmolLM-135M'"):
        get_config("smollm-135m")
    with pytest.raises(ModelError, match=r"^model.config: 'zzzzzz' is not a known model \(see `rafale models`\)$"):
        get_config("zzzzzz")


def test_unknown_override_key_lists_the_valid_ones():
    with pytest.raises(ModelError, match=r"model.overrides: unknown key 'n_layers'; valid keys: .*n_layer, "):
        get_config("pythia-14m", n_layers=2)


def test_inconsistent_override_is_a_model_error():
    with pytest.raises(ModelError, match="model.overrides: DecoderConfig 'pythia-14m': n_embd 130 is not divisible"):
        get_config("pythia-14m", n_embd=130)


def test_list_models_rows():
    rows = {name: (family, n) for name, family, n in list_models()}
    assert list(rows) == list(name_to_config)
    assert rows["pythia-70m"] == ("gpt_neox", 70_426_624)
    assert rows["Qwen2.5-0.5B"][0] == "qwen2" and rows["llama-tiny"][0] == "llama"
    assert rows["bert-base-uncased"] == ("bert", 109_514_298)  # BertForMaskedLM's count (no pooler)
    assert rows["roberta-base"][0] == "roberta"
