"""What `rafale eval` and a run's `eval:` section do: read the data, pick the metrics for the model, print a
table, write the results file (atomically: an interrupted eval leaves none).

    result = evaluate_data("runs/quickstart", "my.txt")             # loss, perplexity, bits per byte, ...
    payload = evaluate("runs/quickstart", data="my.txt", tasks=["stories_cloze"])   # both, as the CLI does
    print_results(console, payload); write_results("out.json", payload)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from rafale.errors import ConfigError, DataError


def read_texts(source, *, text_field: str = "text", split: Optional[str] = None, limit_docs: Optional[int] = None,
               label_field: Optional[str] = None) -> dict[str, list]:
    """The documents of any `data.source` as columns {text_field: [...], (label_field: [...])}: the split named
    `split`, or by default the source's eval split when it has one, else every document.

    Raises:
        DataError: the source cannot be read, or holds no text.
    """
    from rafale.config import DataConfig
    from rafale.data.sources import load_splits

    cfg = DataConfig(source=source, text_field=text_field, eval_split=0.0, train_split_name=split or "train",
                     max_documents=None, label_field=label_field or "label")
    fields = [text_field] + ([label_field] if label_field else [])
    try:
        splits = load_splits(cfg, fields)
    except DataError as e:  # name the option the user gave, not the config key it stands for
        raise DataError(str(e).replace("data.source", "--data").replace("data.text_field", "--text-field")) from None
    cols = splits["train"] if split or not splits["eval"][text_field] else splits["eval"]
    if limit_docs:
        cols = {k: v[:limit_docs] for k, v in cols.items()}
    if not cols[text_field]:
        raise DataError(f"--data {source}: no text in field {text_field!r}")
    return cols


def evaluate_data(path, source, *, text_field: str = "text", split: Optional[str] = None,
                  limit_docs: Optional[int] = None, block_size: Optional[int] = None, context: Optional[int] = None,
                  batch_size: int = 8, console: Optional[Console] = None) -> dict:
    """Score `model` on the documents of `source`: a decoder's loss, perplexity and bits per byte
    (rafale/eval/perplexity.py), a classifier's accuracy and macro-F1, a masked LM's masked-token accuracy
    and loss (rafale/eval/encoder.py). Returns {"source", "kind", metric: value, ...}.

    Raises:
        ModelError, DataError: see rafale.loading.model_and_tokenizer; ConfigError: a block or context that
            does not fit the model; DataError: a source with no text.
    """
    from rafale.loading import model_and_tokenizer
    from rafale.models import Decoder, EncoderForMaskedLM, EncoderForSequenceClassification, RetNet
    from rafale.models.checkpoint import locate, read_hf_config

    model, tok = model_and_tokenizer(path)

    max_len = model.config.max_seq_len
    if block_size is not None and not 0 < block_size <= max_len:
        raise ConfigError(f"--block-size {block_size}: expected 1 to the model's max_seq_len {max_len}")
    block = block_size or max_len
    if context is not None and not 0 <= context < block:
        raise ConfigError(f"--context {context}: expected 0 to block size - 1 ({block - 1})")
    head = {Decoder: "lm", RetNet: "lm", EncoderForSequenceClassification: "classification", EncoderForMaskedLM: "mlm"}
    kind = head.get(type(model))
    if kind is None:
        raise ConfigError(f"--data: the model is a bare encoder backbone ({type(model).__name__}), with no head to "
                          f"score text; expected a decoder, a classifier or a masked LM")
    label_field = "label" if kind == "classification" else None
    cols = read_texts(source, text_field=text_field, split=split, limit_docs=limit_docs, label_field=label_field)
    texts = [str(t) for t in cols[text_field]]
    out = {"source": source if isinstance(source, str) else list(source), "kind": kind}
    if kind == "lm":
        with _bar(console) as bar:
            task = bar.add_task("scoring", total=None)
            result = evaluate_text_with_bar(model, tok, texts, block, context, batch_size, bar, task)
        out.update(result.to_dict())
    elif kind == "classification":
        from rafale.eval.encoder import classification_scores

        id2label = read_hf_config(locate(path)).get("id2label") or {}
        names = [str(id2label.get(str(i), i)) for i in range(model.config.num_labels)]
        out.update(classification_scores(model, tok, texts, cols[label_field], names, block, batch_size))
    else:
        from rafale.eval.encoder import mlm_scores

        out.update(mlm_scores(model, tok, texts, block, batch_size=batch_size))
    return out


def evaluate_text_with_bar(model, tok, texts, block, context, batch_size, bar, task):
    from rafale.eval.perplexity import evaluate_text

    return evaluate_text(model, tok, texts, block_size=block, context=context, batch_size=batch_size,
                         on_total=lambda n: bar.update(task, total=n), advance=lambda n: bar.advance(task, n))


def _bar(console: Optional[Console]):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


# ---- output -----------------------------------------------------------------------------------------------
DATA_ROWS = [("loss", "loss per token", "{:.4f}"), ("perplexity", "perplexity", "{:.3f}"),
             ("bits_per_byte", "bits per byte", "{:.4f}"), ("tokens", "tokens scored", "{:,}"),
             ("bytes", "bytes scored", "{:,}"), ("documents", "documents", "{:,}"),
             ("windows", "windows", "{:,}"), ("tokens_per_second", "throughput", "{:,.0f} tokens/s"),
             ("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"), ("examples", "examples", "{:,}"),
             ("masked_accuracy", "masked-token accuracy", "{:.4f}"), ("masked_loss", "masked-token loss", "{:.4f}"),
             ("masked_tokens", "masked tokens", "{:,}")]


def data_rows(result: dict) -> list[tuple[str, str]]:
    return [(label, fmt.format(result[key])) for key, label, fmt in DATA_ROWS if result.get(key) is not None]


def print_results(console: Console, payload: dict) -> None:
    """One table for --data (metric, value), one for lm-eval's results (task, metric, value, stderr)."""
    if payload.get("data"):
        d = payload["data"]
        t = Table(title=f"{payload.get('model', '')} on {d['source']}", show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column(justify="right")
        for name, value in data_rows(d):
            t.add_row(name, value)
        console.print(t)
    if payload.get("results"):
        from rafale.eval.harness import metric_rows

        t = Table("task", "metric", "value", "± stderr", title=f"{payload.get('model', '')}: lm-eval tasks",
                  title_justify="left")
        for task, metric, value, stderr in metric_rows(payload["results"]):
            t.add_row(task, metric, f"{value:.4f}" if abs(value) < 1e5 else f"{value:,.0f}",
                      "" if stderr is None else f"{stderr:.4f}")
        console.print(t)


def write_results(path, payload: dict) -> Path:
    from rafale.files import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)
    return path


