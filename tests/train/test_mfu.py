"""The CPU peak behind MFU: measured every run, and the best figure for this CPU kept across runs."""

import json

import torch

from rafale.train import mfu


def peak(cache_dir) -> float:
    mfu.cpu_peak.cache_clear()  # one measurement per process otherwise
    return mfu.cpu_peak(cache_dir)


def test_cpu_peak_keeps_the_best_measurement(tmp_path):
    first = peak(tmp_path)
    rec = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert first > 1e8 and rec["flops"] == first and str(torch.get_num_threads()) in rec["key"]

    # an earlier run measured more (this one is busy): the earlier figure stays
    (tmp_path / "cpu_peak.json").write_text(json.dumps({**rec, "flops": first * 1000}))
    assert peak(tmp_path) == first * 1000

    # an earlier run measured less (it was busy): this run's figure replaces it
    (tmp_path / "cpu_peak.json").write_text(json.dumps({**rec, "flops": 1.0}))
    now = peak(tmp_path)
    assert now > 1e8 and json.loads((tmp_path / "cpu_peak.json").read_text())["flops"] == now

    # another CPU, torch or thread count: its figure is not used
    (tmp_path / "cpu_peak.json").write_text(json.dumps({**rec, "key": "other", "flops": first * 1000}))
    assert peak(tmp_path) < first * 1000


def test_cpu_peak_is_measured_once_per_process(tmp_path):
    mfu.cpu_peak.cache_clear()
    a = mfu.cpu_peak(tmp_path)
    (tmp_path / "cpu_peak.json").unlink()
    assert mfu.cpu_peak(tmp_path) == a and not (tmp_path / "cpu_peak.json").exists()
