"""The one value every reader produces: a table of labelled images.

Readers (folder, CSV, named layouts) all return a :class:`LabelledImages`; splitting, sampling,
decoding and training only ever see this type, so a new data source is one new reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data; the message names the file, class, column or option at fault."""


@dataclass
class LabelledImages:
    """Image paths with integer labels and the class names those integers index.

    ``splits`` holds "train"/"val"/"test" per image when the source defines a split, else None.
    ``groups`` holds a source id (patient, slide) per image when known, so splits never put one
    source in two splits. ``label_levels`` keeps extra label columns (e.g. HiCervix levels 1-2)
    as level name -> (integer labels, class names), for hierarchical metrics.
    """

    paths: list[Path]
    labels: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    splits: Optional[np.ndarray] = None  # object array of "train"/"val"/"test"
    groups: Optional[np.ndarray] = None  # object array of group ids
    label_levels: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    name: str = "dataset"
    root: Optional[Path] = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.paths)
        if self.labels.shape != (n,):
            raise DataError(f"{self.name}: {n} paths but labels of shape {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels must index class_names (0..{len(self.class_names) - 1})")
        for attr in ("splits", "groups"):
            value = getattr(self, attr)
            if value is not None:
                value = np.asarray(value, dtype=object)
                if value.shape != (n,):
                    raise DataError(f"{self.name}: {attr} has shape {value.shape}, expected ({n},)")
                setattr(self, attr, value)
        if self.splits is not None:
            unknown = sorted(set(self.splits.tolist()) - set(SPLIT_NAMES))
            if unknown:
                raise DataError(f"{self.name}: unknown split names {unknown}; use train/val/test")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabelledImages":
        """The same data set restricted to ``indices`` (class names are kept whole)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledImages(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            splits=None if self.splits is None else self.splits[idx],
            groups=None if self.groups is None else self.groups[idx],
            label_levels={k: (v[0][idx], v[1]) for k, v in self.label_levels.items()},
            name=self.name,
            root=self.root,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}
