"""Two small lm-eval tasks made from the embedded story corpus (rafale/data/synthetic.py), so that
`rafale eval RUN --tasks stories_cloze,stories_ppl` works offline right after the quickstart.

- stories_cloze: multiple choice. A story is cut just before the last time its hero is named; the
  answer is the hero's name, against three names from other stories. A model that follows the story
  (the name was introduced in its first sentence) beats chance, 25%.
- stories_ppl: rolling log-likelihood of whole stories (word and byte perplexity, bits per byte).

The stories come from a seed the quickstart does not train on. The data files beside this module are
what the tasks read (`custom_dataset: !function stories.load` in the YAML files, so they are found
relative to this folder from any working directory); regenerate them with

    python -m rafale.eval.tasks.stories
"""

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611  # not the corpus's default seed (0), which the quickstart trains on
N_CLOZE, N_FEWSHOT, N_PPL = 200, 20, 40


def load(file: str, **_metadata):
    """The DatasetDict of a task's jsonl file: one split per distinct "split" field."""
    import datasets

    rows = [json.loads(line) for line in (HERE / file).read_text(encoding="utf-8").splitlines() if line.strip()]
    splits: dict[str, list] = {}
    for row in rows:
        splits.setdefault(row.pop("split"), []).append(row)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(docs) for name, docs in splits.items()})


def cloze_items(stories: list[str], rng: random.Random) -> list[dict]:
    heroes = [m.group(1) if (m := re.search(r"named (\w+)", s)) else None for s in stories]
    names = sorted({h for h in heroes if h})
    items = []
    for story, hero in zip(stories, heroes):
        if hero is None:
            continue
        last = story.rfind(f" {hero}")
        if last <= story.find(f"named {hero}"):
            continue  # named only once: nothing to recall
        choices = rng.sample([n for n in names if n != hero], 3) + [hero]
        rng.shuffle(choices)
        items.append({"context": story[:last], "choices": choices, "label": choices.index(hero)})
    return items


def main() -> None:
    from rafale.data.synthetic import load_synthetic

    rng = random.Random(SEED)
    stories = load_synthetic("stories", n=N_CLOZE * 2 + N_PPL, seed=SEED)
    items = cloze_items(stories[: N_CLOZE * 2], rng)[: N_CLOZE + N_FEWSHOT]
    rows = [{"split": "train" if i < N_FEWSHOT else "test", **item} for i, item in enumerate(items)]
    (HERE / "stories_cloze.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ppl = [{"split": "test", "text": s} for s in stories[-N_PPL:]]
    (HERE / "stories_ppl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ppl), encoding="utf-8")
    print(f"wrote {len(rows)} cloze items and {len(ppl)} stories to {HERE}")


if __name__ == "__main__":
    main()