def evaluate(path, *, data=None, tasks: Optional[list[str]] = None, text_field: str = "text",
             split: Optional[str] = None, limit_docs: Optional[int] = None, block_size: Optional[int] = None,
             context: Optional[int] = None, include_path=None, num_fewshot: Optional[int] = None,
             limit: Optional[float] = None, batch_size: int = 8, device: Optional[str] = None,
             console: Optional[Console] = None) -> dict:
    """Everything `rafale eval` does but print and write: {"model", "rafale_version", "data": evaluate_data's,
    and for tasks lm-eval's "results" dict unchanged beside harness.run_tasks' other keys, "wall_seconds"}.

    Raises:
        ConfigError: neither data nor tasks; see evaluate_data and harness.run_tasks for the rest.
    """
    import time

    import rafale

    if data is None and not tasks:
        raise ConfigError("rafale eval: give --data SOURCE (perplexity, bits per byte) or --tasks NAME[,NAME...] "
                          "(lm-eval tasks), or both")
    t0 = time.perf_counter()
    payload: dict = {"model": str(path), "rafale_version": rafale.__version__}
    if tasks:
        from rafale.eval.harness import run_tasks

        payload.update(run_tasks(path, tasks, include_path=include_path, num_fewshot=num_fewshot, limit=limit,
                                 batch_size=batch_size, device=device))
    if data is not None:
        payload["data"] = evaluate_data(path, data, text_field=text_field, split=split, limit_docs=limit_docs,
                                        block_size=block_size, context=context, batch_size=batch_size,
                                        console=console)
    payload["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return payload


# ---- after training: the eval: section of a run config ---------------------------------------------------
def check_eval_config(e) -> None:
    """Before training: the tasks exist and eval.data can be found (a config's `eval:` section, EvalConfig).

    Raises:
        ConfigError, DataError: naming the eval.* key.
    """
    from rafale.errors import RafaleError

    try:
        if e.tasks:
            from rafale.eval.harness import task_manager

            task_manager(e.tasks, e.include_path)
        if e.data is not None:
            from rafale.config import DataConfig
            from rafale.data import sources

            sources.fingerprint(DataConfig(source=e.data))
    except RafaleError as err:
        message = str(err).replace("--tasks", "eval.tasks").replace("--include-path", "eval.include_path")
        raise type(err)(message.replace("data.source", "eval.data")) from None


def evaluate_config(final, e, console: Optional[Console] = None) -> dict:
    """Evaluate a run's final/ as its `eval:` section says; return what the summary and manifest.json keep
    (the same as `rafale eval -o` writes; summary_rows gives the summary table's rows)."""
    payload = evaluate(final, data=e.data, tasks=e.tasks or None, text_field=e.text_field, context=e.context,
                       include_path=e.include_path, num_fewshot=e.num_fewshot, limit=e.limit,
                       batch_size=e.batch_size, console=console)
    return payload


def summary_rows(payload: dict) -> list[tuple[str, str]]:
    """The run summary's rows for an eval: bits per byte and perplexity of eval.data, each task's metrics."""
    rows = []
    if payload.get("data"):
        d = payload["data"]
        rows += [(f"eval.data {name}", value) for name, value in data_rows(d)
                 if name in ("bits per byte", "perplexity", "accuracy", "masked-token accuracy")]
    if payload.get("results"):
        from rafale.eval.harness import metric_rows

        rows += [(f"{task} {metric}", f"{value:.4f}" + ("" if stderr is None else f" ± {stderr:.4f}"))
                 for task, metric, value, stderr in metric_rows(payload["results"])]
    return rows
