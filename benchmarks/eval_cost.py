"""What evaluation costs a run on a large corpus: one periodic evaluation and the final one under the defaults
(run.eval_batches, data.eval_max_tokens), against an evaluation of the whole held-out split (no caps), beside
the training time between two periodic evaluations.

    PYTHONPATH=. python benchmarks/eval_cost.py [--mb 50] [--steps 100] [--model pythia-14m]

Writes --mb MB of the embedded story corpus as one .txt file (a story per paragraph), prepares it with the
data defaults (eval_split 0.05, block 256, batches of 32, a 4096-token BPE tokenizer) in a temporary cache,
trains --steps batches (run.eval_interval's default is 100ba) and times each evaluation. Prints one JSON line:
seconds and tokens of each evaluation and of the training steps, and the held-out counts.
"""

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="eval_dataloader label")  # the uncapped loader replaces the trainer's


def write_corpus(path: Path, mb: float) -> int:
    from rafale.data.synthetic import load_synthetic

    stories, size, seed = [], 0, 0
    while size < mb * 1e6:  # ~630 characters a story
        batch = load_synthetic("stories", n=min(5000, int((mb * 1e6 - size) / 600) + 1), seed=seed)
        stories += batch
        size += sum(len(s) + 2 for s in batch)
        seed += 1
    path.write_text("\n\n".join(stories) + "\n")
    return len(stories)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB")
    parser.add_argument("--steps", type=int, default=100, help="training batches (one eval interval)")
    parser.add_argument("--model", default="pythia-14m")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RAFALE_CACHE"] = f"{tmp}/cache"
        from composer import Trainer
        from rich.console import Console

        from rafale.config import config_from_dict
        from rafale.data.prepare import prepare
        from rafale.train.plan import make_plan
        from rafale.train.run import build_model, held_out
        from rafale.train.trainer import collate_fn, dataloader, dataloaders, final_eval, trainer_kwargs

        corpus = Path(tmp) / "corpus.txt"
        n_docs = write_corpus(corpus, args.mb)
        cfg = config_from_dict({"run": {"max_duration": f"{args.steps}ba", "eval_interval": "0ba"},
                                "model": {"config": args.model}, "data": {"source": str(corpus)}})
        quiet = Console(quiet=True)
        t0 = time.perf_counter()
        plan = make_plan(cfg, debug=True, log=quiet.print)  # debug: no run directory
        data = prepare(cfg.data, console=quiet, fingerprint=plan.fingerprint, tokenizer=plan.tokenizer)
        prepare_s = time.perf_counter() - t0
        model = build_model(plan, data, quiet)
        train_dl, eval_dl = dataloaders(plan, data, model)
        trainer = Trainer(**trainer_kwargs(plan, model, train_dl, eval_dl, callbacks=[]))

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return round(time.perf_counter() - t, 2)

        periodic = min(cfg.run.eval_batches, len(eval_dl))
        periodic_examples = min(periodic * cfg.data.eval_batch_size, len(eval_dl.dataset))
        train_s = timed(trainer.fit)
        periodic_s = timed(lambda: trainer.eval(subset_num_batches=cfg.run.eval_batches))
        final_s = timed(lambda: final_eval(trainer))
        whole = dataloader(data.dataset("eval"), plan.eval_batch, shuffle=False, seed=cfg.run.seed,
                           collate=collate_fn(cfg, data, model, "eval"))
        whole_s = timed(lambda: trainer.eval(eval_dataloader=whole, subset_num_batches=len(whole)))
        trainer.close()
        print(json.dumps({
            "corpus_mb": args.mb, "documents": n_docs, "model": args.model, "prepare_s": round(prepare_s, 1),
            "held_out": held_out(plan, data),
            "train": {"batches": args.steps, "seconds": train_s},
            "periodic_eval": {"batches": periodic, "tokens": periodic_examples * cfg.data.block_size,
                              "seconds": periodic_s},
            "final_eval": {"batches": len(eval_dl), "tokens": len(eval_dl.dataset) * cfg.data.block_size,
                           "seconds": final_s},
            "uncapped_eval": {"batches": len(whole), "tokens": len(whole.dataset) * cfg.data.block_size,
                              "seconds": whole_s},
        }))


if __name__ == "__main__":
    main()
