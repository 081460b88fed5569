"""The points of a sweep: the grid, its product (or a reproducible random draw), each point's name and config.

    grid = parse_grid(["model.config=pythia-14m,retnet-14m", "optim.lr=1e-3,3e-3"])
    points = make_points(grid)                 # 4 points, the last key varying fastest
    points = make_points(grid, random=2, seed=0)   # 2 of them, the same 2 for the same seed

A point's name is made from its values (`config-retnet-14m_lr-1e-3`), so it is the same every time the
sweep runs and names the point's run directory. Everything here is pure and fast except `point_configs`,
which validates every point's full config (and model) before the first one runs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import random as random_
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from rafale.config import Config, config_from_dict
from rafale.errors import ConfigError, RafaleError

RESERVED = ("run.name", "run.output_dir")  # the sweep sets them for each point


@dataclass(frozen=True)
class Value:
    text: str  # as the user wrote it: names the point and fills the CSV
    value: object  # as YAML reads it: what the config gets


@dataclass(frozen=True)
class Point:
    index: int  # 0-based position in the sweep (`--point K` runs the point whose index is K)
    name: str
    values: dict  # grid key -> Value


# ---- the grid ---------------------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """'1e-3,3e-3' -> ['1e-3', '3e-3']; commas inside [...] or {...} stay: 'a,[1,2]' -> ['a', '[1,2]']."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_value(text: str) -> Value:
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return Value(text, value)


def parse_grid(items: list[str]) -> dict[str, list[Value]]:
    """--grid KEY=V1,V2 arguments -> {key: [Value, ...]} in the order given."""
    grid: dict[str, list[Value]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        texts = split_values(values) if eq else []
        if not key or not eq or not all(texts):
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,... (e.g. --grid optim.lr=1e-3,3e-3)")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid")
        grid[key] = [parse_value(t) for t in texts]
    return grid


def yaml_grid(grid: dict) -> dict[str, list[Value]]:
    """A config's sweep.grid ({key: [values]}) as parse_grid returns it."""
    return {str(k): [Value(value_text(v), v) for v in values] for k, values in grid.items()}


def value_text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def config_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema; a free-form mapping (model.overrides, run.fsdp) also as 'key.'."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source_path":
            continue
        tp = hints[f.name]
        args = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
        section = next((a for a in args if dataclasses.is_dataclass(a)), None)
        if section is not None:
            keys += config_keys(section, f"{prefix}{f.name}.")
            if type(None) not in typing.get_args(tp):
                continue  # a section is set through its keys, not as a whole
        keys.append(f"{prefix}{f.name}")
        if dict in args:
            keys.append(f"{prefix}{f.name}.")
    return keys


def check_grid(grid: dict[str, list[Value]], overrides: list[str]) -> None:
    """Every grid key is a config key the sweep may vary, and is not also a fixed override."""
    if not grid:
        raise ConfigError("sweep: no grid; give --grid KEY=V1,V2 (e.g. --grid optim.lr=1e-3,3e-3) or a "
                          "sweep.grid section in the config")
    keys = config_keys()
    fixed = {o.partition("=")[0].strip() for o in overrides}
    for key in grid:
        if key in RESERVED or key.startswith("sweep."):
            raise ConfigError(f"--grid {key}: set by the sweep itself (each point is <output_dir>/<sweep name>/"
                              f"<point>); vary another key")
        if key not in keys and not any(key.startswith(k) and len(key) > len(k) for k in keys if k.endswith(".")):
            close = difflib.get_close_matches(key, [k for k in keys if not k.endswith(".")], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see the README's config reference"
            raise ConfigError(f"--grid {key}: not a config key{hint}")
        if key in fixed:
            raise ConfigError(f"--grid {key}: also given as the override {key}=...; drop one of them")
        if len({v.text for v in grid[key]}) != len(grid[key]):
            raise ConfigError(f"--grid {key}: a value is listed twice")


# ---- the points -------------------------------------------------------------------------------------
def grid_size(grid: dict) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def make_points(grid: dict[str, list[Value]], random: int | None = None, seed: int = 0) -> list[Point]:
    """The product of the grid (the last key varies fastest), or `random` of its points drawn with `seed`
    (kept in grid order). Raises ConfigError when `random` is more than the grid has."""
    total = grid_size(grid)
    if random is not None:
        if random < 1 or random > total:
            raise ConfigError(f"--random {random}: the grid has {total} point{'s' * (total != 1)}; "
                              f"expected 1 to {total}")
        chosen = set(random_.Random(seed).sample(range(total), random))
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*grid.values())):
        if random is None or i in chosen:
            values = dict(zip(keys, combo))
            points.append(Point(len(points), point_name(values), values))
    seen: dict[str, int] = {}
    for i, p in enumerate(points):  # values that differ only in characters a name cannot hold
        if p.name in seen:
            points[i] = dataclasses.replace(p, name=f"{p.name}-{p.index}")
        seen[p.name] = i
    return points


def point_name(values: dict[str, Value]) -> str:
    """'config-pythia-14m_lr-1e-3': the last part of each key and its value, as a plain directory name."""
    shorts = [k.rsplit(".", 1)[-1] for k in values]
    parts = []
    for key, short in zip(values, shorts):
        label = short if shorts.count(short) == 1 else key.replace(".", "-")
        parts.append(f"{label}-{values[key].text}")
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", "_".join(parts)).strip("-.")
    return name[:200]


# ---- each point's config ------------------------------------------------------------------------------
def set_key(raw: dict, dotted: str, value) -> None:
    node = raw
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def point_raw(raw: dict, point: Point, output_dir: Path) -> dict:
    """The config file's mapping with the point's values, its run directory, and no sweep section."""
    raw = copy.deepcopy(raw)
    raw.pop("sweep", None)
    for key, v in point.values.items():
        set_key(raw, key, copy.deepcopy(v.value))
    set_key(raw, "run.output_dir", str(output_dir))
    set_key(raw, "run.name", point.name)
    return raw


def point_configs(source: str, raw: dict, overrides: list[str], points: list[Point], output_dir: Path) -> list[Config]:
    """Every point's validated Config, its model resolved too (registry name, overrides such as n_head,
    chunk_size, the block size against its positions): one bad point stops the sweep before any runs.

    Raises:
        RafaleError: naming the file, the point and the key.
    """
    from rafale.train.plan import model_config

    configs = []
    for p in points:
        where = f"{source}: point {p.index} {p.name}"
        try:
            cfg = config_from_dict(point_raw(raw, p, output_dir), overrides, source=where)
            model_config(cfg)
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
        except RafaleError as e:
            raise type(e)(f"{where}: {e}") from None
        cfg.source_path = source
        configs.append(cfg)
    return configs
