"""How much work each planned run is, known before any image is decoded.

A sweep's runs differ by orders of magnitude: a probe on cached features takes a second, a LoRA
run at 16 shots most of an hour on a CPU. Counting runs gives a useless ETA (issue 32: "ETA
1 min 44 s" at run 13 of 24, then 26 more minutes), so progress and estimates weight each run by
its planned work: ``steps x batch`` training images for methods that train the backbone (LoRA,
full fine-tuning), images to embed for methods on frozen features (linear probe, few-shot
probes; none when the features are cached already), and the test/validation images every run
passes through the backbone once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from cytotune.experiments.sweep import PlannedRun
from cytotune.training.method_registry import FEATURE_PROBES, TRAINING_FREE
from cytotune.training.progress import step_plan

# A training image-step (forward + backward) costs about three forward passes: the exchange rate
# that puts both kinds of work in one unit (forward-image equivalents) for run weights.
TRAIN_FORWARD_RATIO = 3.0
# Fixed cost of a run in forward-image equivalents (model build, split, head fitting, writing):
# about a second on a 2-core CPU, where a 64 px image's forward pass takes a few milliseconds.
RUN_OVERHEAD_UNITS = 200.0


def is_feature_method(method: str) -> bool:
    """Methods on frozen, cached features: the backbone only embeds images."""
    return method == "linear" or method in FEATURE_PROBES or method in TRAINING_FREE


@dataclass(frozen=True)
class RunWork:
    """The planned work of one run. ``train_images``: steps x batch (0 for feature methods);
    ``embed_images``: images a feature method extracts (0 when cached); ``eval_images``:
    validation + test images a training method passes through the backbone."""

    run_id: str
    backbone: str
    method: str
    image_size: int
    device: str
    train_images: int = 0
    embed_images: int = 0
    eval_images: int = 0
    steps: int = 0
    features_cached: bool = False
    first_of_group: bool = True  # feature runs: builds the backbone (later ones share it)

    @property
    def units(self) -> float:
        """The unit a per-(backbone, method) rate is fitted on: training image-steps for methods
        that train the backbone, images to embed for the others."""
        return float(self.embed_images if is_feature_method(self.method) else self.train_images)

    @property
    def weight(self) -> float:
        """Comparable across methods (forward-image equivalents), for a sweep's ETA when no
        estimate in seconds is at hand."""
        overhead = RUN_OVERHEAD_UNITS if self.first_of_group else RUN_OVERHEAD_UNITS / 10
        return (overhead + TRAIN_FORWARD_RATIO * self.train_images
                + self.embed_images + self.eval_images)


def count_images(source: str, layout: Optional[str],
                 options: Mapping[str, Any]) -> Optional[tuple[int, int]]:
    """(images, classes) of a data set by listing it (no decoding), or None when it cannot be
    read yet (not generated yet, a missing environment variable, an unreadable table)."""
    from cytotune.data.layouts import load_dataset

    if not source or not Path(source).expanduser().exists():
        return None
    try:
        data = load_dataset(source, layout, **dict(options or {}))
        return len(data.paths), max(1, int(data.num_classes))
    except Exception:  # noqa: BLE001 - unknown size: the caller falls back to a guess
        return None


def _device(config) -> str:
    if config.device and config.device != "auto":
        return str(config.device).split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _image_size(config) -> int:
    if config.model.image_size:
        return int(config.model.image_size)
    try:
        from cytotune.models.catalog import get_card

        return int(get_card(config.model.name).preprocessing.image_size)
    except Exception:  # noqa: BLE001 - a card not registered here: the usual size
        return 224


def dataset_sizes(sweep) -> tuple[dict[str, int], dict[str, int]]:
    """(images, classes) per data source of ``sweep``'s data sets, by listing them; a data set
    the sweep generates and that is not drawn yet counts what it will hold."""
    from cytotune.data import DEFAULT_CLASSES

    sizes: dict[str, int] = {}
    classes: dict[str, int] = {}
    for spec in sweep.datasets.values():
        source = spec.resolved_source
        found = count_images(source, spec.layout, spec.options)
        if found is None and spec.generate is not None:
            n_classes = len(spec.generate.classes or DEFAULT_CLASSES)
            found = (spec.generate.n_per_class * n_classes, n_classes)
        if found is not None:
            sizes[source], classes[source] = found
    return sizes, classes


def plan_work(runs: Sequence[PlannedRun], sizes: Mapping[str, int],
              cached: Iterable[tuple[str, str, int]] = (),
              num_classes: Mapping[str, int] = {}) -> list[RunWork]:
    """The planned work of ``runs`` in order. ``sizes``: images per data source (a source not
    in it counts 100); ``cached``: (source, backbone, image size) whose features are on disk
    already. The first feature run of a (source, backbone, image size) embeds its validation
    and test images and its training sample; later ones only training images not seen yet."""
    seen: dict[tuple[str, str, int], int] = {key: -1 for key in cached}  # -1: all cached
    grouped: set[tuple[str, str, int]] = set()  # feature runs share a backbone per key
    out = []
    for run in runs:
        c = run.config
        n = int(sizes.get(c.data.source, 100))
        held_out = int(round(n * (c.data.val_fraction + c.data.test_fraction)))
        pool = max(1, n - held_out)
        classes = num_classes.get(c.data.source, 4)
        if c.budget is not None:
            num_train = min(pool, c.budget)
        elif run.shots is not None:
            num_train = min(pool, run.shots * classes)
        elif run.fraction is not None:
            num_train = max(1, int(round(pool * run.fraction)))
        else:
            num_train = pool
        size, device = _image_size(c), _device(c)
        if is_feature_method(run.method):
            key = (c.data.source, run.backbone, size)
            before = seen.get(key)
            if before == -1:
                embed = 0
            elif before is None:
                embed, seen[key] = held_out + num_train, num_train
            else:
                embed = max(0, min(num_train, pool - before))
                seen[key] = before + embed
            out.append(RunWork(run.run_id, run.backbone, run.method, size, device,
                               embed_images=embed, features_cached=embed == 0,
                               first_of_group=key not in grouped))
            grouped.add(key)
        else:
            steps, _ = step_plan(c, num_train, classes)
            batch = max(1, min(c.optim.batch_size, num_train))
            out.append(RunWork(run.run_id, run.backbone, run.method, size, device,
                               train_images=steps * batch, eval_images=held_out, steps=steps))
    return out


def cached_features(store_records, runs: Sequence[PlannedRun]) -> set[tuple[str, str, int]]:
    """(source, backbone, image size) whose features a past feature run of the store extracted
    into a cache folder that still holds features and that ``runs`` use too."""
    out: set[tuple[str, str, int]] = set()
    if store_records is None or len(store_records) == 0 or "config_json" not in store_records:
        return out
    wanted = {(r.config.data.source, r.backbone, _image_size(r.config), r.config.cache_dir)
              for r in runs if is_feature_method(r.method)}
    for method, text in zip(store_records["method"], store_records["config_json"]):
        if not is_feature_method(method):
            continue
        config = json.loads(text)
        model = config.get("model") or {}
        cache = config.get("cache_dir")
        for source, backbone, size, cache_dir in wanted:
            if ((config.get("data") or {}).get("source") == source
                    and model.get("name") == backbone and cache and cache == cache_dir
                    and (model.get("image_size") or size) == size
                    and any((Path(cache).expanduser() / "features").glob("*"))):
                out.add((source, backbone, size))
    return out
