"""``cytotune select`` and ``cytotune audit``: which cells to label first, which labels look wrong.

Both work on a backbone's frozen features from the same feature cache as ``train`` and
``embed`` (per-image feature bank: an image extracted once, by any of them, is never extracted
again). ``audit`` reads a labelled data set through :func:`cytotune.training.embed.embed`;
``select`` reads an *unlabelled* pool (a folder of images, or a CSV with a ``path`` column) and
never looks at a label: its images go through the same decode/backbone/cache steps under one
placeholder class. The strategies and the audit steps are :mod:`cytotune.data.selection`
and :mod:`cytotune.analysis.audit`; this module reads the inputs, writes the CSVs and the
thumbnail pages.
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from cytotune._atomic import write_csv_atomic, write_text_atomic
from cytotune.data import DataError
from cytotune.data.images import load_rgb
from cytotune.data.readers import IMAGE_EXTENSIONS, list_images
from cytotune.data.tables import read_csv_frame
from cytotune.training.config import ConfigError, TrainConfig, set_dotted
from cytotune.training.flat_options import FLAT_OPTIONS

THUMBNAIL_PX = 128


def make_config(**options) -> TrainConfig:
    """A TrainConfig from flat options (as ``cytotune.api.build_config``, which sits a layer
    above this one)."""
    values: dict = {}
    for key, value in options.items():
        set_dotted(values, FLAT_OPTIONS.get(key, key), value)
    return TrainConfig.from_dict(values)


# ---- the unlabelled pool -----------------------------------------------------------------------
def _csv_paths(csv_path: Path, option: str) -> list[Path]:
    """The ``path`` column of a CSV, relative paths taken from the CSV's folder; a DataError
    naming ``option`` and the file when the column is missing or a listed file is not there."""
    frame = read_csv_frame(csv_path)
    if "path" not in frame.columns:
        raise DataError(f"{option} {csv_path}: no 'path' column (columns: "
                        f"{', '.join(frame.columns) or 'none'})")
    paths = [Path(os.path.join(csv_path.parent, p)) for p in frame["path"]]
    for row, (value, path) in enumerate(zip(frame["path"], paths), start=2):
        if not value:
            raise DataError(f"{option} {csv_path} row {row}: empty path")
        if not path.is_file():
            raise DataError(f"{option} {csv_path} row {row}: {path} does not exist")
    return paths


def read_pool(source: str | Path) -> list[Path]:
    """The images of a pool, as absolute paths: every image under a folder (flat, or class
    folders, whose names are ignored), or the ``path`` column of a CSV (any label column is
    ignored)."""
    source = Path(source).expanduser().absolute()  # picks CSVs list paths usable from anywhere
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise DataError(f"--data {source}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return paths
    if source.suffix.lower() == ".csv":
        if not source.is_file():
            raise DataError(f"--data {source}: the CSV file does not exist")
        paths = _csv_paths(source, "--data")
        if not paths:
            raise DataError(f"--data {source}: no rows")
        return paths
    raise DataError(f"--data {source}: not a folder of images or a CSV file")


def pool_features(config: TrainConfig, paths: Sequence[Path], batch_size: int = 64
                  ) -> tuple[np.ndarray, list[str], bool]:
    """(features (N, D), the paths of the rows, whether nothing was extracted) of unlabelled
    images, through the steps ``embed`` takes (decoding store, run backbone, feature cache)."""
    import torch

    from cytotune.data import ImageStore, LabelledImages
    from cytotune.training.features import FeatureCache
    from cytotune.training.methods.linear import freeze
    from cytotune.training.progress import observer
    from cytotune.training.runner import _decode, build_run_backbone, resolve_device

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    config.validate()
    device = resolve_device(config.device)
    # one placeholder class: nothing here has a label, and nothing reads one
    pool = LabelledImages(paths=list(paths), labels=np.zeros(len(paths), dtype=np.int64),
                          class_names=["unlabelled"], name="pool")
    backbone = build_run_backbone(config)
    freeze(backbone, device)
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    store = ImageStore(cache_dir / "images" if cache_dir else None, num_workers=config.num_workers)
    progress = observer()
    progress.phase("decoding", len(paths))
    images = _decode(store, pool, np.arange(len(paths)), backbone.preprocessing,
                     config.data.skip_bad_images, "pool")
    progress.phase("features", len(images.paths))
    feats, _, hit = FeatureCache(cache_dir).features(
        backbone, backbone.weights_fingerprint(), images.pixels, images.images_key, device,
        config.precision, images.image_keys, batch_size=batch_size)
    progress.finished()
    with torch.no_grad():
        return feats.float().numpy(), [str(p) for p in images.paths], bool(hit)


def labelled_indices(csv_path: str | Path, pool: Sequence[str]) -> np.ndarray:
    """Rows of ``pool`` listed in an earlier selection's CSV (its ``path`` column); a DataError
    naming the file when it lists an image that is not in the pool."""
    csv_path = Path(csv_path).expanduser()
    where = {os.path.realpath(p): i for i, p in enumerate(pool)}
    rows = []
    for path in _csv_paths(csv_path, "--labelled"):
        i = where.get(os.path.realpath(path))
        if i is None:
            raise DataError(f"--labelled {csv_path}: {path} is not an image of the --data pool")
        rows.append(i)
    return np.unique(np.asarray(rows, dtype=np.int64))


@dataclass
class Picks:
    table: pd.DataFrame  # order, path, cluster, label
    from_cache: bool
    pool_size: int
    already_labelled: int


def choose(features: np.ndarray, paths: Sequence[str], strategy: str, budget: int, seed: int,
           labelled: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The picks table: ``budget`` images in labelling order with their k-means cluster (for
    kmeans and typiclust: the clusters the strategy picked from; empty otherwise) and an empty
    ``label`` column to fill in."""
    from sklearn.preprocessing import normalize

    from cytotune.data import selection

    selection.get_strategy(strategy)  # ValueError listing the strategies
    labelled = np.asarray([] if labelled is None else labelled, dtype=np.int64)
    free = len(paths) - len(labelled)
    if budget > free:
        raise ConfigError(f"--budget {budget} is larger than the pool: {free} images to choose "
                          f"from ({len(paths)} in the pool, {len(labelled)} already labelled)")
    picks = selection.select(strategy, features, budget, seed, labelled=labelled)
    clusters: list = [""] * len(picks)
    if strategy in ("kmeans", "typiclust"):
        n = budget + len(labelled)
        if strategy == "typiclust":
            n = min(n, selection.TYPICLUST_MAX_CLUSTERS, len(paths))
        # the strategies cluster their L2-normalised features: the same input, the same clusters
        of, _ = selection.kmeans_clusters(normalize(np.asarray(features, dtype=np.float64)), n,
                                          seed)
        clusters = of[picks].tolist()
    return pd.DataFrame({"order": np.arange(1, len(picks) + 1),
                         "path": [paths[i] for i in picks], "cluster": clusters,
                         "label": [""] * len(picks)})


