"""LoRA: the layer, applying and merging it, and its adapter in PEFT's layout loaded by peft itself.

Tiny random models of each family (2 layers, width 32); adapters get random B (and A) so that a swapped
row or a wrong scale shows in the logits. Everything in fp32 on CPU.
"""

import json

import pytest
import torch

from rafale.errors import ConfigError, ModelError
from rafale.models import Decoder, export_model, get_config, load_pretrained, model_from_config
from rafale.models.lora import (LoRALinear, adapter_tensors, apply_lora, lora_modules, merge_lora, save_adapter,
                                trainable_counts)

SIZES = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=96, max_seq_len=64)
FAMILIES = {  # the registry entry's switches, shrunk
    "gpt_neox": lambda: model_from_config(get_config("pythia-14m", **SIZES)),
    "llama": lambda: model_from_config(get_config("llama-tiny", n_kv_head=2, **SIZES)),  # grouped-query
    "bert": lambda: model_from_config(get_config("bert-tiny", **SIZES, num_labels=3), head="classification"),
}
IDS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))


def randomize(model, std=0.2):
    """Every adapter (and fully trained) tensor gets random values, as training would give them."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return model


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS)


@pytest.mark.parametrize("family", FAMILIES)
def test_step_zero_equals_the_base_and_merging_changes_nothing(family):
    model = FAMILIES[family]()
    base = logits(model)
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=["all"])
    torch.testing.assert_close(logits(model), base, rtol=0, atol=0)  # B = 0: exactly the base
    randomize(model)
    unmerged = logits(model)
    assert not torch.allclose(unmerged, base)
    merge_lora(model)
    assert not lora_modules(model)
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-5)


def test_only_adapters_are_trainable_and_only_they_change():
    model = FAMILIES["gpt_neox"]()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8, targets=["attention"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == [f"blocks.{i}.attn.{m}.lora_{x}.weight" for i in range(2) for m in ("qkv", "o_proj")
                     for x in "AB"]
    trainable, total = trainable_counts(model)
    assert trainable == sum(model.get_parameter(n).numel() for n in names) and total > 10 * trainable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model.train()(IDS).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k  # bit for bit
    assert all(not torch.equal(model.get_parameter(n), torch.zeros(())) for n in names)


def test_layer_formula():
    base = torch.nn.Linear(6, 5)
    lora = LoRALinear(base, rank=2, alpha=6)
    assert lora.weight is base.weight and not lora.weight.requires_grad
    torch.nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(3, 6)
    expected = base(x) + 3.0 * x @ lora.lora_A.weight.T @ lora.lora_B.weight.T
    torch.testing.assert_close(lora(x), expected)
    torch.testing.assert_close(lora.merged()(x), expected, rtol=0, atol=1e-6)


def test_targets_that_match_nothing_list_what_there_is():
    model = FAMILIES["llama"]()
    with pytest.raises(ConfigError, match=r"'q_proj' matches no linear layer .*blocks\.\{\}\.attn\.qkv"):
        apply_lora(model, rank=4, alpha=8, targets=["q_proj"])
    with pytest.raises(ConfigError, match="'lm_head' matches no linear layer"):  # heads: modules_to_save
        apply_lora(model, rank=4, alpha=8, targets=["lm_head"])
    with pytest.raises(ConfigError, match="modules_to_save: 'classifier' matches no module"):
        apply_lora(model, rank=4, alpha=8, modules_to_save=["classifier"])
    apply_lora(model, rank=4, alpha=8, targets=["o_proj", "mlp"], modules_to_save=["head"])
    assert sorted({n.split(".", 2)[2] for n in lora_modules(model)}) == ["attn.o_proj", "mlp.down_proj",
                                                                         "mlp.gate_proj", "mlp.up_proj"]
    assert model.lm_head.weight.requires_grad


# ---- PEFT loads the adapter onto transformers' base model -----------------------------------------------------
def hf_base(family, base_dir):
    import transformers

    if family == "bert":
        return transformers.AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3,
                                                                               attn_implementation="eager")
    return transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_loads_the_adapter_with_the_merged_logits(family, tmp_path):
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    model = FAMILIES[family]()
    # the base as a user would have it; a BERT backbone gets a fresh classification head, trained fully
    export_model(model.encoder if family == "bert" else model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8, targets=["all"], modules_to_save=["head"] if family == "bert" else [])
    randomize(model)
    save_adapter(model, tmp_path / "adapter", base=tmp_path / "base")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    merged = logits(merge_lora(model))

    hf = peft.PeftModel.from_pretrained(hf_base(family, tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = hf(input_ids=IDS).logits
    diff = (theirs - merged).abs().max().item()
    print(f"{family}: peft vs merged max |diff| {diff:.2e}; target_modules {config['target_modules']}")
    assert diff < 1e-5
    n_lora = sum(1 for n, _ in hf.named_modules() if n.endswith(".lora_A"))
    assert n_lora == {"gpt_neox": 8, "llama": 14, "bert": 12}[family]  # llama: fused qkv -> q, k, v


def test_adapter_names_and_config(tmp_path):
    model = FAMILIES["llama"]()
    apply_lora(model, rank=4, alpha=8, targets=["attention"])
    randomize(model)
    save_adapter(model, tmp_path, base="owner/base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == \
        ("LORA", 4, 8, "owner/base")
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    keys = adapter_tensors(model)
    a = [keys[f"base_model.model.model.layers.0.self_attn.{p}_proj.lora_A.weight"] for p in "qkv"]
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])  # one shared A
    assert keys["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (16, 4)  # 2 kv heads


def test_an_adapter_only_dir_loads_as_the_merged_model(tmp_path):
    model = FAMILIES["gpt_neox"]()
    export_model(model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8, targets=["all"])
    randomize(model)
    save_adapter(model, tmp_path / "run" / "adapter", base=tmp_path / "base")
    merged = logits(merge_lora(model))
    loaded, _ = load_pretrained(tmp_path / "run")
    assert isinstance(loaded, Decoder) and not lora_modules(loaded)
    assert all(p.requires_grad for p in loaded.parameters())  # ready for full fine-tuning
    torch.testing.assert_close(logits(loaded), merged, rtol=0, atol=1e-5)
    (tmp_path / "base" / "model.safetensors").unlink()
    import shutil

    shutil.rmtree(tmp_path / "base")
    with pytest.raises(ModelError, match="the adapter's base model .* is missing"):
        load_pretrained(tmp_path / "run")
