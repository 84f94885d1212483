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

    ``domains`` holds a domain per image (centre, scanner, tumour type) when known, for
    out-of-domain evaluation. ``targets`` makes the data set multi-label: a 0/1 matrix (N, L)
    over the L labels in ``class_names``; ``labels`` then holds each image's stratum for splits
    and fractions, the index of its rarest positive label, or L for an image with none (see
    :meth:`stratification_view`).
    """

    paths: list[Path]
    labels: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    splits: Optional[np.ndarray] = None  # object array of "train"/"val"/"test"
    groups: Optional[np.ndarray] = None  # object array of group ids
    label_levels: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    name: str = "dataset"
    root: Optional[Path] = None
    domains: Optional[np.ndarray] = None  # object array of domain names
    targets: Optional[np.ndarray] = None  # uint8 (N, L): multi-label 0/1 targets
    strata_view: bool = False  # labels are multi-label strata (see stratification_view)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.paths)
        if self.labels.shape != (n,):
            raise DataError(f"{self.name}: {n} paths but labels of shape {self.labels.shape}")
        top = len(self.class_names) if self.targets is None else len(self.class_names) + 1
        if n and (self.labels.min() < 0 or self.labels.max() >= top):
            raise DataError(f"{self.name}: labels must index class_names (0..{top - 1})")
        if self.targets is not None:
            self.targets = np.asarray(self.targets, dtype=np.uint8)
            if self.targets.shape != (n, len(self.class_names)):
                raise DataError(f"{self.name}: targets have shape {self.targets.shape}, expected "
                                f"({n}, {len(self.class_names)})")
        for attr in ("splits", "groups", "domains"):
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
            domains=None if self.domains is None else self.domains[idx],
            targets=None if self.targets is None else self.targets[idx],
            strata_view=self.strata_view,
        )

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def stratification_view(self) -> "LabelledImages":
        """A single-label view whose classes are the strata of a multi-label set (each image's
        rarest positive label, or "(no label)"), so splits and fractions stay stratified; a
        single-label data set is returned as is."""
        if self.targets is None:
            return self
        return LabelledImages(paths=self.paths, labels=self.labels,
                              class_names=[f"{c} (rarest label)" for c in self.class_names]
                              + ["(no label)"],
                              splits=self.splits, groups=self.groups, name=self.name,
                              root=self.root, domains=self.domains, strata_view=True)

    def class_counts(self) -> dict[str, int]:
        if self.targets is not None:  # positives per label
            return {name: int(c) for name, c in zip(self.class_names, self.targets.sum(0))}
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def rarest_label_strata(targets: np.ndarray) -> np.ndarray:
    """Each image's stratum: the index of its rarest positive label (ties: the first), or L when
    it has none."""
    targets = np.asarray(targets, dtype=np.int64)
    n, num_labels = targets.shape
    positives = targets.sum(0)
    rank = np.where(targets > 0, positives[None, :], np.iinfo(np.int64).max)
    strata = rank.argmin(1) if num_labels else np.zeros(n, dtype=np.int64)
    return np.where(targets.sum(1) > 0, strata, num_labels).astype(np.int64)
