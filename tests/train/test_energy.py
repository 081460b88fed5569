"""logging.energy: a real run tracked by codecarbon (offline) puts kWh and CO2-eq in the summary and the
manifest, keeps the energy so far in its checkpoints and writes nothing outside its run directory; without
codecarbon, or with a country it does not know, the run refuses at plan time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train_helpers import rafale_cmd


def test_a_tracked_run_reports_energy_and_writes_only_its_run_dir(rafale_env, tmp_path):
    cwd, home, out = tmp_path / "cwd", tmp_path / "home", tmp_path / "runs"
    cwd.mkdir()
    home.mkdir()
    env = {**rafale_env, "HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}  # Composer imports matplotlib, which caches fonts in HOME
    p = subprocess.run(rafale_cmd(out, "run.name=energy", "run.max_duration=2ba", "run.eval_interval=0ba",
                                  "logging.loggers=[]",
                                  "logging.energy=true", "logging.energy_country=FRA"),
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    energy = json.loads((out / "energy" / "manifest.json").read_text())["summary"]["energy"]
    assert set(energy) == {"kwh", "kg_co2eq", "method"}
    assert isinstance(energy["kwh"], float) and energy["kwh"] > 0
    assert isinstance(energy["kg_co2eq"], float) and energy["kg_co2eq"] > 0
    assert energy["method"] in ("rapl", "cpu_load", "tdp")  # this machine has no GPU
    # France's grid: well under 0.2 kg per kWh (codecarbon's table says ~0.06); a world-average grid is ~0.48
    assert energy["kg_co2eq"] / energy["kwh"] < 0.2
    line = next(l for l in p.stdout.splitlines() if "kg CO2-eq" in l)
    assert "kWh" in line and ("RAPL" in line or "TDP" in line), line
    # each checkpoint holds the energy so far: a resumed run adds its segments to it
    import torch

    from rafale.train.checkpoints import safe_globals

    with torch.serialization.safe_globals(safe_globals()):
        state = torch.load(out / "energy" / "checkpoints" / "latest-rank0.pt", map_location="cpu", weights_only=True)
    saved = state["state"]["callbacks"]["EnergyTracker"]
    assert 0 < saved["kwh"] <= energy["kwh"] and 0 < saved["kg_co2eq"] <= energy["kg_co2eq"]
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == [], "codecarbon wrote outside the run directory"
    assert not list(out.rglob("*.csv")), "codecarbon wrote its own emissions file"


@pytest.fixture
def micro_cfg(tmp_path, monkeypatch):
    from micro import MICRO

    (tmp_path / "micro.yaml").write_text(MICRO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAFALE_CACHE", str(tmp_path / "cache"))
    for k in ("DATA", "DEBUG", "FORCE", "RAFALE_DEBUG"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def _main(monkeypatch, *argv) -> int:
    from rafale import cli

    monkeypatch.setattr(sys, "argv", ["rafale", "run", "-c", "micro.yaml", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code


@pytest.mark.parametrize("argv, absent, needle", [
    (["logging.energy=true"], True, "logging.energy: true needs the codecarbon package"),
    (["logging.energy=true", "logging.energy_country=XYZ"], False, "logging.energy_country: 'XYZ' is not a country"),
    (["logging.energy_country=fr"], False, "logging.energy_country: expected an ISO 3166 alpha-3"),
])
def test_energy_bad_input_is_one_line_before_anything_is_written(argv, absent, needle, micro_cfg, monkeypatch,
                                                                  capsys, restore_signals):
    if absent:
        monkeypatch.setitem(sys.modules, "codecarbon", None)  # codecarbon absent: `import codecarbon` fails
        monkeypatch.setitem(sys.modules, "codecarbon.input", None)
    assert _main(monkeypatch, *argv) == 2
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: micro.yaml: ") and needle in lines[0], err
    assert "Traceback" not in out + err
    assert not (micro_cfg / "runs").exists() and not (micro_cfg / "cache").exists()
