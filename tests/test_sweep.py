"""`rafale sweep`: the points (pure functions), then one real two-point sweep through the CLI in a subprocess
(a point that fails, one that trains, results.csv and results.png), and the same sweep run again with
--point: the finished point is skipped, not retrained, and the CSV still holds both rows."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from micro import MICRO
from rafale.errors import ConfigError
from rafale.sweep.points import check_grid, config_keys, make_points, parse_grid, point_name, split_values

ROOT = Path(__file__).resolve().parents[1]


# ---- points -------------------------------------------------------------------------------------------
def test_values_split_on_commas_outside_brackets():
    assert split_values("1e-3, 3e-3") == ["1e-3", "3e-3"]
    assert split_values("[0.9,0.95],[0.9,0.99]") == ["[0.9,0.95]", "[0.9,0.99]"]
    grid = parse_grid(["optim.betas=[0.9,0.95],[0.9,0.99]", "optim.lr=1e-3"])
    assert [v.value for v in grid["optim.betas"]] == [[0.9, 0.95], [0.9, 0.99]]
    assert grid["optim.lr"][0].text == "1e-3"


@pytest.mark.parametrize("item", ["optim.lr", "optim.lr=", "=1,2", "optim.lr=1,,2"])
def test_malformed_grid_items_are_refused(item):
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid([item])


def test_the_points_are_the_product_last_key_fastest():
    grid = parse_grid(["model.config=pythia-14m,retnet-14m", "optim.lr=1e-3,3e-3"])
    points = make_points(grid)
    assert [p.index for p in points] == [0, 1, 2, 3]
    assert [(p.values["model.config"].text, p.values["optim.lr"].text) for p in points] == [
        ("pythia-14m", "1e-3"), ("pythia-14m", "3e-3"), ("retnet-14m", "1e-3"), ("retnet-14m", "3e-3")]
    assert [p.name for p in points] == ["config-pythia-14m_lr-1e-3", "config-pythia-14m_lr-3e-3",
                                        "config-retnet-14m_lr-1e-3", "config-retnet-14m_lr-3e-3"]


def test_a_random_draw_is_reproducible_and_kept_in_grid_order():
    grid = parse_grid(["optim.lr=1e-4,3e-4,1e-3,3e-3,1e-2", "data.block_size=64,128,256"])
    names = lambda seed: [p.name for p in make_points(grid, random=4, seed=seed)]  # noqa: E731
    assert names(0) == names(0)
    assert len(set(names(0))) == 4
    assert any(names(s) != names(0) for s in range(1, 5))
    full = [p.name for p in make_points(grid)]
    assert names(3) == [n for n in full if n in names(3)]  # grid order
    assert [p.index for p in make_points(grid, random=4, seed=3)] == [0, 1, 2, 3]
    assert [p.name for p in make_points(grid, random=15, seed=9)] == full
    with pytest.raises(ConfigError, match="--random 16: the grid has 15 points"):
        make_points(grid, random=16)


def test_point_names_are_run_names_and_unique():
    grid = parse_grid(["model.overrides.n_head=4,8", "model.lora.targets=[attention],[attention,mlp]",
                       "data.source=data/a b.txt,data/a-b.txt"])
    names = [p.name for p in make_points(grid)]
    assert len(set(names)) == len(names) == 8
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", n) for n in names), names
    # two keys ending alike keep their full names
    values = {k: v[0] for k, v in parse_grid(["optim.eps=1", "model.overrides.eps=2"]).items()}
    assert point_name(values) == "optim-eps-1_model-overrides-eps-2"


def test_grid_keys_are_config_keys():
    keys = config_keys()
    assert {"optim.lr", "model.config", "data.tokenizer.train.vocab_size", "model.overrides."} <= set(keys)
    check_grid(parse_grid(["model.overrides.n_head=4,8", "optim.lr=1e-3"]), [])
    with pytest.raises(ConfigError, match="optim.learning_rate: not a config key"):
        check_grid(parse_grid(["optim.learning_rate=1"]), [])
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        check_grid(parse_grid(["optim.lrr=1"]), [])
    with pytest.raises(ConfigError, match="run.name: set by the sweep"):
        check_grid(parse_grid(["run.name=a,b"]), [])
    with pytest.raises(ConfigError, match="also given as the override"):
        check_grid(parse_grid(["optim.lr=1,2"]), ["optim.lr=3"])
    with pytest.raises(ConfigError, match="no grid"):
        check_grid({}, [])


# ---- a real sweep -------------------------------------------------------------------------------------
def sweep(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": str(cwd / "cache"), "NO_COLOR": "1",
           "COLUMNS": "200", "RAFALE_MALLOC": "0"}
    return subprocess.run([sys.executable, "-m", "rafale", "sweep", "-c", "micro.yaml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# The first point asks for more blocks than the data has: it fails once its data is prepared, the second trains.
GRID = ["--grid", "data.train_batch_size=100000,8", "--name", "bs", "run.sample_tokens=0"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    w = tmp_path_factory.mktemp("sweep")
    (w / "micro.yaml").write_text(MICRO)
    return w, sweep(*GRID, cwd=w)


def test_a_failed_point_is_recorded_and_the_next_one_runs(swept):
    w, p = swept
    assert p.returncode == 1, p.stdout + p.stderr  # a point failed
    assert "Traceback" not in p.stdout + p.stderr
    header, rows = read_csv(w / "sweeps" / "bs" / "results.csv")
    assert header == ["data.train_batch_size", "family", "parameters", "status", "train_loss", "eval_loss",
                      "eval_perplexity", "eval_bits_per_byte", "tokens", "tokens_per_second", "wall_seconds",
                      "energy_kwh", "run_dir", "error"]
    failed, done = rows
    assert failed["data.train_batch_size"] == "100000" and failed["status"] == "failed"
    assert "data.train_batch_size: 100000 is more than" in failed["error"]
    assert done["status"] == "finished" and done["error"] == ""
    assert done["family"] == "gpt_neox" and int(done["parameters"]) > 0
    assert float(done["eval_loss"]) > 0 and int(done["tokens"]) == 16 * 8 * 64
    assert float(done["eval_bits_per_byte"]) > 0
    assert float(done["tokens_per_second"]) > 0 and float(done["wall_seconds"]) > 0
    assert Path(w / done["run_dir"]) == w / "runs" / "bs" / "train_batch_size-8"
    manifest = json.loads((w / done["run_dir"] / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    point_config = yaml.safe_load((w / done["run_dir"] / "config.yaml").read_text())
    assert point_config["data"]["train_batch_size"] == 8 and "sweep" not in point_config  # the run's own config
    assert (w / "sweeps" / "bs" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "best point per group" in p.stdout and "train_batch_size-8" in p.stdout
    assert [q["name"] for q in json.loads((w / "sweeps" / "bs" / "sweep.json").read_text())["points"]] == \
        ["train_batch_size-100000", "train_batch_size-8"]


def test_run_again_with_point_skips_the_finished_point(swept):
    w, _ = swept
    run_dir = w / "runs" / "bs" / "train_batch_size-8"
    before = {f: f.stat().st_mtime_ns for f in (run_dir / "metrics.jsonl", run_dir / "manifest.json",
                                                 run_dir / "final" / "model.safetensors")}
    p = sweep(*GRID, "--point", "1", cwd=w)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "train_batch_size-8: finished before; skipped" in p.stdout
    assert {f: f.stat().st_mtime_ns for f in before} == before, "the finished point was trained again"
    _, rows = read_csv(w / "sweeps" / "bs" / "results.csv")
    assert [r["status"] for r in rows] == ["failed", "finished"]  # the other point's row is kept


def test_an_eval_section_added_later_evaluates_the_finished_point_again(swept, tmp_path):
    import shutil

    w = tmp_path / "w"
    shutil.copytree(swept[0], w)  # the module's sweep stays as it was for the other tests
    run_dir = w / "runs" / "bs" / "train_batch_size-8"
    weights = (run_dir / "final" / "model.safetensors").stat().st_mtime_ns
    (w / "held_out.txt").write_text("Once upon a time a fox ran to the river.\n\nThe owl slept in the tree.\n")
    p = sweep(*GRID, "--point", "1", "eval.data=held_out.txt", cwd=w)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "train_batch_size-8: finished before with another eval: section; evaluating it again" in p.stdout
    assert (run_dir / "final" / "model.safetensors").stat().st_mtime_ns == weights  # not retrained
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["eval"]["data"]["bits_per_byte"] > 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["data"] == "held_out.txt"
    header, rows = read_csv(w / "sweeps" / "bs" / "results.csv")
    assert rows[1]["status"] == "finished" and float(rows[1]["eval.data/bits_per_byte"]) > 0
    p = sweep(*GRID, "--point", "1", "eval.data=held_out.txt", cwd=w)  # now the same config: skipped
    assert "train_batch_size-8: finished before; skipped" in p.stdout, p.stdout + p.stderr


# ---- the shipped study --------------------------------------------------------------------------------
STUDY = ROOT / "configs" / "retnet-vs-transformer.yaml"


def test_the_study_is_four_valid_points():
    from rafale.sweep import plan_sweep

    plan = plan_sweep(STUDY, [], [])
    assert [p.name for p in plan.points] == ["config-pythia-14m_lr-0.001", "config-pythia-14m_lr-0.003",
                                             "config-retnet-14m_lr-0.001", "config-retnet-14m_lr-0.003"]
    assert plan.sweep_dir == Path("sweeps/retnet-vs-transformer")
    assert plan.run_dir(3) == Path("runs/retnet-vs-transformer/config-retnet-14m_lr-0.003")
    assert plan.configs[3].model.config == "retnet-14m" and plan.configs[3].optim.lr == 3e-3


def test_the_paper_scale_grid_in_the_study_comments_validates():
    """The 144-point override the config documents: every point's config and model are valid."""
    import shlex

    from rafale.sweep import plan_sweep

    lines = STUDY.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "sbatch --array=" in line)
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in lines[start:start + 7])
    args = shlex.split(command)[4:]  # after: sbatch --array=0-143 configs/slurm/sweep.sbatch CONFIG
    grid = [a.split(" ", 1)[0] for a in " ".join(args).split("--grid ")[1:]]
    overrides = [a for a in args if "=" in a and not a.startswith("-") and a not in grid]
    name = args[args.index("--name") + 1]
    plan = plan_sweep(STUDY, grid, overrides, name=name)
    assert len(plan.points) == 144 and shlex.split(command)[1] == "--array=0-143"
    assert {c.model.overrides["n_embd"] for c in plan.configs} == {768, 1024, 1280}
    assert {c.data.block_size for c in plan.configs} == {256, 512}


def test_eval_results_become_columns():
    from rafale.sweep.results import eval_columns

    payload = {"data": {"loss": 1.5, "perplexity": 4.48, "bits_per_byte": 0.6, "tokens": 100},
               "results": {"stories_cloze": {"alias": "stories_cloze", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                             "acc_norm,none": 0.25}}}
    assert eval_columns(payload) == {"eval.data/loss": 1.5, "eval.data/perplexity": 4.48,
                                     "eval.data/bits_per_byte": 0.6, "stories_cloze/acc": 0.5,
                                     "stories_cloze/acc_norm": 0.25}
    assert eval_columns(None) == {}
