"""Resume and determinism, end to end: real `python -m rafale run` processes on a micro config, under bf16
autocast (fp32 is what the golden losses pin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_helpers import kill_at_first_checkpoint, run_rafale, train_losses

STEPS = ["run.max_duration=40ba", "run.save_interval=4ba", "run.eval_interval=20ba", "run.precision=amp_bf16"]


@pytest.fixture(scope="module")
def reference(rafale_env, tmp_path_factory):
    """One uninterrupted run of the micro config."""
    out = tmp_path_factory.mktemp("ref")
    run_rafale(rafale_env, out, *STEPS)
    return out / "quickstart"


def test_same_seed_same_losses(rafale_env, reference, tmp_path):
    run_rafale(rafale_env, tmp_path, *STEPS)
    again, ref = train_losses(tmp_path / "quickstart"), train_losses(reference)
    assert sorted(ref) == list(range(1, 41))
    assert again == ref  # bit for bit on CPU


def test_killed_run_resumes_where_it_stopped(rafale_env, reference, tmp_path):
    run_dir = tmp_path / "quickstart"
    killed_ckpt = kill_at_first_checkpoint(rafale_env, tmp_path, *STEPS)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    killed_at = max(train_losses(run_dir))
    assert killed_at < 40, "the run finished before it could be killed; make it longer"

    p = run_rafale(rafale_env, tmp_path, *STEPS)
    assert f"from checkpoint ep0-ba{killed_ckpt}-rank0.pt: it stopped part way" in p.stdout
    assert f"without replaying {killed_ckpt} batches" in p.stdout  # the sampler took the position: O(1)
    resumed, ref = train_losses(run_dir), train_losses(reference)
    assert sorted(resumed) == list(range(1, 41))  # every step once: lines past the checkpoint were rewritten
    for step in ref:
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), f"step {step}"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"


def test_finished_run_is_not_overwritten(rafale_env, reference):
    p = run_rafale(rafale_env, reference.parent, *STEPS, check=False)
    assert p.returncode == 2
    assert "already finished" in p.stderr and "FORCE=1" in p.stderr


def test_run_reports_mfu_and_draws_loss_curves(rafale_env, reference, tmp_path):
    from rafale.train.plot import plot_runs, read_metrics

    summary = json.loads((reference / "manifest.json").read_text())["summary"]
    assert summary["tokens_per_second"] > 0 and 0 < summary["mfu"] < 1
    assert summary["peak_source"] == "measured bf16 matmul" and summary["precision"] == "amp_bf16"
    assert (reference / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train, evals = read_metrics(reference)
    assert len(train) == 40 and [t for t, _ in evals] == [20 * 256, 40 * 256]
    out = plot_runs([reference, reference], tmp_path / "both.png")
    assert out.stat().st_size > 10_000
    records = json.loads((Path(rafale_env["RAFALE_CACHE"]) / "compile_times.json").read_text())
    assert any(r.get("eager_step_s", 0) > 0 for r in records.values())  # the next run's compile decision


def test_a_resume_whose_source_changed_is_refused(rafale_env, reference, tmp_path, monkeypatch):
    import shutil

    import yaml

    from rafale.config import load_config
    from rafale.errors import RunStateError
    from rafale.train.plan import make_plan

    monkeypatch.setenv("RAFALE_CACHE", rafale_env["RAFALE_CACHE"])
    run = tmp_path / reference.name
    shutil.copytree(reference, run)  # the finished reference, made to look interrupted
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["run"]["output_dir"] = str(tmp_path)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_config(run / "config.yaml")
    assert make_plan(cfg, log=lambda *a, **k: None).run_dir.resume_from is not None  # the same source resumes
    manifest["data_fingerprint"]["generator"] = "0" * 16  # as if the embedded corpus had been generated otherwise
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunStateError, match=r"cannot resume: data.source changed since the checkpoint \(generator"):
        make_plan(cfg, log=lambda *a, **k: None)


def test_a_resume_whose_duration_is_already_reached_is_one_line(rafale_env, reference, tmp_path):
    import shutil

    import yaml

    run = tmp_path / reference.name
    shutil.copytree(reference, run, symlinks=True)  # the finished reference, as if stopped after its last checkpoint
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["run"]["output_dir"] = str(tmp_path)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    before = {f: f.read_bytes() for f in (run / "config.yaml", run / "manifest.json")}
    p = run_rafale(rafale_env, tmp_path, *STEPS, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "run.max_duration: 40ba ends at or before batch 40, where the checkpoint" in p.stderr
    assert {f: f.read_bytes() for f in before} == before  # nothing rewritten
