"""A RetNet through the user's path: `rafale run` trains a tiny one in a subprocess (chunkwise: blocks of 64
tokens in chunks of 32); `rafale generate` continues prompts with its recurrent state and `rafale export`
writes it in HF layout and verifies it with transformers through rafale.hf (both in this process: faster)."""

import json

import pytest
from typer.testing import CliRunner

from rafale.cli import app
from test_cli import rafale, workdir  # noqa: F401  (workdir: the module's work dir with micro.yaml)

RETNET = ["model.config=retnet-14m", "model.overrides.chunk_size=32", "run.name=retnet", "run.max_duration=4ba",
          "run.eval_interval=0ba", "run.save_interval=4ba", "run.log_interval=2ba"]


def test_run_generate_export_a_retnet(workdir):  # noqa: F811
    rafale("run", "-c", "micro.yaml", *RETNET, cwd=workdir, check_code=0)
    run_dir = workdir / "runs" / "retnet"
    assert json.loads((run_dir / "final" / "config.json").read_text())["model_type"] == "rafale_retnet"
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["steps"] == 4 and summary["eval_loss"] is not None and summary["sample"]

    out_file = workdir / "out.jsonl"
    gen = CliRunner().invoke(app, ["generate", str(run_dir), "-p", "Once upon a time", "-p", "The fox", "-n", "8",
                                   "-o", str(out_file)])
    assert gen.exit_code == 0, gen.output
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Once upon a time", "The fox"] and all(r["tokens"] for r in rows)

    pytest.importorskip("transformers")
    export = CliRunner().invoke(app, ["export", str(run_dir), str(workdir / "exported")], terminal_width=200)
    assert export.exit_code == 0, export.output
    assert "verified with transformers: RetNetForCausalLM logits match" in export.output
