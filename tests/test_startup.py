"""Commands that do not train start without Composer: `import composer` alone takes seconds (torchmetrics,
torch.distributed.checkpoint, ...), and transformers is not needed by rafale's own models.

One subprocess runs each command through the real entry point (rafale.cli.main) in turn and reports, after
each, which heavy packages are loaded; sharing the process keeps this test to the cost of one start-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

from rafale.files import write_json
from tests.eval.eval_helpers import make_model_dir

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("composer", "transformers", "torchmetrics", "lm_eval")

DRIVER = """
import json, sys
from rafale import cli
report = []
for args in json.loads(sys.argv[1]):
    sys.argv[:] = ["rafale", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    report.append({"args": args, "code": code, "loaded": [m for m in %r if m in sys.modules]})
print(json.dumps(report))
""" % (HEAVY,)

CONFIG = """
run: {name: tiny, max_duration: 2ba}
model: {config: pythia-14m, overrides: {n_layer: 1, n_embd: 32, n_head: 2}}
data: {source: "synthetic:stories", max_documents: 40, tokenizer: {train: {vocab_size: 300}}, block_size: 32,
       train_batch_size: 2, eval_batch_size: 2}
"""


def test_commands_that_do_not_train_never_import_composer(tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    make_model_dir(run_dir / "final", "pythia-14m")
    write_json(run_dir / "manifest.json", {"status": "finished"})
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "tokens": 64 * s, "train/loss": 6.0 - s / 10}) + "\n" for s in range(1, 5)))
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    commands = [
        ["models"],
        ["run", "-c", "tiny.yaml", "--data-only"],
        ["cache", "list"],
        ["generate", str(run_dir), "-p", "Once upon a time", "-n", "4"],
        ["eval", str(run_dir), "--data", "synthetic:stories", "--limit-docs", "2", "--block-size", "32"],
        ["export", str(run_dir), str(tmp_path / "exported"), "--no-verify"],
        ["plot", str(run_dir), "-o", str(tmp_path / "loss.png")],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFALE_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert [r["args"] for r in report] == commands
    for r in report:
        assert r["code"] == 0, (r, p.stderr)
        assert r["loaded"] == [], f"`rafale {' '.join(r['args'])}` imported {r['loaded']}"
    assert (tmp_path / "exported" / "model.safetensors").exists() and (tmp_path / "loss.png").exists()
