"""lm-eval tasks through rafale's adapter against lm-eval's own transformers backend (`hf`), side by side.

    PYTHONPATH=. python benchmarks/eval.py [--mc 200] [--ppl 40] [--batch-size 8] [--repeats 3]

One randomly initialised pythia-14m-shaped model (hidden 128, 6 layers, vocab 8192), exported once as an
HF-layout directory that both backends load. Two local tasks made from the embedded story corpus: a
4-choice cloze (stories_cloze's format: a story cut before a name, four names) and a rolling-perplexity
task over whole stories. Each task runs through `lm_eval.simple_evaluate` with each backend at the same
batch size, taking turns to go first; lm-eval's machine description (torch's collect_env, seconds of
subprocesses, the same for both) is left out of the timing. Prints one JSON line: the median seconds of
each, rafale's speed-up (hf seconds / rafale seconds) and whether the metrics agree.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: lm-eval's bars would fill stderr

import torch  # noqa: E402


def write_tasks(folder: Path, n_mc: int, n_ppl: int) -> None:
    import random

    from rafale.data.synthetic import load_synthetic
    from rafale.eval.tasks.stories import cloze_items

    stories = load_synthetic("stories", n=2 * n_mc + n_ppl, seed=7)
    items = cloze_items(stories[: 2 * n_mc], random.Random(0))[:n_mc]
    (folder / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[-n_ppl:]))
    (folder / "bench_mc.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "bench_ppl.yaml").write_text(
        f"task: bench_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mc", type=int, default=200, help="multiple-choice questions")
    parser.add_argument("--ppl", type=int, default=40, help="stories for rolling perplexity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    from rafale.data.tokenizer import DECODER_SPECIALS, train_tokenizer
    from rafale.data.synthetic import load_synthetic
    from rafale.eval.adapter import RafaleLM
    from rafale.eval.harness import load_tasks, quiet_lm_eval, task_manager
    from rafale.files import write_json
    from rafale.models import Decoder, export_model, get_config
    from rafale.models.export import tokenizer_config

    quiet_lm_eval()
    lm_eval.evaluator.add_env_info = lambda results: None  # the same seconds for both: not what is measured
    tmp = Path(tempfile.mkdtemp())
    model_dir, tasks_dir = tmp / "model", tmp / "tasks"
    model_dir.mkdir(), tasks_dir.mkdir()
    tok = train_tokenizer(load_synthetic("stories", n=2000, seed=1), "bpe", 8192, 2, DECODER_SPECIALS)
    tok.save(str(model_dir / "tokenizer.json"))
    torch.manual_seed(0)
    export_model(Decoder(get_config("pythia-14m", vocab_size=8192)).eval(), model_dir)
    write_json(model_dir / "tokenizer_config.json", tokenizer_config(model_dir / "tokenizer.json", 2048))
    write_tasks(tasks_dir, args.mc, args.ppl)

    backends = {"rafale": RafaleLM(str(model_dir), batch_size=args.batch_size, device="cpu"),
                "hf": HFLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu")}
    manager = task_manager(["bench_mc", "bench_ppl"], tasks_dir)
    result = {"bench": "eval", "model": "pythia-14m shape, vocab 8192", "mc_questions": args.mc,
              "ppl_stories": args.ppl, "batch_size": args.batch_size, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "lm_eval": lm_eval.__version__, "torch": torch.__version__}
    for task in ("bench_mc", "bench_ppl"):
        seconds = {name: [] for name in backends}
        metrics = {}
        for repeat in range(args.repeats):
            order = list(backends) if repeat % 2 == 0 else list(backends)[::-1]
            for name in order:
                tasks = load_tasks(manager, [task])
                t = time.perf_counter()
                out = lm_eval.simple_evaluate(model=backends[name], tasks=list(tasks.values()), task_manager=manager,
                                              log_samples=False, bootstrap_iters=0)
                seconds[name].append(time.perf_counter() - t)
                metrics[name] = {k: v for k, v in out["results"][task].items() if isinstance(v, float)}
        ours, theirs = statistics.median(seconds["rafale"]), statistics.median(seconds["hf"])
        same = all(abs(metrics["rafale"][k] - v) <= 1e-5 * max(1.0, abs(v)) for k, v in metrics["hf"].items())
        result[task] = {"rafale_s": round(ours, 3), "hf_s": round(theirs, 3), "speedup": round(theirs / ours, 2),
                        "speedups": [round(t / o, 2) for o, t in zip(seconds["rafale"], seconds["hf"])],
                        "same_metrics": same, "metrics": metrics["rafale"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
