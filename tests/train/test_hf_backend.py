"""model.hf: a transformers causal LM trains through Composer's HuggingFaceModel."""

import builtins

import pytest
import torch
from composer import Trainer

from rafale.errors import ModelError
from rafale.train.hf_backend import build_hf_model

transformers = pytest.importorskip("transformers")


@pytest.fixture
def neox_dir(tmp_path):
    config = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=32)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    return tmp_path / "neox"


def test_one_composer_fit_step_on_a_batch_dict(neox_dir):
    model = build_hf_model(neox_dir)
    ids = torch.randint(0, 64, (4, 16))
    loader = torch.utils.data.DataLoader([{"input_ids": i, "labels": i} for i in ids], batch_size=4)
    trainer = Trainer(model=model, train_dataloader=loader, eval_dataloader=loader, eval_interval="1ba",
                      max_duration="1ba", optimizers=torch.optim.AdamW(model.parameters(), lr=1e-3), device="cpu",
                      progress_bar=False, log_to_console=False, loggers=[], python_log_level=None)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 1
    assert any(not torch.equal(before[k], p) for k, p in model.named_parameters())
    perplexity = trainer.state.eval_metrics["eval"]["LanguagePerplexity"].compute().item()
    assert 1.0 < perplexity < 2 * 64  # near uniform over the 64-token vocabulary, as a random model is


def test_missing_transformers_is_a_model_error(neox_dir, monkeypatch):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ModelError, match=r"^model.hf needs transformers: pip install transformers$"):
        build_hf_model(neox_dir)


def test_pickle_only_dir_is_refused(neox_dir):
    (neox_dir / "model.safetensors").rename(neox_dir / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights"):
        build_hf_model(neox_dir)
