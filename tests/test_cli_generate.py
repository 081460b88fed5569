"""`rafale generate` end to end on a tiny saved model with its own tokenizer, and its text-level stops.

The subprocess tests run the real command (`python -m rafale generate ...`), as a user would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rafale.data.tokenizer import DECODER_SPECIALS, load_tokenizer, train_tokenizer
from rafale.models import Decoder, export_model, from_pretrained, get_config
from rafale.models.generate import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, complete, generate_texts

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["Once upon a time there was a little fox.", "The fox liked to run in the green forest.",
             "One day the fox met a bear who was very hungry.", "They became friends and shared their food."] * 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An HF-layout dir: a random 2-layer Pythia-shaped model and a small BPE tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(SENTENCES, "bpe", vocab_size=300, min_frequency=1, special_tokens=DECODER_SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    config = get_config("pythia-14m", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2,
                        max_seq_len=48, init_std=0.2)
    export_model(Decoder(config), path)
    return path


def rafale(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rafale", "generate", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_one_prompt_streams_its_continuation(model_dir, tmp_path):
    r = rafale(model_dir, "-p", "Once upon a time", "-n", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time") and len(r.stdout) > len("Once upon a time\n")
    assert "decoding: " in r.stderr and "tokens/s" in r.stderr


def test_a_prompts_file_gives_one_json_object_per_prompt(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The fox"}\n\n"One day"\n{"prompt": "They became friends and"}\n')
    out = tmp_path / "out.jsonl"
    r = rafale(model_dir, "--prompts-file", prompts, "--output", out, "-n", "6", "--temperature", "0.8",
               "--top-p", "0.9", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["The fox", "One day", "They became friends and"]
    for row in rows:
        assert set(row) == {"prompt", "completion", "tokens", "finish_reason"}
        assert 1 <= row["tokens"] <= 6 and row["finish_reason"] in ("eos", "stop", "length")


def test_a_bad_path_fails_in_one_line_with_exit_code_2(tmp_path):
    r = rafale(tmp_path, "-p", "hi", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "no tokenizer.json" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["{model}", "-p", "fox " * 60], "the model attends to at most 48 positions"),
    (["{model}", "-p", ""], "prompt 1 ('') is empty"),
    (["{model}", "-p", "hi", "--top-p", "1.5"], "top_p (--top-p) must be in (0, 1], got 1.5"),
    (["{model}", "-p", "hi", "--top-p", "0"], "top_p (--top-p) must be in (0, 1], got 0.0"),
    (["{model}", "-p", "hi", "--temperature", "-1"], "temperature (--temperature) must be >= 0"),
    (["{model}"], "give either -p/--prompt"),
    (["{model}", "--prompts-file", "missing.txt"], "--prompts-file missing.txt: no such file"),
    (["{model}", "--prompts-file", "bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["{model}", "--prompts-file", "empty.jsonl"], "empty.jsonl:1: expected a JSON object with a non-empty"),
])
def test_bad_input_is_one_line_and_exit_code_2(model_dir, tmp_path, monkeypatch, capsys, args, message):
    """Through the command's main(), in this process: the same path as above, without a new interpreter."""
    from rafale import cli

    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    (tmp_path / "empty.jsonl").write_text('{"prompt": ""}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAFALE_MALLOC", "0")
    monkeypatch.setattr(sys, "argv", ["rafale", "generate", *(a.format(model=model_dir) for a in args)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def run_main(argv, monkeypatch, capsys):
    """`rafale generate ARGV` through the command's main(), in this process: (exit code, stdout, stderr)."""
    from rafale import cli

    monkeypatch.setenv("RAFALE_MALLOC", "0")
    monkeypatch.setattr(sys, "argv", ["rafale", "generate", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_an_encoder_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from rafale.models import EncoderConfig, EncoderForMaskedLM, export_model

    tok = train_tokenizer(SENTENCES, "wordpiece", vocab_size=200, min_frequency=1,
                          special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = EncoderConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_head=2, n_embd=32, intermediate_size=64,
                           max_seq_len=32)
    export_model(EncoderForMaskedLM(config), tmp_path)
    code, out, err = run_main([tmp_path, "-p", "hi"], monkeypatch, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "holds an encoder (bert), which cannot generate text" in err


def test_a_hub_model_without_tokenizer_says_where_it_looked(model_dir, tmp_path, monkeypatch, capsys):
    from rafale.models import checkpoint

    download = tmp_path / "snapshot"
    download.mkdir()
    for name in ("config.json", "model.safetensors"):
        (download / name).write_bytes((model_dir / name).read_bytes())
    monkeypatch.setattr(checkpoint, "download", lambda repo_id: download)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["someone/tiny-model", "-p", "hi"], monkeypatch, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "someone/tiny-model: the hub repository has no tokenizer.json" in err and str(download) in err


def test_small_models_decode_on_one_thread(model_dir):
    from rafale.prompts import decoding_threads

    assert decoding_threads(from_pretrained(model_dir)) == 1


def test_stop_strings_and_eos_end_a_completion_where_expected(model_dir):
    model, tok = from_pretrained(model_dir), load_tokenizer(model_dir / "tokenizer.json")
    free = generate_texts(model, tok, ["The fox", "One day"], 12)
    assert [r.finish_reason for r in free] == [FINISH_LENGTH] * 2 and len(free[0].tokens) == 12
    assert complete(model, tok, "The fox", 12) == "The fox" + free[0].completion  # the end-of-run sample
    text = free[0].completion
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = generate_texts(model, tok, ["The fox", "One day"], 12, stop=[stop, "never there"])
    assert cut[0].finish_reason == FINISH_STOP and cut[0].completion == text[: text.index(stop)]
    assert len(cut[0].tokens) < 12 and cut[1].completion == free[1].completion.split(stop)[0]

    eos = free[0].tokens[4]
    tok.eos_id = eos  # pretend that token ends a text
    ended = generate_texts(model, tok, ["The fox"], 12)[0]
    assert ended.finish_reason == FINISH_EOS and ended.tokens == free[0].tokens[: free[0].tokens.index(eos) + 1]
    assert ended.completion == tok.tokenizer.decode(ended.tokens[:-1])


def test_streamed_pieces_add_up_to_the_completion(model_dir):
    model, tok = from_pretrained(model_dir), load_tokenizer(model_dir / "tokenizer.json")
    pieces = []
    r = generate_texts(model, tok, ["Once"], 10, stop=["zzz"], on_text=lambda i, piece: pieces.append(piece))[0]
    assert "".join(pieces) == r.completion and len(pieces) > 1
