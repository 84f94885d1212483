"""How a trained run degrades under stain, focus, compression, noise, scale and brightness shifts.

``cytotune robustness RUN``: each test image is decoded once, at the model's input size, as
training decoded it; every perturbation of :mod:`cytotune.data.perturb` is applied at each
severity to those uint8 pixels (fixed per image id, kind and severity, so two runs see exactly the
same perturbed images and can be compared image by image) and the model is run on them. Per kind
and severity: balanced accuracy, accuracy and the expected calibration error (15-bin top-label
ECE, :func:`cytotune.training.metrics.classification_metrics`, the run's own metric code), the drop
from clean (clean minus perturbed: positive is worse) and a paired bootstrap interval of the drop
over the test images (:func:`cytotune.analysis.paired_intervals`: the same images clean and
perturbed). The clean row is computed the way the run computed its test metrics, so it
reproduces metrics.json's ``test`` block.

The images are the run's own test split (re-derived from its config: the same data source,
layout, split seed and fractions; in-domain images only, as metrics.json's ``test``), or any
labelled data set read with the run's layout whose classes are all among the run's.
"""
from __future__ import annotations

import json

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from cytotune.analysis import BootstrapSpec, Outcome, paired_intervals
from cytotune.inference.run import RunFiles, read_run
from cytotune.models import Preprocessing
from cytotune.training.metrics import classification_metrics

PathLike = Union[str, Path]
log = logging.getLogger("cytotune")

CLEAN = "clean"  # the ``kind`` of the unperturbed row
DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)
METRICS = ("balanced_accuracy", "accuracy", "ece")
INTERVAL_METRICS = ("balanced_accuracy", "accuracy")  # count metrics: a paired image bootstrap
# the CSV's columns, in order
COLUMNS = ("kind", "severity", "description", "n", *METRICS,
           *(f"{m}_{part}" for m in INTERVAL_METRICS for part in ("drop", "drop_low", "drop_high")),
           "ece_increase")


class RobustnessError(ValueError):
    """A robustness evaluation that cannot run as asked (bad kind, severity, data or run)."""


@dataclass
class EvalImages:
    """The labelled images a robustness evaluation runs on, decoded once at the model's size."""

    pixels: torch.Tensor  # uint8 (N, 3, S, S)
    labels: np.ndarray  # int64 (N,): indices into the run's class names
    image_ids: list[str]  # stable per image (path relative to the data root): seeds perturbations
    source: str  # what they are, for the outputs ("test split of ...", "--data ...")
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    image_keys: list[str] = field(default_factory=list)  # content keys (the feature cache's)


@dataclass
class RobustnessResult:
    """One run's robustness table and what it was computed on."""

    table: pd.DataFrame  # one row per (kind, severity), the clean row first; COLUMNS
    run_dir: Path
    model: str
    method: str
    class_names: list[str]
    source: str
    images: int
    spec: BootstrapSpec
    run_test: dict[str, float]  # metrics.json's test values of METRICS, for comparison
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def clean(self) -> dict[str, Any]:
        return self.table.iloc[0].to_dict()

    def summary(self) -> dict[str, Any]:
        """What robustness.json records beside the table."""
        return {"tool": "cytotune robustness", "run_dir": str(self.run_dir), "model": self.model,
                "method": self.method, "class_names": list(self.class_names),
                "images": self.images, "source": self.source,
                "interval": self.spec.describe(), "run_test_metrics": dict(self.run_test),
                "skipped_images": [[str(p), r] for p, r in self.skipped]}


# ---- options -------------------------------------------------------------------------------
def parse_kinds(text: Optional[Union[str, Sequence[str]]]) -> tuple[str, ...]:
    """``"hed,blur"`` (or a list) -> checked perturbation names; None or "all": every one."""
    from cytotune.data.perturb import PERTURBATIONS

    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return tuple(PERTURBATIONS)
    names = [k.strip() for k in (text.split(",") if isinstance(text, str) else text)]
    names = [k for k in names if k]
    if not names:
        raise RobustnessError(f"--kinds names no perturbation; known: {', '.join(PERTURBATIONS)}")
    unknown = [k for k in names if k not in PERTURBATIONS]
    if unknown:
        raise RobustnessError(f"--kinds: unknown perturbation {unknown[0]!r}; known: "
                              f"{', '.join(PERTURBATIONS)}")
    return tuple(dict.fromkeys(names))


