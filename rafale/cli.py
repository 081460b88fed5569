"""The `rafale` command: thin typer commands over importable functions.

    rafale run -c configs/quickstart.yaml [key=value ...]    prepare data, train, evaluate, save, sample
    DATA=1  rafale run -c ...                               only prepare (or reuse) the data cache
    DEBUG=1 rafale run -c ...                               overfit one batch; exit 0 if the loss collapses
    FORCE=1 rafale run -c ...                               start a finished run over
    rafale generate runs/quickstart -p "Once upon a time"  greedy decoding with a KV cache
    rafale models                                           the model registry
    rafale export runs/quickstart out/quickstart-hf         a run as an HF-layout dir, checked with transformers

User mistakes (RafaleError) print one line and exit with code 2; RAFALE_DEBUG=1 or --verbose shows the
traceback too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from rafale.errors import RafaleError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train and use small transformer language models; one YAML file is one experiment.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


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
    if data_only or _flag("DATA"):
        from rafale.data.causal_lm import prepare

        prepare(cfg.data, console=console)
        raise typer.Exit(0)
    from rafale.train.run import run as run_experiment

    raise typer.Exit(run_experiment(cfg, debug=debug or _flag("DEBUG"), force=force or _flag("FORCE"),
                                    console=console))


@app.command()
def generate(
    path: Path = typer.Argument(..., help="A run directory, its final/ directory, or an HF-layout model directory."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="The text to continue."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", min=1, help="How many tokens to add."),
):
    """Continue a prompt greedily with a KV cache."""
    from rafale.models import from_pretrained
    from rafale.models.generate import complete
    from rafale.data.tokenizer import tokenizer_beside

    model = from_pretrained(path)
    tok = tokenizer_beside(path)
    console.print(complete(model, tok, prompt, max_new_tokens), highlight=False, markup=False)


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


def main() -> None:
    _tune_malloc()
    verbose = "--verbose" in sys.argv or _flag("RAFALE_DEBUG")
    if "--verbose" in sys.argv:
        sys.argv.remove("--verbose")
    try:
        code = app(standalone_mode=False)
    except RafaleError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click's own usage errors carry their exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
    sys.exit(code or 0)