# ---- thumbnails --------------------------------------------------------------------------------
def thumbnail(path: str | Path, size: int = THUMBNAIL_PX) -> str:
    """A ``data:`` URI of a PNG thumbnail (at most ``size`` px a side), or "" when unreadable."""
    try:
        image = load_rgb(path)
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except (OSError, ValueError, DataError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = ("body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;"
          "width:140px;vertical-align:top;font-size:11px;word-break:break-all}"
          "img{max-width:128px;max-height:128px;display:block}h2{margin-top:1.5em}")


def figure(path: str, caption: str) -> str:
    """One thumbnail with its caption and file name."""
    uri = thumbnail(path)
    img = f'<img src="{uri}" alt="{html.escape(Path(path).name)}">' if uri else "(unreadable)"
    return (f"<figure>{img}<figcaption>{html.escape(caption)}<br>"
            f"{html.escape(Path(path).name)}</figcaption></figure>")


def page(title: str, sections: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """An HTML page: ``(heading, note, figures)`` sections."""
    body = "".join(f"<h2>{html.escape(h)}</h2><p>{html.escape(note)}</p>{''.join(figs)}"
                   for h, note, figs in sections)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"</body></html>\n")


def write_picks(table: pd.DataFrame, out: str | Path, title: str) -> tuple[Path, Path]:
    """``out`` (the picks CSV) and ``picks.html`` beside it (thumbnails in pick order)."""
    out = Path(out).expanduser()
    figs = [figure(p, f"#{o}" + (f" cluster {c}" if c != "" else ""))
            for o, p, c in zip(table["order"], table["path"], table["cluster"])]
    sheet = page(title, [("in labelling order", "fill in the label column of "
                          f"{out.name}, in this order", figs)])
    write_csv_atomic(table, out)
    html_path = write_text_atomic(out.parent / "picks.html", lambda f: f.write(sheet))
    return out, html_path


# ---- audit -------------------------------------------------------------------------------------
@dataclass
class AuditResult:
    label_issues: pd.DataFrame
    near_duplicates: pd.DataFrame
    exact_duplicates: pd.DataFrame
    outliers: pd.DataFrame
    images: int
    note: str


def audit_tables(features: np.ndarray, labels: Sequence[str], paths: Sequence[str], seed: int,
                 folds: int, threshold: float) -> AuditResult:
    """The four findings as tables with paths (see :mod:`cytotune.analysis.audit`)."""
    from cytotune.analysis import audit

    labels = np.asarray(labels, dtype=object)
    paths = list(paths)
    issues = audit.label_issues(features, labels, seed, folds)
    issues.insert(0, "path", [paths[i] for i in issues["index"]])
    issues.insert(0, "rank", np.arange(1, len(issues) + 1))

    def grouped(groups: list[list[int]]) -> pd.DataFrame:
        rows = [(g, paths[i], labels[i]) for g, members in enumerate(groups, 1) for i in members]
        return pd.DataFrame(rows, columns=["group", "path", "label"])

    far = audit.outliers(features, labels)
    far.insert(0, "path", [paths[i] for i in far["index"]])
    far.insert(0, "rank", np.arange(1, len(far) + 1))
    far.insert(3, "label", [labels[i] for i in far["index"]])
    return AuditResult(label_issues=issues.drop(columns="index"),
                       near_duplicates=grouped(audit.near_duplicates(features, threshold)),
                       exact_duplicates=grouped(audit.exact_duplicates(paths)),
                       outliers=far.drop(columns="index"), images=len(paths),
                       note=issues.attrs.get("note", ""))


AUDIT_FILES = ("label_issues.csv", "near_duplicates.csv", "exact_duplicates.csv", "outliers.csv",
               "audit.html")


def write_audit(result: AuditResult, out_dir: str | Path, top: int, title: str) -> Path:
    """The four CSVs and ``audit.html`` (the first ``top`` of each finding) in ``out_dir``."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    issues, near, exact, far = (result.label_issues, result.near_duplicates,
                                result.exact_duplicates, result.outliers)

    def groups_figs(table: pd.DataFrame) -> list[str]:
        first = table[table["group"] <= table["group"].drop_duplicates().head(top).max()] \
            if len(table) else table
        return [figure(p, f"group {g}: {lab}")
                for g, p, lab in zip(first["group"], first["path"], first["label"])]

    sections = [
        ("probable label errors", f"{len(issues)} flagged by confident learning on out-of-fold "
         f"probabilities; most suspicious first", [
             figure(p, f"#{r} given {g}, suggested {s}")
             for r, p, g, s in zip(issues["rank"], issues["path"], issues["given_label"],
                                   issues["suggested_label"])][:top]),
        ("near-duplicate groups", f"{near['group'].nunique() if len(near) else 0} groups of "
         "images with near-identical features", groups_figs(near)),
        ("exact duplicates", f"{exact['group'].nunique() if len(exact) else 0} groups of "
         "byte-identical files", groups_figs(exact)),
        ("outliers", "farthest from every class centroid first", [
            figure(p, f"#{r} {lab}, nearest class {c}, score {s:.3f}")
            for r, p, lab, c, s in zip(far["rank"], far["path"], far["label"],
                                       far["nearest_class"], far["score"])][:top]),
    ]
    text = page(title, sections)
    for name, table in zip(AUDIT_FILES, (issues, near, exact, far)):
        write_csv_atomic(table, out_dir / name)
    write_text_atomic(out_dir / "audit.html", lambda f: f.write(text))
    return out_dir


__all__ = ["AUDIT_FILES", "AuditResult", "audit_tables", "choose", "labelled_indices",
           "make_config", "pool_features", "read_pool", "thumbnail", "write_audit",
           "write_picks"]
