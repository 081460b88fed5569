"""Data tests: every test gets its own empty cache, and the hub is unreachable (offline mode), so a
test that touches the hub fails fast instead of waiting on the network."""

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from rafale.config import config_from_dict  # noqa: E402

WORDS = ("the cat sat on a mat and a dog ran to the park while birds sang songs of the old town by the "
         "river where children played games with red balls and blue kites under a warm bright sun").split()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("cache")  # outside tmp_path, which tests use as a source folder
    monkeypatch.setenv("RAFALE_CACHE", str(path))
    return path


def sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


def data_cfg(**data):
    """A DataConfig with a small trained tokenizer unless the test says otherwise."""
    data.setdefault("tokenizer", {"train": {"vocab_size": 300, "min_frequency": 1}})
    data.setdefault("block_size", 16)
    return config_from_dict({"data": data}).data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
