"""Tiny models with their own tokenizer, and local lm-eval tasks: shared by tests/eval and tests/test_bad_inputs.py."""

import json
from pathlib import Path

import torch

from rafale.data.synthetic import load_synthetic
from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer
from rafale.files import write_json
from rafale.models import Decoder, export_model, get_config
from rafale.models.export import tokenizer_config

STORIES = load_synthetic("stories", n=120, seed=3)
MAX_LEN = 64  # short, so that the stories need left truncation and several rolling windows


def make_model_dir(path: Path, family: str) -> Path:
    """An HF-layout dir that both rafale and transformers load: a random 2-layer model and a BPE tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(STORIES, "bpe", vocab_size=400, min_frequency=2, special_tokens=DECODER_SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    overrides = {"n_kv_head": 2} if family == "llama-tiny" else {}
    config = get_config(family, vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=4, max_seq_len=MAX_LEN,
                        init_std=0.2, **overrides)
    export_model(Decoder(config), path)
    write_json(path / "tokenizer_config.json", tokenizer_config(path / "tokenizer.json", MAX_LEN))
    return path


def write_tasks(folder: Path, n_mc: int = 12, n_ppl: int = 6) -> Path:
    """lm-eval tasks over local json files (dataset_path: json): local_mc (multiple choice, a 3-example few-shot
    split), local_ppl (rolling log-likelihood) and local_gen (generation)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, story in enumerate(STORIES[:n_mc + 3]):
        cut = story.rfind(" ", 0, 120 + 7 * i)
        words = story[cut:].split()
        rows.append({"context": story[:cut], "choices": [words[0], words[1], "zebra", "Banana pie"], "label": 0})
    for name, part in (("mc_train", rows[:3]), ("mc_test", rows[3:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES[-n_ppl:]))
    common = "dataset_path: json\n"
    (folder / "local_mc.yaml").write_text(
        "task: local_mc\n" + common +
        f"dataset_kwargs:\n  data_files:\n    train: {folder / 'mc_train.jsonl'}\n    test: {folder / 'mc_test.jsonl'}\n"
        "output_type: multiple_choice\ntraining_split: train\ntest_split: test\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "local_ppl.yaml").write_text(
        "task: local_ppl\n" + common + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
        'output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (folder / "local_gen.yaml").write_text(
        "task: local_gen\n" + common + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'mc_test.jsonl'}\n"
        'output_type: generate_until\ntest_split: test\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{choices[0]}}"\n'
        "generation_kwargs:\n  until: [\".\"]\n  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n")
    return folder
