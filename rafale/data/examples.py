"""Fixed-length examples stored as memory-mapped `.npy` arrays: the format of the sft and
classification pipelines.

A split is a few arrays with one row per example: `<split>.input_ids.npy` (N, block_size),
`<split>.attention_mask.npy`, `<split>.labels.npy` and, for packed SFT, `<split>.segment_ids.npy`.
Item i is a dict of tensors, so torch's default collate stacks a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy


class ArrayExamples(torch.utils.data.Dataset):
    def __init__(self, path: Path, split: str, names: list[str]):
        self.arrays = {n: np.load(path / f"{split}.{n}.npy", mmap_mode="r") for n in names}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.asarray(a[i]).astype(np.int64)) for n, a in self.arrays.items()}


def save(out: Path, split: str, arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        np.save(out / f"{split}.{name}.npy", a)


def dataset(path: Path, meta: dict, split: str):
    if not meta["splits"][split]["examples"]:
        return None
    return ArrayExamples(path, split, meta["arrays"])


def collator(meta: dict, **_):
    return torch.utils.data.default_collate


def file_sizes(path: Path, meta: dict) -> dict[str, int]:
    """The size each array file must have: its .npy header (dtype, row shape) plus one row per example."""
    sizes = {}
    for split, s in meta["splits"].items():
        for name in meta["arrays"]:
            file = path / f"{split}.{name}.npy"
            with open(file, "rb") as f:
                v1 = npy.read_magic(f) == (1, 0)  # np.save writes 1.0 unless the header is huge
                shape, _, dtype = (npy.read_array_header_1_0 if v1 else npy.read_array_header_2_0)(f)
                sizes[file.name] = f.tell() + s["examples"] * int(np.prod(shape[1:])) * dtype.itemsize
    return sizes
