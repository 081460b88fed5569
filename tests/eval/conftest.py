"""Tiny models (one per decoder family) with their own tokenizer, and local lm-eval tasks, made once per session."""

import pytest

from eval_helpers import make_model_dir, write_tasks


@pytest.fixture(scope="session", params=["pythia-14m", "llama-tiny"])
def model_dir(request, tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("neox"), "pythia-14m")


@pytest.fixture(scope="session")
def tasks_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(autouse=True)
def no_environment_report(monkeypatch):
    """lm-eval's simple_evaluate describes the machine (torch's collect_env: ~3.5 s a call) into a part of its
    output that nothing here reads; rafale's own path never calls it (harness.evaluate_tasks), and the tests
    that call simple_evaluate directly skip it too."""
    try:
        import lm_eval.evaluator
    except ImportError:
        return
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
