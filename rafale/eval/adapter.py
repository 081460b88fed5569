"""rafale's model adapter for EleutherAI's lm-evaluation-harness: `RafaleLM`, an `lm_eval.api.model.LM`.

    import lm_eval
    from rafale.eval.adapter import RafaleLM
    out = lm_eval.simple_evaluate(model=RafaleLM("runs/quickstart"), tasks=["stories_cloze"],
                                  task_manager=lm_eval.tasks.TaskManager(include_path=...))

Importing this module registers the adapter as lm-eval model "rafale", so code that names models by
string works too: `simple_evaluate(model="rafale", model_args="path=runs/quickstart", ...)`.

Text becomes tokens exactly as in lm-eval's own transformers backend (`hf`): the same context/continuation
split (lm-eval's TemplateLM), the same prefix token for an empty context (BOS if the tokenizer has one,
else EOS), the same left truncation at the model's context and the same rolling windows. So the numbers
are the same; the work is not: see rafale/eval/scoring.py for the sorting, the shared contexts and the
output head applied only where a token is scored. Generation uses rafale's KV-cache generator.
"""

from __future__ import annotations

from typing import Optional

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rafale.eval.scoring import Row, score
from rafale.models.generate import Sampling, generate_texts


def progress_bar(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=disable)


@register_model("rafale")
class RafaleLM(TemplateLM):
    """A rafale decoder (and the tokenizer saved with it) as an lm-eval model.

    Args:
        path: a run directory, its final/, an HF-layout model directory or a hub id.
        batch_size: rows per forward pass; lm-eval's "auto" is read as 8.
        device: "cpu", "cuda", "cuda:1"...; default: cuda when available.
        max_length: the context in tokens; default the model's max_seq_len.
        model, tokenizer: an already loaded Decoder and TokenizerInfo, instead of `path`.
    """

    def __init__(self, path: Optional[str] = None, batch_size: int | str = 8, device: Optional[str] = None,
                 max_length: Optional[int] = None, model=None, tokenizer=None, max_batch_size=None, **_ignored):
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            from rafale.loading import model_and_tokenizer

            if path is None:
                raise ValueError("RafaleLM needs path= (a run directory or a model directory) or model= and tokenizer=")
            model, tokenizer = model_and_tokenizer(path, decoder_for="rafale eval --tasks", device=device)
        self.model, self.tok = model.eval(), tokenizer
        self.path = str(path) if path is not None else None
        self._device = torch.device(device)
        self._batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = int(max_length or model.config.max_seq_len)

    # ---- what lm-eval asks of a model ---------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(self.tok.path)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        # as the hf backend: the tokenizer's own special tokens unless asked otherwise, none when the
        # text already starts with the prefix token
        add = add_special_tokens
        if add is None:
            add = not string.startswith(self.tok.tokenizer.decode([self.prefix_token_id], skip_special_tokens=False))
        return self.tok.tokenizer.encode(string, add_special_tokens=add).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.tokenizer.decode(tokens)

    # ---- scoring --------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # TemplateLM tokenizes first, behind a tqdm bar of its own: off; rafale's bar covers the scoring
        self._quiet = disable_tqdm
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context tokens, continuation tokens), as TemplateLM makes them."""
        rows = [Row((ctx + cont)[-(self.max_length + 1):], len(cont)) for _, ctx, cont in requests]
        scores = self._score(rows, "loglikelihood", getattr(self, "_quiet", disable_tqdm))
        answers = [(s.logprob, s.greedy) for s in scores]
        for (strings, _, _), answer in zip(requests, answers):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood in lm-eval's disjoint windows of max_length tokens, every window of every
        text scored together (sorted by length, not text by text)."""
        rows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            windows = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                         prefix_token=self.prefix_token_id,
                                                         max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_utils.make_disjoint_window, windows):
                rows.append(Row(context + continuation, len(continuation)))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, s in zip(owner, self._score(rows, "loglikelihood_rolling", disable_tqdm, greedy=False)):
            totals[k] += s.logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _score(self, rows: list[Row], what: str, disable: bool, greedy: bool = True):
        with progress_bar(disable or not rows) as bar:
            task = bar.add_task(f"{what} ({len(rows):,} rows)", total=len(rows))
            return score(self.model, rows, self.batch_size, advance=lambda n: bar.advance(task, n), greedy=greedy)

    # ---- generation ------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, as the task says) continuations, ended at the task's `until` strings or EOS."""
        out: list[Optional[str]] = [None] * len(requests)
        by_kwargs: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        eos = self.tok.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        with progress_bar(disable_tqdm) as bar:
            task = bar.add_task(f"generate_until ({len(requests):,} requests)", total=len(requests))
            for idx in by_kwargs.values():
                kwargs = normalize_gen_kwargs(dict(requests[idx[0]].args[1]), 256)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_new = kwargs.pop("max_gen_toks")
                room = self.max_length - max_new
                if room <= 0:
                    raise ValueError(f"max_gen_toks {max_new} leaves no room for a context in the model's "
                                     f"{self.max_length} positions")
                sampling = Sampling(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                    kwargs.get("top_k"), kwargs.get("top_p"))
                contexts = []
                for i in idx:
                    ids = self.tok_encode(requests[i].args[0])
                    contexts.append(requests[i].args[0] if len(ids) <= room else self.tok_decode(ids[-room:]))
                order = sorted(range(len(idx)), key=lambda j: -len(contexts[j]))  # similar lengths batch together
                done = generate_texts(self.model, self.tok, [contexts[j] for j in order], max_new, sampling=sampling,
                                      stop=until, batch_size=self.batch_size,
                                      on_row_done=lambda _: bar.advance(task, 1))
                for j, completion in zip(order, done):
                    out[idx[j]] = completion.completion
                    self.cache_hook.add_partial("generate_until", requests[idx[j]].args, completion.completion)
        return out  # type: ignore[return-value]
