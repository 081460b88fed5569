"""`rafale eval` as a user runs it: real subprocesses for --tasks and --data, the results file, the lm-eval
model registry, and an interrupted eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rafale(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rafale", "eval", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_tasks_print_a_table_and_write_lm_evals_results(neox_dir, tasks_dir, tmp_path):
    out = tmp_path / "results" / "eval.json"
    r = rafale(neox_dir, "--tasks", "local_mc,local_ppl,stories_cloze", "--include-path", tasks_dir, "--limit", "5",
               "--num-fewshot", "2", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for text in ("local_mc", "acc_norm", "bits_per_byte", "stories_cloze", "± stderr"):
        assert text in r.stdout
    written = json.loads(out.read_text())
    assert set(written["results"]) == {"local_mc", "local_ppl", "stories_cloze"}
    assert {"acc,none", "acc_stderr,none", "acc_norm,none"} <= set(written["results"]["local_mc"])
    assert "bits_per_byte,none" in written["results"]["local_ppl"]
    assert written["model"] == str(neox_dir) and written["num_fewshot"] == 2 and written["wall_seconds"] > 0
    assert set(written["task_config_hashes"]) == set(written["results"]) and written["rafale_version"]
    assert not list(out.parent.glob(".*tmp*"))


def test_data_prints_bits_per_byte(neox_dir, tmp_path):
    (tmp_path / "my.txt").write_text("The fox ran to the lake.\n\nThe owl sat in a tree and looked at the moon.\n")
    r = rafale(neox_dir, "--data", "my.txt", "--block-size", "16", "--context", "4", "-o", "out.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bits per byte" in r.stdout and "tokens/s" in r.stdout
    data = json.loads((tmp_path / "out.json").read_text())["data"]
    assert data["documents"] == 2 and data["bytes"] == len("The fox ran to the lake.The owl sat in a tree and "
                                                           "looked at the moon.")
    assert data["block_size"] == 16 and data["context"] == 4 and data["bits_per_byte"] > 0


def test_the_adapter_is_registered_with_lm_eval_by_name(neox_dir, tasks_dir):
    lm_eval = pytest.importorskip("lm_eval")
    import rafale.eval.adapter  # noqa: F401  (registers "rafale")
    from rafale.eval.harness import task_manager

    out = lm_eval.simple_evaluate(model="rafale", model_args=f"path={neox_dir},device=cpu", tasks=["local_mc"],
                                  task_manager=task_manager(["local_mc"], tasks_dir), limit=4, batch_size=4,
                                  log_samples=False)
    assert 0 <= out["results"]["local_mc"]["acc,none"] <= 1


def test_an_interrupted_eval_leaves_no_results_file(neox_dir, tasks_dir, tmp_path, monkeypatch, capsys):
    from rafale import cli
    from rafale.eval import scoring

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "score", interrupted)
    monkeypatch.setattr("rafale.eval.adapter.score", interrupted)
    monkeypatch.setattr("rafale.eval.perplexity.score", interrupted)
    monkeypatch.setenv("RAFALE_MALLOC", "0")
    out = tmp_path / "eval.json"
    for args in (["--tasks", "local_mc", "--include-path", str(tasks_dir)], ["--data", str(tasks_dir / "ppl.jsonl")]):
        monkeypatch.setattr(sys, "argv", ["rafale", "eval", str(neox_dir), *args, "-o", str(out)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 130 and "interrupted" in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.iterdir())
    assert len(calls) == 2