def parse_severities(text: Optional[Union[str, Sequence[int]]]) -> tuple[int, ...]:
    """``"1-5"``, ``"1,3,5"`` or ``"0-2,4"`` (or a list of ints) -> sorted, checked severities."""
    from cytotune.data.perturb import SEVERITIES

    if text is None:
        return DEFAULT_SEVERITIES
    values: list[int] = []
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        for part in parts:
            if isinstance(part, str) and "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                values.extend(range(int(low), int(high) + 1))
            elif not (isinstance(part, str) and not part.strip()):
                values.append(int(part))
    except (TypeError, ValueError):
        raise RobustnessError(f"--severities takes whole numbers and ranges such as 1-5 or "
                              f"1,3,5, got {text!r}") from None
    wrong = [v for v in values if v not in SEVERITIES]
    if wrong or not values:
        raise RobustnessError(f"--severities must lie in {min(SEVERITIES)}-{max(SEVERITIES)}, "
                              f"got {text!r}")
    return tuple(sorted(set(values)))


# ---- the images ----------------------------------------------------------------------------
def _image_ids(paths: Sequence[Path], root: Optional[Path]) -> list[str]:
    """Paths relative to the data root (stable when the data set moves), else as given."""
    ids = []
    for path in paths:
        try:
            ids.append(Path(path).relative_to(root).as_posix() if root else str(path))
        except ValueError:
            ids.append(str(path))
    return ids


def _decode(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool, num_workers: int):
    from cytotune.data import ImageStore

    store = ImageStore(None, num_workers=num_workers)  # no disk cache: decoded once, here
    return store.get(list(paths), resize_size=pre.effective_resize, crop_size=pre.image_size,
                     interpolation=pre.interpolation, skip_bad=skip_bad)


def run_test_images(run: RunFiles, pre: Preprocessing, num_workers: int = 2) -> EvalImages:
    """The run's own in-domain test images, chosen again as training chose them (config.yaml's
    data source, layout, split seed and fractions), and checked against metrics.json's
    test-data fingerprint (a warning when the data changed since)."""
    from cytotune.training.runner import prepare_run_data, test_data_fingerprint, wanted_splits

    config = run.config
    source = config.data.source
    if not source or not Path(source).expanduser().exists():
        raise RobustnessError(f"{run.path / 'config.yaml'}: the run's data {source!r} is not "
                              f"here; pass --data DIR with labelled images of its classes")
    prepared = prepare_run_data(config)
    data = prepared.data
    if data.multi_label:
        raise RobustnessError(f"{run.path}: a multi-label run; robustness evaluates single-label "
                              f"runs only")
    if list(data.class_names) != run.class_names:
        raise RobustnessError(f"{source}: its classes {data.class_names} are no longer the run's "
                              f"{run.class_names} (metrics.json); pass --data DIR")
    rows = wanted_splits(config, prepared.indices)["test"]
    decoded = _decode([data.paths[i] for i in rows], pre, config.data.skip_bad_images,
                      num_workers)
    kept = np.asarray(decoded.kept, dtype=np.int64)
    if not len(kept):
        raise RobustnessError(f"{source}: no readable test images")
    rows = rows[kept]
    expected = (run.metrics.get("fingerprints") or {}).get("test_data")
    if expected and run.stain is None:  # a stain run's key covers its normalised pixels
        check = _Fingerprinted(decoded.key, torch.as_tensor(data.labels[rows]))
        found = test_data_fingerprint(data, check)
        if found != expected:
            log.warning("the test images of %s differ from those the run was tested on "
                        "(test-data fingerprint %s, metrics.json %s): the data, its labels or the "
                        "decoder changed since; clean metrics will not match the run's", source,
                        found, expected)
    in_domain = ~np.isin(rows, prepared.indices.test_ood)
    paths = [data.paths[i] for i in rows[in_domain]]
    keys = [decoded.image_keys[i] for i in np.flatnonzero(in_domain)]
    return EvalImages(pixels=decoded.pixels[torch.from_numpy(np.flatnonzero(in_domain))],
                      image_keys=keys,
                      labels=np.asarray(data.labels[rows[in_domain]], dtype=np.int64),
                      image_ids=_image_ids(paths, data.root or Path(source).expanduser()),
                      source=f"the run's test split of {source}"
                             + (" (in-domain images)" if len(prepared.indices.test_ood) else ""),
                      skipped=list(decoded.bad))


@dataclass
class _Fingerprinted:
    """What :func:`test_data_fingerprint` reads of a split: its images' key and labels."""

    images_key: str
    labels: torch.Tensor


