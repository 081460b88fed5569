"""The `rafale` command: thin typer commands over importable functions (`rafale --help`; README's table).

DATA=1, DEBUG=1 and FORCE=1 are `rafale run`'s --data-only, --debug and --force. User mistakes
(RafaleError) print one line and exit with code 2; RAFALE_DEBUG=1 or --verbose shows the traceback too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from rafale import signals
from rafale.errors import RafaleError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train and use small transformer language models; one YAML file is one experiment.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


CONFIG_SECTIONS = ("run.", "optim.", "model.", "data.", "logging.", "eval.", "sweep.")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@app.command(context_settings={"allow_extra_args": False})
def run(
    config: Path = typer.Option(..., "-c", "--config", help="The experiment's YAML config."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted key=value overrides, e.g. optim.lr=3e-4."),
    data_only: bool = typer.Option(False, "--data-only", help="Only prepare the data cache (same as DATA=1)."),
    debug: bool = typer.Option(False, "--debug", help="Overfit one batch and print a verdict (same as DEBUG=1)."),
    force: bool = typer.Option(False, "--force", help="Start a finished run over (same as FORCE=1)."),
):
    """Prepare data, train, evaluate, save and sample, as the config says."""
    from rafale.config import load_config

    cfg = load_config(config, overrides or [])  # before the heavy imports: config errors come back fast
    try:
        if data_only or _flag("DATA"):
            from rafale.data.prepare import prepare

            prepare(cfg.data, console=console)
            raise typer.Exit(0)
        from rafale.train.run import run as run_experiment

        code = run_experiment(cfg, debug=debug or _flag("DEBUG"), force=force or _flag("FORCE"), console=console)
    except RafaleError as e:
        if str(e).startswith(CONFIG_SECTIONS):  # a config key without its file: name the file too
            raise type(e)(f"{cfg.source_path}: {e}") from e
        raise
    raise typer.Exit(code)


@app.command(context_settings={"allow_extra_args": False})
def sweep(
    config: Path = typer.Option(..., "-c", "--config", help="The experiment's YAML config (its sweep: section too)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted key=value overrides for every point."),
    grid: Optional[List[str]] = typer.Option(None, "--grid", help="KEY=V1,V2,... (repeatable); the points are the "
                                                                  "product of the grids."),
    random: Optional[int] = typer.Option(None, "--random", help="Run N points drawn from the grid."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seeds --random (default: sweep.seed, 0)."),
    name: Optional[str] = typer.Option(None, "--name", help="sweeps/NAME and <output_dir>/NAME (default: run.name)."),
    launcher: str = typer.Option("inprocess", "--launcher", help="inprocess, or torchrun: each point under "
                                                                 "torch.distributed.run."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="torchrun: processes per point."),
    point: Optional[int] = typer.Option(None, "--point", min=0, help="Run only point K (0-based, as --list shows; "
                                                                     "one Slurm array task each)."),
    list_: bool = typer.Option(False, "--list", help="List the points and exit; nothing runs."),
):
    """Train one run per point of a grid; sweeps/NAME/results.csv and results.png compare them."""
    from rafale.sweep import plan_sweep, print_points, run_sweep

    plan = plan_sweep(config, grid or [], overrides or [], random=random, seed=seed, name=name)
    if list_:
        print_points(console, plan)
        raise typer.Exit(0)
    raise typer.Exit(run_sweep(plan, launcher=launcher, nproc=nproc, point=point, console=console))


@app.command()
def generate(
    path: Path = typer.Argument(..., help="A run directory, its final/, an HF-layout model directory or a hub id."),
    prompt: Optional[List[str]] = typer.Option(None, "-p", "--prompt", help="A text to continue (repeatable)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", help=".txt (one per line) or .jsonl prompts."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON object per prompt here."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="How many tokens to add at most."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy; higher is more random."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample within the nucleus of probability p."),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", help="> 1 discourages repeats."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Make sampling reproducible."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="End a completion at this text (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts decoded together."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="CPU threads (default: 1 for models under 100M parameters)."),
):
    """Continue prompts with a KV cache: greedy by default, or sampled; EOS and --stop end a completion."""
    import torch

    from rafale.errors import ConfigError
    from rafale.loading import model_and_tokenizer
    from rafale.models.generate import Sampling
    from rafale.prompts import decoding_threads, generate_to_console, read_prompts

    if (prompt is None) == (prompts_file is None):
        raise ConfigError("give either -p/--prompt (repeatable) or --prompts-file, not both and not neither")
    prompts = list(prompt) if prompt is not None else read_prompts(prompts_file)
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    model, tok = model_and_tokenizer(path, decoder_for="rafale generate")
    torch.set_num_threads(threads or decoding_threads(model))
    generate_to_console(model, tok, prompts, max_new_tokens, console=console, err_console=err_console,
                        output=output, sampling=sampling, stop=stop or (), seed=seed, batch_size=batch_size)


@app.command("eval")
def eval_(
    path: Path = typer.Argument(..., help="A run directory, its final/, an HF-layout model directory or a hub id."),
    data: Optional[str] = typer.Option(None, "--data", help="Any data.source: loss, perplexity, bits per byte "
                                                             "(decoders), accuracy (encoders)."),
    text_field: str = typer.Option("text", "--text-field", help="The text column of --data."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="--data window in tokens (default: the "
                                                                        "model's context)."),
    context: Optional[int] = typer.Option(None, "--context", help="--data: least left context of a token in a later "
                                                                   "window (default: half the block)."),
    split: Optional[str] = typer.Option(None, "--split", help="--data split (default: its eval split, else all)."),
    limit_docs: Optional[int] = typer.Option(None, "--limit-docs", min=1, help="--data: only the first N documents."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval task names, comma-separated."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="A folder of lm-eval task YAML files."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples per task."),
    limit: Optional[float] = typer.Option(None, "--limit", min=0, help="Only the first N documents of each task."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Rows per forward pass."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the results as JSON here."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
):
    """Evaluate a model: perplexity and bits per byte on any data, lm-evaluation-harness tasks, or both."""
    if tasks and not _flag("RAFALE_DEBUG"):
        os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's bars; tqdm reads this once, at its import
    from rafale.eval.run import evaluate, print_results, write_results

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    payload = evaluate(path, data=data, tasks=names, text_field=text_field, split=split, limit_docs=limit_docs,
                       block_size=block_size, context=context, include_path=include_path, num_fewshot=num_fewshot,
                       limit=int(limit) if limit and limit >= 1 else limit, batch_size=batch_size, device=device,
                       console=err_console)
    print_results(console, payload)
    if output is not None:
        console.print(f"wrote {write_results(output, payload)}", highlight=False, markup=False)


@app.command()
def models():
    """List the model registry: name, family (transformers' model_type) and exact parameter count."""
    from rich.table import Table

    from rafale.models.registry import list_models

    table = Table("name", "family", "parameters",
                  caption="encoders (bert, roberta) are counted with their masked-LM head")
    for name, family, n_params in list_models():
        table.add_row(name, family, f"{n_params:,}")
    console.print(table)


cache_app = typer.Typer(no_args_is_help=True, help="Browse, check and clear prepared data and trained tokenizers.")
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list():
    """List cache entries: name, size, tokens per split, last used."""
    import time

    from rich.table import Table

    from rafale.data.cache import cache_root, entries

    table = Table("kind", "size", "tokens", "last used", title=str(cache_root()))
    table.add_column("name", overflow="fold")
    for e in entries():
        tokens = ", ".join(f"{s} {n:,}" for s, n in e["tokens"].items()) if e["tokens"] else "-"
        table.add_row(e["kind"], f"{e['bytes'] / 1e6:,.1f} MB", tokens,
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"])), e["name"])
    console.print(table)


@cache_app.command("clear")
def cache_clear(
    name: Optional[str] = typer.Argument(None, help="The entry to remove (as `rafale cache list` names it)."),
    all_: bool = typer.Option(False, "--all", help="Remove every entry."),
):
    """Remove one cache entry, or all of them with --all."""
    from rafale.data.cache import clear
    from rafale.errors import RafaleError

    if (name is None) == (not all_):
        raise RafaleError("cache clear: give one entry name or --all")
    removed = clear(None if all_ else name)
    console.print(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}")


@cache_app.command("verify")
def cache_verify(
    name: Optional[str] = typer.Argument(None, help="One entry (as `rafale cache list` names it); all when omitted."),
):
    """Check entries: file sizes against meta.json, and each file's sha256 against the one recorded at build.

    Exit 0 when every entry is fine, 2 when one is damaged.
    """
    from rafale.data.cache import cache_root, find
    from rafale.data.prepare import verify

    found = find(name)
    if not found:
        console.print(f"no cache entries under {cache_root()}", highlight=False)
    damaged = 0
    for path in found:
        fine, what = verify(path)
        damaged += not fine
        console.print(f"{path.name}: {what}" if fine else f"{path.name}: damaged: {what}; remove it with "
                      f"`rafale cache clear {path.name}`, or let the next run that uses it rebuild it",
                      markup=False, highlight=False)
    raise typer.Exit(2 if damaged else 0)


@app.command()
def plot(
    runs: List[Path] = typer.Argument(..., help="One or more run directories; their curves are overlaid."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="The PNG to write (default: RUN/loss.png for one run, "
                                               "loss.png here for several)."),
):
    """Plot train and eval loss against tokens seen, from each run's metrics.jsonl."""
    from rafale.train.plot import plot_runs

    out = output or (runs[0] / "loss.png" if len(runs) == 1 else Path("loss.png"))
    console.print(f"wrote {plot_runs(runs, out)}")


@app.command()
def export(
    src: Path = typer.Argument(..., help="A run directory, its final/ directory, or an HF-layout model directory."),
    out: Path = typer.Argument(..., help="Where to write the HF-layout directory (must be missing or empty)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Reload with transformers and compare logits (when it is installed)."),
):
    """Write a model as an HF-layout directory (safetensors, config.json, tokenizer) that transformers loads."""
    from rafale.models.export import export_run

    r = export_run(src, out, force=force, verify=verify)
    console.print(f"exported {src} -> {r.out}: {r.family} ({r.head} head), {r.n_params:,} parameters; "
                  f"{', '.join(r.files)}", highlight=False, markup=False)
    if r.verified:
        console.print(f"verified with transformers: {r.verified}", highlight=False, markup=False)
    else:
        console.print(f"not verified: {r.not_verified_why}", highlight=False, markup=False)


def _tune_malloc() -> None:
    """Keep freed activation buffers in the process instead of returning them to the OS each step.

    On Linux/glibc a training step otherwise takes tens of thousands of page faults re-mapping the same
    large buffers (see benchmarks/train.py). Must run before tensors are allocated; RAFALE_MALLOC=0 opts out.
    """
    if sys.platform != "linux" or os.environ.get("RAFALE_MALLOC", "1") == "0":
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _error(where: str, message: str) -> None:
    """The one line a user mistake prints: `error: <where>: <what>; <what to do>` (no markup parsing)."""
    from rich.text import Text

    line = (f"{where}: {message}" if where else message).replace("\n", "; ")
    err_console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


# OS errors that are the user's environment, not a bug: printed as one line, exit 2
_USER_OS_ERRORS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM"}


def _click_errors() -> tuple[tuple, tuple, tuple]:
    """(usage errors, errors, aborts) of click and of the copy of click that typer >= 0.29 carries."""
    import click

    usage, errors, aborts = [click.UsageError], [click.ClickException], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as tc

        usage.append(tc.UsageError)
        errors.append(tc.ClickException)
    except ImportError:
        pass
    if hasattr(typer, "Abort"):
        aborts.append(typer.Abort)
    return tuple(usage), tuple(errors), tuple(aborts)


def _invoke(args: list[str]) -> int:
    """Run the command line as typer's own main would, but let KeyboardInterrupt (and its SIGTERM form)
    through: typer's main turns it into a bare exit code 130, losing which signal it was."""
    from typer.main import get_command

    exits = tuple({typer.Exit, *(c for c in [getattr(__import__("click").exceptions, "Exit", None)] if c)})
    cmd = get_command(app)
    try:
        with cmd.make_context("rafale", list(args)) as ctx:
            rv = cmd.invoke(ctx)
    except exits as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def main() -> None:
    import errno

    usage_errors, click_errors, aborts = _click_errors()

    _tune_malloc()
    verbose = "--verbose" in sys.argv or _flag("RAFALE_DEBUG")
    sys.argv[:] = [a for a in sys.argv if a != "--verbose"]  # accepted anywhere on the line
    signals.install()  # SIGTERM (a scheduler's stop, `kill`) takes the same paths as Ctrl-C

    def traceback_if_verbose():
        if verbose:
            import traceback

            traceback.print_exc()

    try:
        code = _invoke(sys.argv[1:])
    except RafaleError as e:
        traceback_if_verbose()
        _error("", str(e))
        sys.exit(2)
    except (KeyboardInterrupt, *aborts) as e:  # Ctrl-C or SIGTERM (click turns them into Abort)
        traceback_if_verbose()
        cause = e if isinstance(e, KeyboardInterrupt) else (e.__cause__ or e.__context__)
        signum = getattr(cause, "signum", 2)
        err_console.print(f"interrupted ({'SIGTERM' if signum == 15 else 'Ctrl-C'})", highlight=False)
        sys.exit(128 + signum)
    except click_errors as e:  # a bad command-line argument: one line too
        if type(e).__name__ == "NoArgsIsHelpError":  # `rafale` or `rafale cache` alone: the help
            e.show()
            sys.exit(0)
        traceback_if_verbose()
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "rafale"
        hint = f"; see '{where} --help'" if isinstance(e, usage_errors) else ""
        _error(where, e.format_message().strip().rstrip(".") + hint)
        sys.exit(e.exit_code)
    except OSError as e:
        if errno.errorcode.get(e.errno) not in _USER_OS_ERRORS:
            raise
        traceback_if_verbose()
        _error(str(e.filename or ""), f"{e.strerror}; free some space or choose a writable directory "
                                    f"(run.output_dir, RAFALE_CACHE)")
        sys.exit(2)
    sys.exit(code or 0)
