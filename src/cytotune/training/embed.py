"""``cytotune embed``: a data set's frozen-backbone features, written for use outside cytotune.

The features come from the same code path as the linear probe and the few-shot probes: the run's
images are chosen and decoded as a run decodes them (:func:`prepare_run_data`, the image store),
the backbone is built as a run builds it (:func:`build_run_backbone`) and the features are read
from, or extracted into, the same :class:`FeatureCache`. So an embedding after a probe on the same
images extracts nothing, a probe after an embedding neither, and a notebook sees exactly the
vectors the probes were trained on.

Output: ``NAME.safetensors`` (``features`` (N, D) float32, ``labels`` (N,) int64 class indices or
(N, L) float32 0/1 rows for multi-label data; the class names and the backbone in its metadata)
and ``NAME.csv`` (``index, path, label, split``; row i describes feature row i); or one
``NAME.parquet`` when pyarrow is installed. Files are written whole (temporary file, then
rename): an interrupted call leaves earlier outputs as they were.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from cytotune._atomic import write_csv_atomic
from cytotune._version import __version__
from cytotune.data import ImageStore
from cytotune.training.config import ConfigError, TrainConfig
from cytotune.training.features import FeatureCache
from cytotune.training.methods.linear import freeze
from cytotune.training.progress import observer
from cytotune.training.runner import _decode, build_run_backbone, prepare_run_data, resolve_device

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val", "test")


@dataclass
class Embeddings:
    """Features of a data set's images, row by row with their path, label and split."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64, or (N, L) float32 for multi-label data
    paths: list[str]
    splits: list[str]
    class_names: list[str]
    model: str
    multi_label: bool = False
    # split -> whether every feature of it came from the cache (nothing extracted)
    cache_hits: dict[str, bool] = field(default_factory=dict)

    @property
    def extracted_nothing(self) -> bool:
        return all(self.cache_hits.values())

    def label_names(self) -> list[str]:
        """Each row's label as text: the class name, or multi-label names joined by '|'."""
        if self.multi_label:
            return ["|".join(n for n, on in zip(self.class_names, row) if on > 0.5)
                    for row in self.labels.tolist()]
        return [self.class_names[i] for i in self.labels.tolist()]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(len(self.paths)), "path": self.paths,
                             "label": self.label_names(), "split": self.splits})


def embed(config: TrainConfig, split: str = "all", batch_size: int = 64) -> Embeddings:
    """Features of the images of ``split`` ("all": train, val and test, in that order) of
    ``config``'s data set through its frozen backbone, from the feature cache where it holds
    them (``config.cache_dir``). The split is the one ``train`` uses with the same data options
    and ``--split-seed``; sampling options (shots, fraction) are not applied."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    config.shots = config.fraction = None
    config.validate()
    device = resolve_device(config.device)
    prepared = prepare_run_data(config)
    indices = prepared.indices
    wanted = {"train": indices.train, "val": indices.val,
              "test": np.concatenate([indices.test, indices.test_ood])}
    if split != "all":
        wanted = {split: wanted[split]}
    wanted = {name: idx for name, idx in wanted.items() if len(idx)}
    if not wanted:
        raise ConfigError(f"the {split} split of {prepared.data.name} holds no images")
    backbone = build_run_backbone(config)
    freeze(backbone, device)
    fingerprint = backbone.weights_fingerprint()
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    store = ImageStore(cache_dir / "images" if cache_dir else None, num_workers=config.num_workers)
    cache = FeatureCache(cache_dir)
    pre = backbone.preprocessing
    progress = observer()
    progress.phase("decoding", sum(len(idx) for idx in wanted.values()))
    decoded = {name: _decode(store, prepared.data, idx, pre, config.data.skip_bad_images, name)
               for name, idx in wanted.items()}
    progress.phase("features", sum(len(d.labels) for d in decoded.values()))
    features, hits = [], {}
    for name, images in decoded.items():
        feats, _, hit = cache.features(backbone, fingerprint, images.pixels, images.images_key,
                                       device, config.precision, images.image_keys,
                                       batch_size=batch_size)
        features.append(feats.float())
        hits[name] = hit
        log.info("%s split: %d images, %s", name, len(images.labels),
                 "all from the feature cache" if hit else "features extracted")
    progress.finished()
    return Embeddings(
        features=torch.cat(features), labels=torch.cat([d.labels for d in decoded.values()]),
        paths=[str(p) for d in decoded.values() for p in d.paths],
        splits=[name for name, d in decoded.items() for _ in d.paths],
        class_names=list(prepared.data.class_names), model=config.model.name,
        multi_label=prepared.data.targets is not None, cache_hits=hits)


def output_paths(out: Path) -> list[Path]:
    """The files ``write_embeddings`` writes for ``--out out``: ``out.parquet`` as given, else
    ``STEM.safetensors`` and ``STEM.csv`` (a .safetensors or .csv suffix on ``out`` is dropped)."""
    out = Path(out).expanduser()
    if out.suffix == ".parquet":
        return [out]
    stem = out.with_suffix("") if out.suffix in (".safetensors", ".csv") else out
    return [stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.csv"]


def check_output(out: Path, overwrite: bool) -> list[Path]:
    """The output files, checked before any work: parquet needs pyarrow; existing files are
    kept unless ``overwrite``."""
    paths = output_paths(out)
    if paths[0].suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"--out {out}: Parquet needs pyarrow, which is not installed (pip "
                          f"install pyarrow), or give --out without .parquet for safetensors + "
                          f"CSV")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; add --overwrite to "
                          f"replace it")
    for p in paths:
        if p.is_dir():
            raise ConfigError(f"--out: {p} is a folder")
    return paths


def write_embeddings(emb: Embeddings, out: Path) -> list[Path]:
    """Write ``emb`` (see the module docstring); returns the files written."""
    paths = output_paths(out)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    if paths[0].suffix == ".parquet":
        frame = emb.table()
        feats = pd.DataFrame(emb.features.numpy(),
                             columns=[f"f{i}" for i in range(emb.features.shape[1])])
        frame = pd.concat([frame, feats], axis=1)
        _replace_with(paths[0], lambda tmp: frame.to_parquet(tmp, index=False))
        return paths
    metadata = {"class_names": json.dumps(emb.class_names), "model": emb.model,
                "multi_label": str(emb.multi_label).lower(), "cytotune": __version__,
                "rows": "row i is row i of the CSV beside this file"}
    tensors = {"features": emb.features.contiguous(), "labels": emb.labels.contiguous()}
    _replace_with(paths[0], lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    write_csv_atomic(emb.table(), paths[1])
    return paths


def _replace_with(target: Path, write) -> None:
    """``write(temporary path)`` beside ``target``, then rename it onto ``target``."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


__all__ = ["Embeddings", "SPLITS", "check_output", "embed", "output_paths", "write_embeddings"]
