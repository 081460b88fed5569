"""End to end through the real CLI in subprocesses: DATA=1, DEBUG=1, run, refusal, FORCE=1, generate,
and one-line errors for bad input. One micro config; the whole module takes well under a minute."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from micro import MICRO

ROOT = Path(__file__).resolve().parents[1]


def rafale(*args, cwd, env=None, check_code=None):
    full_env = {**os.environ, "RAFALE_CACHE": str(cwd / "cache"), "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    out = subprocess.run([sys.executable, "-m", "rafale", *args], cwd=cwd, env=full_env, capture_output=True,
                         text=True, timeout=300)
    if check_code is not None:
        assert out.returncode == check_code, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "micro.yaml").write_text(MICRO)
    return d


def test_data_only_prepares_then_reuses(workdir):
    first = rafale("run", "-c", "micro.yaml", cwd=workdir, env={"DATA": "1"}, check_code=0)
    assert "prepared" in first.stdout
    second = rafale("run", "-c", "micro.yaml", cwd=workdir, env={"DATA": "1"}, check_code=0)
    assert "reused cache" in second.stdout
    assert len([p for p in (workdir / "cache" / "data").iterdir() if not p.name.startswith(".")]) == 1
    assert not (workdir / "runs").exists()


def test_debug_overfits_one_batch_and_writes_no_run(workdir):
    out = rafale("run", "-c", "micro.yaml", "--debug", cwd=workdir, check_code=0)
    assert "PASS" in out.stdout
    assert not (workdir / "runs").exists()


def test_run_refuse_force_generate(workdir):
    out = rafale("run", "-c", "micro.yaml", cwd=workdir, check_code=0)
    run_dir = workdir / "runs" / "micro"
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "final/model.safetensors", "final/config.json",
                 "final/tokenizer.json", "checkpoints/latest-rank0.pt"):
        assert (run_dir / name).exists(), name
    assert "run summary" in out.stdout and "unigram eval loss" in out.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["summary"]["steps"] == 16
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "train/loss" in l] == [4, 8, 12, 16]
    assert [l["step"] for l in lines if "eval/loss" in l] == [8, 16]

    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = rafale("run", "-c", "micro.yaml", cwd=workdir, check_code=2)
    assert "FORCE=1" in refused.stderr and "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # untouched by the refusal

    rafale("run", "-c", "micro.yaml", cwd=workdir, env={"FORCE": "1"}, check_code=0)

    gen = rafale("generate", "runs/micro", "-p", "Once upon a time", "--max-new-tokens", "12", cwd=workdir,
                 check_code=0)
    assert gen.stdout.startswith("Once upon a time")
    assert len(gen.stdout.strip()) > len("Once upon a time")


@pytest.mark.parametrize("args, needle", [
    (["run", "-c", "missing.yaml"], "missing.yaml: no such file"),
    (["run", "-c", "micro.yaml", "data.block_size=-1"], "data.block_size: expected a positive integer, got -1"),
    (["run", "-c", "micro.yaml", "data.train_batch_size=0"], "data.train_batch_size: expected a positive integer"),
    (["run", "-c", "micro.yaml", "run.sed=3"], "run.sed: unknown key; did you mean 'seed'?"),
    (["run", "-c", "micro.yaml", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
    (["run", "-c", "micro.yaml", "model.config=pythia14m"], "'pythia14m' is not a known model; did you mean 'pythia-14m'?"),
    (["run", "-c", "micro.yaml", "data.block_size=4096"], "data.block_size: 4096 is larger than the model's max_seq_len"),
    (["run", "-c", "broken.yaml"], "broken.yaml: invalid YAML at line 3"),
    (["generate", "nowhere", "-p", "hi"], "nowhere"),
])
def test_bad_input_is_one_line_exit_2(workdir, args, needle):
    (workdir / "broken.yaml").write_text("run:\n  name: [x\n  seed: 1\n")
    runs_before = sorted(p.name for p in (workdir / "runs").glob("*")) if (workdir / "runs").exists() else []
    out = rafale(*args, cwd=workdir)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    error_lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: "), out.stderr
    assert needle in error_lines[0]
    runs_after = sorted(p.name for p in (workdir / "runs").glob("*")) if (workdir / "runs").exists() else []
    assert runs_after == runs_before
