"""The table of bad inputs: every mistake a user can make in a config, data, tokenizer, weights, generation
or the command line itself gives one line on stderr, `error: <where>: <what>; <what to do>`, names the
offending key, path or value, exits with code 2, prints no traceback, and creates or changes no cache entry
and no run directory.

Most cases run in this process through `rafale.cli.main` (fast); a handful run as real subprocesses.
Cases marked `cache_ok` fail only after a valid data preparation, so a (complete, valid) cache entry may
appear; no run directory may.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from micro import MICRO

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["Once upon a time there was a little fox.", "The fox liked to run in the green forest.",
             "One day the fox met a bear who was very hungry.", "They became friends and shared their food."] * 5


@dataclass
class Case:
    id: str
    argv: list  # after `rafale`; {w} is the work directory
    needle: str  # must appear in the error line: the offending key, path or value
    env: dict = field(default_factory=dict)
    cache_ok: bool = False  # a valid cache entry may be created before the mistake is found


def C(id, argv, needle, **kw):
    return pytest.param(Case(id, argv.split() if isinstance(argv, str) else argv, needle, **kw), id=id)


RUN = "run -c micro.yaml"
TOK = f"{RUN} data.tokenizer.train=null data.tokenizer.path="
LORA = RUN + " model.config=from_weights model.overrides={{}} model.weights={w}/tiny data.block_size=32"  # argv gets .format(w=)
CASES = [
    # ---- config file --------------------------------------------------------------------------------
    C("config-missing", "run -c missing.yaml", "missing.yaml: no such file"),
    C("config-is-dir", "run -c adir", "adir"),
    C("config-invalid-yaml", "run -c broken.yaml", "broken.yaml: invalid YAML at line 3"),
    C("config-not-mapping", "run -c list.yaml", "list.yaml: expected a mapping of sections"),
    C("config-not-utf8", "run -c latin1.yaml", "latin1.yaml: not UTF-8"),
    C("config-unknown-section", "run -c unknown_section.yaml", "trainer"),
    C("config-unknown-key", f"{RUN} run.sed=3", "run.sed: unknown key; did you mean 'seed'?"),
    C("config-bad-type", f"{RUN} optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    C("config-negative-block", f"{RUN} data.block_size=-1", "data.block_size: expected a positive integer, got -1"),
    C("config-zero-batch", f"{RUN} data.train_batch_size=0", "data.train_batch_size: expected a positive integer"),
    C("config-unknown-optimizer", f"{RUN} optim.name=lion", "optim.name: 'lion' is not one of"),
    C("config-warmup-too-long", f"{RUN} optim.warmup=2dur", "optim.warmup: 2dur is longer than the run"),
    C("config-bad-duration", f"{RUN} run.max_duration=forever", "run.max_duration"),
    C("config-bad-precision", f"{RUN} run.precision=fp8", "run.precision"),
    C("config-bad-compile", f"{RUN} run.compile=sometimes", "run.compile: expected true, false or auto, got 'sometimes'"),
    C("config-override-no-equals", f"{RUN} optim.lr", "override must be key=value"),
    C("config-eval-split", f"{RUN} data.eval_split=1.5", "data.eval_split: expected a fraction in [0, 1)"),
    C("config-max-documents", f"{RUN} data.max_documents=0", "data.max_documents: expected a positive integer"),
    C("config-eval-without-split", f"{RUN} data.eval_split=0", "run.eval_interval: 8ba asks for evaluation"),
    # ---- model ----------------------------------------------------------------------------------------
    C("model-unknown", f"{RUN} model.config=pythia14m", "'pythia14m' is not a known model; did you mean 'pythia-14m'?"),
    C("model-unknown-override", f"{RUN} model.overrides.n_layers=2", "model.overrides: unknown key 'n_layers'"),
    C("model-block-too-long", f"{RUN} data.block_size=4096", "data.block_size: 4096 is larger than the model's"),
    C("model-gpu-without-cuda", f"{RUN} run.device=gpu", "run.device: gpu"),
    C("model-fp16-on-cpu", f"{RUN} run.device=cpu run.precision=amp_fp16", "run.precision: amp_fp16 needs a GPU"),
    C("model-tokenizer-bigger-than-vocab", f"{TOK}tok300.json model.overrides.vocab_size=64",
      "has only 64 embedding rows"),
    C("model-retnet-heads-not-dividing", f"{RUN} model.config=retnet-14m model.overrides.n_head=3",
      "model.overrides: RetNetConfig 'retnet-14m': n_embd 64 is not divisible by n_head 3"),
    C("model-retnet-chunk-size", f"{RUN} model.config=retnet-14m model.overrides.chunk_size=0",
      "model.overrides: RetNetConfig 'retnet-14m': chunk_size must be positive, got 0"),
    # ---- data ---------------------------------------------------------------------------------------
    C("data-source-missing", f"{RUN} data.source=nowhere.txt", "nowhere.txt"),
    C("data-source-empty", f"{RUN} data.source=empty.txt", "empty.txt"),
    C("data-source-not-utf8", f"{RUN} data.source=latin1.txt", "latin1.txt"),
    C("data-jsonl-bad-line", f"{RUN} data.source=bad.jsonl", "bad.jsonl"),
    C("data-jsonl-wrong-field", f"{RUN} data.source=docs.jsonl", "body"),
    C("data-unknown-synthetic", f"{RUN} data.source=synthetic:poems", "synthetic:poems"),
    C("stream-mlm", f"{RUN} data.streaming=true data.pipeline=mlm", "data.streaming: supported with pipeline causal_lm"),
    C("stream-shuffle-buffer", f"{RUN} data.streaming=true data.shuffle_buffer=0", "data.shuffle_buffer"),
    C("stream-source-missing", f"{RUN} data.streaming=true data.source=nowhere.jsonl", "nowhere.jsonl"),
    C("stream-wrong-field", f"{RUN} data.streaming=true data.source=docs.jsonl", "found: body"),
    C("stream-bad-line", f"{RUN} data.streaming=true data.source=bad.jsonl", "bad.jsonl:2: invalid JSON"),
    C("stream-epochs", f"{RUN} data.streaming=true run.max_duration=1ep", "run.max_duration: 1ep with data.streaming"),
    # found after tokenizing: the BPE tokenizer trained on the source is cached (a complete, valid entry)
    C("data-too-little-text", f"{RUN} data.source=tiny.txt data.eval_split=0 run.eval_interval=0ba", "tiny.txt",
      cache_ok=True),
    C("data-batch-more-than-blocks", f"{RUN} data.train_batch_size=100000", "data.train_batch_size: 100000",
      cache_ok=True),
    # ---- tokenizer ----------------------------------------------------------------------------------
    C("tokenizer-missing", f"{TOK}missing_tok.json", "missing_tok.json does not exist"),
    C("tokenizer-missing-in-dir", f"{TOK}missing/tokenizer.json", "missing/tokenizer.json does not exist"),
    C("tokenizer-truncated", f"{TOK}truncated_tok.json", "truncated_tok.json"),
    C("tokenizer-no-eos", f"{TOK}noeos_tok.json", "noeos_tok.json: no end-of-text token"),
    # ---- weights ------------------------------------------------------------------------------------
    C("weights-missing", f"{RUN} model.weights=nowhere_model", "nowhere_model"),
    C("weights-pickle-only", f"{RUN} model.weights=pickle_model", "only pickle weights"),
    C("weights-truncated", f"{RUN} model.weights=truncated_model", "model.safetensors"),
    C("weights-bad-config-json", f"{RUN} model.weights=badjson_model", "config.json"),
    # ---- LoRA ----------------------------------------------------------------------------------------
    C("lora-targets-match-nothing", f"{LORA} model.lora.targets=[q_proj]",
      "model.lora.targets: 'q_proj' matches no linear layer of Decoder 'tiny'; expected attention, mlp, all or "
      "one of: blocks.{}.attn.qkv"),
    C("lora-rank-zero", f"{LORA} model.lora.rank=0", "model.lora.rank: expected a positive integer, got 0"),
    C("lora-alpha-negative", f"{LORA} model.lora.alpha=-1", "model.lora.alpha: expected a positive number, got -1"),
    C("lora-with-model-hf", RUN + " model.hf={w}/tiny model.overrides={{}} model.lora.rank=4",
      "model.lora: not supported with model.hf"),
    C("lora-from-scratch", f"{RUN} model.lora.rank=4", "model.lora: LoRA on a model trained from scratch"),
    C("lora-base-missing", RUN + " model.config=from_weights model.overrides={{}} model.weights=orphan_run "
      "model.lora.rank=4", "the adapter's base model"),
    # ---- run directory ------------------------------------------------------------------------------
    C("run-force-with-missing-source", f"{RUN} run.name=finished data.source=nowhere.txt", "nowhere.txt",
      env={"FORCE": "1"}),  # the finished run is not deleted for a run that cannot start
    C("run-finished-without-force", f"{RUN} run.name=finished", "already finished; FORCE=1"),
    C("run-resume-changed-config", f"{RUN} run.name=halfway optim.lr=1e-3", "cannot resume: the config changed in optim.lr"),
    C("run-resume-corrupt-checkpoint", f"{RUN} run.name=corrupt", "the checkpoint is unreadable (it is truncated or corrupted); FORCE=1"),
    C("run-output-dir-read-only", f"{RUN} run.output_dir=/sys/rafale-runs", "run.output_dir: /sys is not writable"),
    C("run-output-dir-under-file", f"{RUN} run.output_dir=afile/runs", "afile is a file"),
    C("run-cache-under-file", RUN, "RAFALE_CACHE", env={"RAFALE_CACHE": "{w}/afile/cache"}),
    C("run-disk-full", RUN, "free, but checkpoints and the final model need about", env={"FAKE_FREE": "1000"}),
    C("data-only-cache-read-only", RUN, "/sys/rafale-cache", env={"RAFALE_CACHE": "/sys/rafale-cache", "DATA": "1"}),
    # ---- generate -----------------------------------------------------------------------------------
    C("generate-missing-dir", "generate nowhere -p hi", "nowhere"),
    C("generate-no-weights", "generate no_weights -p hi", "no_weights"),
    C("generate-truncated-weights", "generate truncated_model -p hi", "model.safetensors"),
    C("generate-no-prompt", "generate {w}/tiny", "give either -p/--prompt"),
    C("generate-prompts-file-missing", "generate {w}/tiny --prompts-file missing.txt", "missing.txt"),
    C("generate-bad-top-p", "generate {w}/tiny -p hi --top-p 1.5", "--top-p"),
    C("generate-negative-temperature", "generate {w}/tiny -p hi --temperature -1", "--temperature"),
    C("generate-zero-top-k", "generate {w}/tiny -p hi --top-k 0", "top-k"),
    C("generate-negative-max-tokens", "generate {w}/tiny -p hi -n -5", "-5"),
    C("generate-prompt-too-long", ["generate", "{w}/tiny", "-p", "fox " * 60], "48 positions"),
    # ---- eval ---------------------------------------------------------------------------------------
    C("eval-unknown-task", "eval {w}/tiny --tasks local_mcq --include-path {w}/tasks", "did you mean local_mc"),
    C("eval-missing-include-path", "eval {w}/tiny --tasks local_mc --include-path nowhere_tasks", "nowhere_tasks"),
    C("eval-rejected-yaml", "eval {w}/tiny --tasks broken_task --include-path {w}/badtasks", "broken_task.yaml"),
    C("eval-no-tokenizer", "eval notok_model --data {w}/tasks/ppl.jsonl", "no tokenizer.json"),
    C("eval-data-without-text", "eval {w}/tiny --data empty.txt", "empty.txt"),
    C("eval-too-many-fewshot", "eval {w}/tiny --tasks local_mc --include-path {w}/tasks --num-fewshot 5",
      "--num-fewshot 5: task 'local_mc' has only 3"),
    C("eval-encoder-generation-task", "eval encoder_model --tasks local_gen --include-path {w}/tasks",
      "holds an encoder (bert)"),
    C("eval-nothing-to-do", "eval {w}/tiny", "give --data SOURCE"),
    # ---- sweep: every point is checked before the first one runs --------------------------------------
    C("sweep-no-grid", "sweep -c micro.yaml", "sweep: no grid; give --grid KEY=V1,V2"),
    C("sweep-unknown-grid-key", "sweep -c micro.yaml --grid optim.lrr=1e-3,3e-3",
      "--grid optim.lrr: not a config key; did you mean optim.lr"),
    C("sweep-bad-grid-value", "sweep -c micro.yaml --grid optim.lr=1e-3,fast",
      "micro.yaml: point 1 lr-fast: optim.lr: expected a number, got 'fast'"),
    C("sweep-random-more-than-grid", "sweep -c micro.yaml --grid optim.lr=1e-3,3e-3 --random 3",
      "--random 3: the grid has 2 points"),
    C("sweep-retnet-heads-not-dividing", "sweep -c micro.yaml --grid model.config=retnet-14m "
      "--grid model.overrides.n_head=4,3", "point 1 config-retnet-14m_n_head-3: model.overrides: RetNetConfig "
      "'retnet-14m': n_embd 64 is not divisible by n_head 3"),
    C("sweep-retnet-chunk-size", "sweep -c micro.yaml --grid model.config=retnet-14m "
      "--grid model.overrides.chunk_size=64,0", "chunk_size must be positive, got 0"),
    C("sweep-grid-not-a-list", "sweep -c sweep_scalar.yaml", "sweep.grid.optim.lr: expected a non-empty list"),
    C("sweep-point-out-of-range", "sweep -c micro.yaml --grid optim.lr=1e-3,3e-3 --point 2",
      "--point 2: the sweep has 2 points, 0 to 1"),
    C("sweep-unknown-launcher", "sweep -c micro.yaml --grid optim.lr=1e-3,3e-3 --launcher slurm",
      "--launcher slurm: expected one of inprocess, torchrun"),
    # ---- the command line itself --------------------------------------------------------------------
    C("cli-no-such-command", "trian -c micro.yaml", "No such command 'trian'"),
    C("cli-run-without-config", "run", "Missing option '-c' / '--config'"),
    C("cli-unknown-option", f"{RUN} --bogus", "No such option: --bogus"),
    C("cli-not-an-integer", "generate {w}/tiny -p hi -n abc", "'--max-new-tokens'"),
    C("cli-cache-clear-nothing", "cache clear", "give one entry name or --all"),
    C("cli-cache-clear-unknown", "cache clear nosuch", "no entry named 'nosuch'"),
    C("cli-plot-missing-run", "plot nowhere_run", "nowhere_run"),
    C("cli-export-missing-source", "export nowhere_model out", "nowhere_model"),
    C("cli-export-nonempty-target", "export {w}/tiny afull", "afull"),
]


# ---- the work directory: every bad file once --------------------------------------------------------
@pytest.fixture(scope="module")
def w(tmp_path_factory):
    from safetensors.torch import save_file

    from rafale.config import dump_config, load_config
    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer
    from rafale.models import Decoder, export_model, get_config

    w = tmp_path_factory.mktemp("bad")
    (w / "micro.yaml").write_text(MICRO)
    (w / "adir").mkdir()
    (w / "broken.yaml").write_text("run:\n  name: [x\n  seed: 1\n")
    (w / "list.yaml").write_text("- run\n- data\n")
    (w / "latin1.yaml").write_bytes("run: {name: caf\xe9}\n".encode("latin-1"))
    (w / "unknown_section.yaml").write_text(MICRO + "trainer: {x: 1}\n")
    (w / "sweep_scalar.yaml").write_text(MICRO + "sweep: {grid: {optim.lr: 0.001}}\n")
    (w / "afile").write_text("a file where a directory should be\n")
    (w / "afull").mkdir()
    (w / "afull" / "keep.txt").write_text("the user's\n")
    # data
    (w / "empty.txt").write_text("")
    (w / "latin1.txt").write_bytes("caf\xe9 au lait\n\nun autre\n".encode("latin-1") * 20)
    (w / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (w / "docs.jsonl").write_text("".join(json.dumps({"body": s}) + "\n" for s in SENTENCES))
    (w / "tiny.txt").write_text("a fox.\n")
    # tokenizers
    tok = train_tokenizer(SENTENCES, "bpe", vocab_size=300, min_frequency=1, special_tokens=DECODER_SPECIALS)
    tok.save(str(w / "tok300.json"))
    text = (w / "tok300.json").read_text()
    (w / "truncated_tok.json").write_text(text[: len(text) // 2])
    train_tokenizer(SENTENCES, "bpe", vocab_size=300, min_frequency=1, special_tokens=["[UNK]"]).save(
        str(w / "noeos_tok.json"))
    # weights
    torch.manual_seed(0)
    config = get_config("pythia-14m", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2,
                        max_seq_len=48, init_std=0.2)
    export_model(Decoder(config), w / "tiny")
    tok.save(str(w / "tiny" / "tokenizer.json"))
    for name in ("pickle_model", "truncated_model", "badjson_model", "no_weights"):
        (w / name).mkdir()
        for f in ("config.json", "tokenizer.json"):
            (w / name / f).write_bytes((w / "tiny" / f).read_bytes())
    torch.save({"w": torch.zeros(2)}, w / "pickle_model" / "pytorch_model.bin")
    blob = (w / "tiny" / "model.safetensors").read_bytes()
    (w / "truncated_model" / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    (w / "badjson_model" / "model.safetensors").write_bytes(blob)
    (w / "badjson_model" / "config.json").write_text('{"model_type": "gpt_neox", ')
    # a LoRA run saved without merging (model.lora.merge: false) whose base has since gone
    (w / "orphan_run" / "final" / "adapter").mkdir(parents=True)
    (w / "orphan_run" / "final" / "adapter" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(w / "gone_base"), "r": 4}))
    # run directories in each state a run can be left in
    runs = w / "runs"
    for name, status in (("finished", "finished"), ("halfway", "interrupted"), ("corrupt", "interrupted")):
        d = runs / name
        (d / "checkpoints").mkdir(parents=True)
        cfg = load_config(w / "micro.yaml", [f"run.name={name}"])
        (d / "config.yaml").write_text(dump_config(cfg))
        (d / "manifest.json").write_text(json.dumps({"status": status}))
        (d / "checkpoints" / "ep0-ba4-rank0.pt").write_bytes(b"PK\x03\x04 cut short")
        os.symlink("ep0-ba4-rank0.pt", d / "checkpoints" / "latest-rank0.pt")
    # eval: local lm-eval tasks, one YAML lm-eval rejects, a model without its tokenizer, an encoder
    from tests.eval.eval_helpers import write_tasks

    write_tasks(w / "tasks", n_mc=4, n_ppl=2)
    (w / "badtasks").mkdir()
    (w / "badtasks" / "broken_task.yaml").write_text("task: broken_task\ndataset_path: json\noutput_type: "
                                                     "no_such_type\ntest_split: test\n")
    (w / "notok_model").mkdir()
    for f in ("config.json", "model.safetensors"):
        (w / "notok_model" / f).write_bytes((w / "tiny" / f).read_bytes())
    from rafale.models import EncoderConfig, EncoderForMaskedLM

    wp = train_tokenizer(SENTENCES, "wordpiece", vocab_size=200, min_frequency=1,
                         special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.save(str(w / "encoder_tok.json"))
    export_model(EncoderForMaskedLM(EncoderConfig(vocab_size=wp.get_vocab_size(), n_layer=1, n_head=2, n_embd=32,
                                                  intermediate_size=64, max_seq_len=32)), w / "encoder_model")
    (w / "encoder_model" / "tokenizer.json").write_bytes((w / "encoder_tok.json").read_bytes())
    (w / "cache").mkdir()
    return w


def snapshot(*roots: Path) -> dict:
    """Every file under the roots (lock files aside): its size and modification time."""
    out = {}
    for root in roots:
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.name.endswith(".lock"):
                    st = p.lstat()
                    out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def check_one_line(code, out: str, err: str, case: Case):
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.needle in lines[0], f"{case.needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, w, monkeypatch, capsys, restore_signals):
    from rafale import cli

    cache = Path(case.env.get("RAFALE_CACHE", "{w}/cache").format(w=w))
    monkeypatch.chdir(w)
    for k in ("DATA", "DEBUG", "FORCE", "RAFALE_DEBUG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAFALE_MALLOC", "0")
    monkeypatch.setenv("RAFALE_CACHE", str(cache))
    for k, v in case.env.items():
        if k == "FAKE_FREE":
            from rafale.train import preflight

            monkeypatch.setattr(preflight, "free_bytes", lambda path, v=int(v): v)
        elif k != "RAFALE_CACHE":
            monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["rafale", *(a.format(w=w) for a in case.argv)])
    before_runs, before_cache = snapshot(w / "runs"), snapshot(w / "cache")
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    check_one_line(exit_.value.code, out, err, case)
    assert snapshot(w / "runs") == before_runs, "a run directory was created or changed"
    if not case.cache_ok:
        assert snapshot(w / "cache") == before_cache, "a cache entry was created or changed"
    assert not list((w / "cache").rglob(".*.tmp-*")), "a temporary cache directory was left behind"


def test_the_table_covers_at_least_40_inputs():
    assert len(CASES) >= 40


# ---- a handful as real subprocesses: the installed entry point, a fresh interpreter ------------------
SUBPROCESS = ["config-missing", "config-unknown-key", "cli-unknown-option", "generate-missing-dir",
              "run-output-dir-read-only"]


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].id in SUBPROCESS])
def test_bad_input_subprocess(case: Case, w):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": str(w / "cache"), "NO_COLOR": "1",
           "COLUMNS": "200", "RAFALE_MALLOC": "0"}
    for k in ("DATA", "DEBUG", "FORCE", "RAFALE_DEBUG"):
        env.pop(k, None)
    before_runs, before_cache = snapshot(w / "runs"), snapshot(w / "cache")
    p = subprocess.run([sys.executable, "-m", "rafale", *(a.format(w=w) for a in case.argv)], cwd=w, env=env,
                       capture_output=True, text=True, timeout=120)
    check_one_line(p.returncode, p.stdout, p.stderr, case)
    assert snapshot(w / "runs") == before_runs and snapshot(w / "cache") == before_cache


@pytest.mark.parametrize("how", ["--verbose", "RAFALE_DEBUG"])
def test_verbose_anywhere_adds_the_traceback(w, how):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": str(w / "cache"), "NO_COLOR": "1"}
    args = ["run", "-c", "micro.yaml", "run.sed=3"]
    if how == "--verbose":
        args.insert(1, "--verbose")  # in the middle of the line, between the command and its options
    else:
        env["RAFALE_DEBUG"] = "1"
    p = subprocess.run([sys.executable, "-m", "rafale", *args], cwd=w, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert "Traceback" in p.stderr and "ConfigError" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: ")


VERBOSE = ["config-unknown-key", "run-output-dir-read-only", "generate-missing-dir", "cli-cache-clear-unknown",
           "cli-plot-missing-run", "cli-export-missing-source", "cli-unknown-option"]


@pytest.mark.parametrize("how", ["--verbose", "RAFALE_DEBUG"])
@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].id in VERBOSE])
def test_every_command_shows_the_traceback_when_asked(case: Case, how, w, monkeypatch, capsys, restore_signals):
    """In this process, one mistake per subcommand: the traceback, then the same error line, still exit 2."""
    from rafale import cli

    monkeypatch.chdir(w)
    for k in ("DATA", "DEBUG", "FORCE", "RAFALE_DEBUG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAFALE_MALLOC", "0")
    monkeypatch.setenv("RAFALE_CACHE", str(w / "cache"))
    argv = [a.format(w=w) for a in case.argv]
    if how == "--verbose":
        argv.append("--verbose")  # at the end of the line, after the command's own arguments
    else:
        monkeypatch.setenv("RAFALE_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["rafale", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    _, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert "Traceback (most recent call last)" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and case.needle in last