def data_images(run: RunFiles, data_dir: PathLike, pre: Preprocessing,
                layout: Optional[str] = None,
                num_workers: int = 2) -> EvalImages:
    """Every image of ``data_dir`` (read with ``layout``, default the run's), its labels mapped
    to the run's classes by name; a class the run does not know is refused."""
    from cytotune.data import load_dataset

    config = run.config
    source = Path(data_dir).expanduser()
    layout = layout if layout is not None else config.data.layout
    options = config.data.options if layout == config.data.layout else {}
    data = load_dataset(source, layout, **options)
    if data.multi_label:
        raise RobustnessError(f"--data {source}: multi-label data; robustness evaluates "
                              f"single-label runs only")
    unknown = [c for c in data.class_names if c not in run.class_names]
    if unknown:
        raise RobustnessError(f"--data {source}: class {unknown[0]!r} is not one of the run's "
                              f"classes {run.class_names}; the label spaces must match")
    mapping = np.array([run.class_names.index(c) for c in data.class_names], dtype=np.int64)
    decoded = _decode(data.paths, pre, config.data.skip_bad_images, num_workers)
    kept = np.asarray(decoded.kept, dtype=np.int64)
    if not len(kept):
        raise RobustnessError(f"--data {source}: no readable images")
    paths = [data.paths[i] for i in kept]
    return EvalImages(pixels=decoded.pixels, labels=mapping[data.labels[kept]],
                      image_keys=list(decoded.image_keys),
                      image_ids=_image_ids(paths, data.root or source),
                      source=f"--data {source}", skipped=list(decoded.bad))


# ---- the evaluation ------------------------------------------------------------------------
def perturbed_probabilities(model, images: EvalImages, conditions: Sequence[tuple[str, int]],
                            batch_size: int = 64,
                            on_progress: Optional[Callable[[int], None]] = None,
                            cache_dir: Optional[PathLike] = None
                            ) -> dict[tuple[str, int], np.ndarray]:
    """Probabilities (N, C) per (kind, severity), clean under (CLEAN, 0). Batches of images are
    perturbed one at a time, so memory holds one perturbed batch, never a copy of the set;
    ``on_progress(k)`` after each batch and condition with the images it held.

    The perturbation acts on the acquired image, before the run's stain normalisation (when it
    has one), as a stain shift at another lab would: normalisation may undo part of it.
    ``cache_dir``: the backbone features of the perturbed images go to the feature cache, keyed
    by the backbone's weights, the image's content, the perturbation and the normaliser, so the
    runs of a sweep on one frozen backbone (linear, prototype, ...) extract them once."""
    from cytotune.data.perturb import perturb
    from cytotune.training.features import FeatureCache, fp32_head

    n = int(images.pixels.shape[0])
    everything = [(CLEAN, 0), *conditions]
    out = {c: np.empty((n, model.num_classes), dtype=np.float32) for c in everything}
    stain = getattr(model, "stain", None)
    cache = (FeatureCache(Path(cache_dir)) if cache_dir is not None
             and len(images.image_keys) == n else None)
    fingerprint = model.backbone.weights_fingerprint() if cache is not None else ""
    stain_tag = json.dumps(stain.to_json(), sort_keys=True) if stain is not None else "raw"
    for start in range(0, n, batch_size):
        pixels = images.pixels[start:start + batch_size]
        ids = images.image_ids[start:start + batch_size]
        for kind, severity in everything:
            keys = [f"{key}|{kind}|{severity}|{stain_tag}"
                    for key in images.image_keys[start:start + batch_size]] if cache else []
            feats = (cache.held(model.backbone, fingerprint, model.device, model.precision, keys)
                     if cache is not None else None)
            if feats is None:  # perturb (and normalise) only what the cache does not hold
                batch = pixels if kind == CLEAN else perturb(pixels, kind, severity, ids)
                if stain is not None:
                    batch = torch.stack(model.normalise_stain(list(batch)))
            if cache is None:
                probs = model.predict_pixels(batch, batch_size=batch_size).numpy()
            else:
                if feats is None:
                    feats, _, _ = cache.features(model.backbone, fingerprint, batch,
                                                 "robustness", model.device, model.precision,
                                                 keys, batch_size)
                with torch.no_grad():
                    logits = fp32_head(model.head, feats.to(model.device))
                probs = model.task.probabilities(logits).cpu().numpy()
            if not np.isfinite(probs).all():
                raise RobustnessError(f"the model gave non-finite probabilities under {kind} "
                                      f"severity {severity}")
            out[(kind, severity)][start:start + len(ids)] = probs
            if on_progress is not None:
                on_progress(len(ids))
    return out


