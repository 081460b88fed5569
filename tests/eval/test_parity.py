"""rafale's lm-eval adapter against lm-eval's own transformers backend (`hf`), on the same HF-layout directory:
the same log-likelihood per request and the same task metrics, for a GPT-NeoX and a Llama (GQA) model."""

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402

from rafale.eval.adapter import RafaleLM  # noqa: E402
from rafale.eval.harness import load_tasks, task_manager  # noqa: E402


@pytest.fixture(scope="module")
def backends(model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), batch_size=4, device="cpu"), RafaleLM(str(model_dir), batch_size=4,
                                                                                 device="cpu")


def test_loglikelihoods_match_per_request(backends, tasks_dir):
    hf, ours = backends
    rows = [json.loads(line) for line in (tasks_dir / "mc_test.jsonl").read_text().splitlines()]
    requests = [Instance("loglikelihood", {}, (r["context"], " " + c), 0) for r in rows for c in r["choices"]]
    requests.append(Instance("loglikelihood", {}, ("", "Once upon a time"), 0))  # an empty context: the prefix token
    for (a, greedy_a), (b, greedy_b) in zip(hf.loglikelihood(requests, disable_tqdm=True),
                                            ours.loglikelihood(requests, disable_tqdm=True)):
        assert b == pytest.approx(a, abs=1e-4) and greedy_a == greedy_b
    texts = [json.loads(line)["text"] for line in (tasks_dir / "ppl.jsonl").read_text().splitlines()]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), 0) for t in texts]  # several windows each
    for a, b in zip(hf.loglikelihood_rolling(rolling, disable_tqdm=True),
                    ours.loglikelihood_rolling(rolling, disable_tqdm=True)):
        assert b == pytest.approx(a, abs=1e-4)


def test_task_metrics_match(backends, tasks_dir):
    manager = task_manager(["local_mc", "local_ppl"], tasks_dir)
    results = []
    for lm in backends:
        tasks = load_tasks(manager, ["local_mc", "local_ppl"])
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), task_manager=manager, log_samples=False,
                                      bootstrap_iters=0)
        results.append(out["results"])
    hf, ours = results
    for task, metrics in (("local_mc", ["acc,none", "acc_norm,none"]),
                          ("local_ppl", ["word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"])):
        for key in metrics:
            assert ours[task][key] == pytest.approx(hf[task][key], rel=1e-5), (task, key)
