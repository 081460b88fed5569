"""Config loading: the schema, overrides, and every validation error naming the file and key."""

from pathlib import Path

import pytest

from rafale.config import Config, config_from_dict, load_config
from rafale.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), Config)


def test_defaults_fill_missing_sections(tmp_path):
    cfg = load_config(write(tmp_path, "run: {name: tiny}\n"))
    assert cfg.run.name == "tiny"
    assert cfg.optim.lr == pytest.approx(6e-4)
    assert cfg.data.block_size == 256
    assert cfg.source_path.endswith("exp.yaml")


def test_overrides_win_and_are_typed(tmp_path):
    path = write(tmp_path, "optim: {lr: 1.0e-3}\ndata: {block_size: 64}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "data.block_size=32", "model.overrides.n_layer=2",
                             "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; a float field accepts it
    assert cfg.data.block_size == 32
    assert cfg.model.overrides == {"n_layer": 2}
    assert cfg.optim.betas == [0.8, 0.9]


def test_to_dict_round_trips(tmp_path):
    import yaml

    from rafale.config import dump_config

    cfg = load_config(write(tmp_path, "run: {name: a}\nmodel: {overrides: {n_layer: 2}}\n"))
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("text, match", [
    ("run: {nam: x}\n", r"exp\.yaml: run\.nam: unknown key; did you mean 'name'\?"),
    ("rn: {name: x}\n", r"rn: unknown key; did you mean 'run'\?"),
    ("data: {block_size: big}\n", r"data\.block_size: expected an integer, got 'big'"),
    ("data: {block_size: 0}\n", r"data\.block_size: expected a positive integer, got 0"),
    ("data: {train_batch_size: -4}\n", r"data\.train_batch_size: expected a positive integer, got -4"),
    ("data: {eval_split: 1.5}\n", r"data\.eval_split: expected a fraction in \[0, 1\), got 1\.5"),
    ("optim: {lr: fast}\n", r"optim\.lr: expected a number, got 'fast'"),
    ("optim: {name: adam}\n", r"optim\.name: 'adam' is not one of adamw, decoupled_adamw, sgd"),
    ("optim: {betas: 0.9}\n", r"optim\.betas: expected a list of a number, got 0\.9"),
    ("run: {max_duration: forever}\n", r"run\.max_duration: 'forever' is not a duration"),
    ("run: {precision: fp8}\n", r"run\.precision: 'fp8' is not one of"),
    ("run: {device_batch_size: many}\n", r"run\.device_batch_size: expected a positive integer or 'auto'"),
    ("run: {name: ../escape}\n", r"run\.name: '\.\./escape' must be a plain directory name"),
    ("data: {tokenizer: {path: t.json, train: {vocab_size: 512}}}\n", r"data\.tokenizer: expected exactly one of"),
    ("data: {tokenizer: {train: {vocab_size: 100}}}\n", r"data\.tokenizer\.train\.vocab_size: expected at least 260"),
    ("logging: {loggers: [console, paper]}\n", r"logging\.loggers\[1\]: 'paper' is not one of"),
    ("- just\n- a list\n", r"exp\.yaml: expected a mapping of sections"),
    ("run: [1, 2]\n", r"run: expected a mapping, got a list"),
])
def test_bad_values_name_file_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "run: {nam: x}\ndata: {block_size: 0, train_batch_size: 0}\n"))
    msg = str(e.value)
    assert "3 problems" in msg
    assert all(key in msg for key in ("run.nam", "data.block_size", "data.train_batch_size"))


def test_missing_file_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"exp\.yaml: invalid YAML at line 3, column 7: mapping values"):
        load_config(write(tmp_path, "run:\n  name: x\n   bad: indent\n"))


@pytest.mark.parametrize("item", ["optim.lr", "=3", ""])
def test_malformed_override(tmp_path, item):
    with pytest.raises(ConfigError, match="override must be key=value"):
        load_config(write(tmp_path, "run: {name: a}\n"), [item])


def test_override_under_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lr\.x: cannot set a key under 'lr'"):
        load_config(write(tmp_path, "optim: {lr: 0.1}\n"), ["optim.lr.x=1"])


def test_an_empty_section_takes_the_defaults_but_an_empty_file_is_an_error(tmp_path):
    cfg = load_config(write(tmp_path, "run: {name: a}\nmodel:\n"))
    assert cfg.model.config == "pythia-14m" and cfg.run.name == "a"
    for text in ("", "# only a comment\n"):
        with pytest.raises(ConfigError, match=r"exp\.yaml: the file is empty; expected a YAML config"):
            load_config(write(tmp_path, text))


def test_a_tokenizer_given_as_a_string_is_its_path():
    cfg = config_from_dict({"data": {"tokenizer": "tok/tokenizer.json"}})
    assert (cfg.data.tokenizer.path, cfg.data.tokenizer.train) == ("tok/tokenizer.json", None)
    cfg = config_from_dict({"data": {"tokenizer": {"path": "tok/tokenizer.json"}}})
    assert (cfg.data.tokenizer.path, cfg.data.tokenizer.train) == ("tok/tokenizer.json", None)
