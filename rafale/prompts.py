"""What `rafale generate` reads and shows: prompts files, the thread count, streaming or a progress bar,
the jsonl output. Decoding itself is rafale.models.generate; this module only does the I/O around it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from rafale.errors import ConfigError
from rafale.files import write_text
from rafale.models.generate import Completion, Stats, encode_prompts, generate_texts

# Decoding a small model is a chain of tiny ops: extra threads mostly wait for each other, and on a busy
# machine they wait a lot. Batch 1 on 2 shared cores: pythia-14m 4.1 ms/step on 1 thread vs 91 on 2,
# pythia-70m 17 vs 127; batch 8 alike. Larger models keep torch's default (not measured here).
SMALL_MODEL_PARAMS = 100_000_000


def decoding_threads(model) -> int:
    """The torch thread count `rafale generate` uses without --threads: 1 for small models, else torch's."""
    n_params = sum(p.numel() for p in model.parameters())
    return 1 if n_params < SMALL_MODEL_PARAMS else torch.get_num_threads()


def read_prompts(path) -> list[str]:
    """Prompts from a .jsonl file (one {"prompt": ...} object or JSON string per line) or a text file
    (one prompt per line; blank lines are skipped; write \\n for a line break)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts-file {path}: no such file; expected a .txt or .jsonl file of prompts")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line.replace("\\n", "\n"))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg}); expected {{\"prompt\": \"...\"}}") from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{path}:{n}: expected a JSON object with a non-empty \"prompt\" string, "
                              f"or a JSON string; got {line[:60]!r}")
        prompts.append(prompt)
    if not prompts:
        raise ConfigError(f"--prompts-file {path}: holds no prompts")
    return prompts


def generate_to_console(model, tok, prompts: Sequence[str], max_new_tokens: int, *, console, err_console,
                        output=None, **kw) -> list[Completion]:
    """What `rafale generate` shows: one prompt streams its text to stdout as it is made; several show a
    progress bar and print (or, with `output`, write as jsonl) the completions. Speeds go to stderr."""
    from rich.progress import Progress

    stats = Stats()
    encode_prompts(model, tok, prompts)  # fail before printing anything
    if len(prompts) == 1 and output is None:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

        def stream(_: int, piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        results = generate_texts(model, tok, prompts, max_new_tokens, on_text=stream, stats=stats, **kw)
        sys.stdout.write("\n")
    else:
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("generating", total=len(prompts))
            results = generate_texts(model, tok, prompts, max_new_tokens, stats=stats,
                                     on_row_done=lambda _: progress.advance(task), **kw)
        if output is None:
            for r in results:
                console.print(r.prompt + r.completion + "\n", highlight=False, markup=False)
    if output is not None:
        rows = ({"prompt": r.prompt, "completion": r.completion, "tokens": len(r.tokens),
                 "finish_reason": r.finish_reason} for r in results)
        write_text(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        err_console.print(f"wrote {len(results)} completions to {output}", highlight=False)
    err_console.print(stats.summary(), highlight=False)
    return results