def robustness_table(labels: np.ndarray, probs: dict[tuple[str, int], np.ndarray],
                     class_names: Sequence[str], image_ids: Sequence[str],
                     spec: BootstrapSpec = BootstrapSpec(),
                     describe: Optional[Callable[[str, int], str]] = None) -> pd.DataFrame:
    """The table of :data:`COLUMNS` from probabilities per (kind, severity) (clean under
    (CLEAN, 0)): metrics by the run's own metric code, drops clean minus perturbed, and their
    paired bootstrap intervals over the images (stream keyed by kind and severity)."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = tuple(image_ids)
    clean_probs = probs[(CLEAN, 0)]
    clean = classification_metrics(labels, clean_probs, list(class_names))
    clean_outcome = Outcome(labels, clean_probs.argmax(1), len(class_names), ids)
    rows = []
    for (kind, severity), p in probs.items():
        m = clean if kind == CLEAN else classification_metrics(labels, p, list(class_names))
        outcome = Outcome(labels, p.argmax(1), len(class_names), ids)
        drops = paired_intervals([clean_outcome], [outcome], INTERVAL_METRICS, spec,
                                 key=f"robustness/{kind}/{severity}")
        row: dict[str, Any] = {
            "kind": kind, "severity": severity,
            "description": "unperturbed" if kind == CLEAN else
            (describe(kind, severity) if describe else ""), "n": int(len(labels)),
            **{name: float(m[name]) for name in METRICS}}
        for name in INTERVAL_METRICS:
            row[f"{name}_drop"] = drops[name].estimate
            row[f"{name}_drop_low"] = drops[name].low
            row[f"{name}_drop_high"] = drops[name].high
        row["ece_increase"] = float(m["ece"]) - float(clean["ece"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def evaluate_robustness(run_dir: PathLike, data: Optional[PathLike] = None,
                        kinds: Optional[Union[str, Sequence[str]]] = None,
                        severities: Optional[Union[str, Sequence[int]]] = None,
                        spec: BootstrapSpec = BootstrapSpec(), layout: Optional[str] = None,
                        device: str = "cpu", batch_size: int = 64, num_workers: int = 2,
                        precision: Optional[str] = None, model=None,
                        on_progress: Optional[Callable[[int, int], None]] = None,
                        cache_dir: Optional[PathLike] = None) -> RobustnessResult:
    """Evaluate the run of ``run_dir`` under every kind x severity (default: all kinds, 1-5) on
    its own test split or on ``data``. ``model``: the run already loaded. ``on_progress(done,
    total)`` counts images run through the model."""
    from cytotune.data.perturb import severity_description
    from cytotune.inference.model import load_run

    kinds, levels = parse_kinds(kinds), parse_severities(severities)
    if batch_size < 1:
        raise RobustnessError(f"--batch-size must be >= 1, got {batch_size}")
    run = read_run(run_dir)  # a bad run directory fails before any image is read
    if run.metrics.get("task") == "multi_label":
        raise RobustnessError(f"{run.path}: a multi-label run; robustness evaluates single-label "
                              f"runs only")
    if model is None:
        model = load_run(run, device=device, precision=precision)
    pre = model.preprocessing
    images = (run_test_images(run, pre, num_workers) if data is None
              else data_images(run, data, pre, layout, num_workers))
    conditions = [(k, s) for k in kinds for s in levels]
    total = len(images.image_ids) * (1 + len(conditions))
    done = [0]

    def advance(k: int) -> None:
        done[0] += k
        if on_progress is not None:
            on_progress(done[0], total)

    probs = perturbed_probabilities(model, images, conditions, batch_size, advance, cache_dir)
    table = robustness_table(images.labels, probs, run.class_names, images.image_ids, spec,
                             severity_description)
    test = run.metrics.get("test") or {}
    return RobustnessResult(table=table, run_dir=run.path, model=run.model_name,
                            method=run.config.method, class_names=list(run.class_names),
                            source=images.source, images=len(images.image_ids), spec=spec,
                            run_test={m: float(test[m]) for m in METRICS if m in test},
                            skipped=images.skipped)


def robustness_rows(run_dir: PathLike, kinds: Optional[Union[str, Sequence[str]]] = None,
                    severities: Optional[Union[str, Sequence[int]]] = None,
                    **options: Any) -> list[dict[str, Any]]:
    """For a sweep: one finished run's table as plain dicts (JSON-safe values), each with the
    run directory; ``options`` as :func:`evaluate_robustness`'s."""
    result = evaluate_robustness(run_dir, kinds=kinds, severities=severities, **options)
    rows = []
    for row in result.table.to_dict("records"):
        rows.append({"run_dir": str(result.run_dir),
                     **{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}})
    return rows


__all__ = ["CLEAN", "COLUMNS", "DEFAULT_SEVERITIES", "EvalImages", "METRICS", "RobustnessError",
           "RobustnessResult", "data_images", "evaluate_robustness", "parse_kinds",
           "parse_severities", "perturbed_probabilities", "robustness_rows", "robustness_table",
           "run_test_images"]
