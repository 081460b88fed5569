"""The README documents every config key and every command, so the reference cannot fall behind."""

import dataclasses
from pathlib import Path

import pytest

from rafale import config as C
from rafale.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTIONS = {"run": C.RunConfig, "optim": C.OptimConfig, "model": C.ModelConfig, "data": C.DataConfig,
            "logging": C.LoggingConfig, "eval": C.EvalConfig,
            "sweep": C.SweepConfig}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_config_key_is_in_the_readme(section):
    # a nested section such as data.tokenizer is documented by its own keys (`tokenizer.path`, ...)
    missing = [f.name for f in dataclasses.fields(SECTIONS[section])
               if f"`{f.name}`" not in README and f"`{f.name}." not in README]
    assert not missing, f"README's config reference lacks {section}: {missing}"


def test_every_command_is_in_the_readme():
    import typer.main

    group = typer.main.get_command(app)
    missing = [name for name in group.commands if f"rafale {name}" not in README]
    assert not missing, f"README's command table lacks {missing}"
