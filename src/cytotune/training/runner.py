"""One training run end to end: data -> split -> sample -> decode -> backbone -> method -> results.

Each stage hands a plain value to the next (a LabelledImages, index arrays, uint8 tensors), so
sweeps, benchmarks and ``predict`` can reuse any stage alone.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from cytotune._version import __version__
from cytotune.adapters import count_lora_parameters, save_adapter
from cytotune.data import (DataError, ImageStore, LabelledImages, few_shot, few_shot_validation,
                           fraction, load_dataset, make_splits)
from cytotune.models import build_backbone, get_card
from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache
from cytotune.training.methods import METHODS, MethodContext, SplitTensors
from cytotune.training.metrics import (classification_metrics, coarse_class_map,
                                       coarse_level_metrics)
from cytotune.training.rundir import RunWriter

log = logging.getLogger("cytotune")


@dataclass
class RunResult:
    """What a run produced; also written to ``out_dir`` when the config names one."""

    config: TrainConfig
    class_names: list[str]
    metrics: dict[str, Any]  # {"val": {...}, "test": {...}}
    predictions: pd.DataFrame  # one row per test image
    trainable_parameters: dict[str, int]
    timings: dict[str, float]
    history: list[dict] = field(default_factory=list)
    out_dir: Optional[Path] = None
    memory: dict[str, Any] = field(default_factory=dict)  # peak memory, see peak_memory()

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test"]["accuracy"])

    def summary(self) -> str:
        t = self.metrics["test"]
        return (f"{self.config.model.name} {self.config.method} "
                f"shots={self.config.shots if self.config.shots is not None else 'all'} "
                f"seed={self.config.seed}: test accuracy {t['accuracy']:.4f}, "
                f"balanced {t['balanced_accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The run's peak memory and what was measured: on CUDA the peak of tensors allocated on the
    device since the run started (``torch.cuda.max_memory_allocated``), on CPU the peak resident
    set size of the whole process since it started (``resource.getrusage``; an upper bound for
    one run when a process runs several)."""
    if device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "kind": "cuda_max_memory_allocated", "device": str(device)}
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS
    return {"peak_bytes": int(rss if sys.platform == "darwin" else rss * 1024),
            "kind": "process_peak_rss", "device": "cpu"}


def select_indices(data: LabelledImages, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test indices of a run: the split, then few-shot or fraction sampling.

    The split uses ``data.split_seed`` (same test set for every run seed); sampling uses the run
    seed. Few-shot validation takes min(k, 4) images per class, as the reference study does.
    """
    splits = make_splits(data, seed=config.data.split_seed, val_fraction=config.data.val_fraction,
                         test_fraction=config.data.test_fraction)
    train, val = splits.train, splits.val
    if config.shots is not None:
        train = few_shot(data.labels, train, config.shots, config.seed, data.class_names)
        val = few_shot_validation(data.labels, val, config.shots, config.seed, data.class_names)
    elif config.fraction is not None:
        train = fraction(data.labels, train, config.fraction, config.seed)
    return train, val, splits.test


def _decode(store: ImageStore, data: LabelledImages, indices: np.ndarray, pre, skip_bad: bool,
            split: str) -> SplitTensors:
    paths = [data.paths[i] for i in indices]
    decoded = store.get(paths, resize_size=pre.effective_resize, crop_size=pre.image_size,
                        interpolation=pre.interpolation, skip_bad=skip_bad)
    for path, reason in decoded.bad:
        log.warning("skipped unreadable %s image %s: %s", split, path, reason)
    kept = np.asarray(decoded.kept, dtype=np.int64)
    if len(kept) == 0:
        raise DataError(f"no readable images in the {split} split")
    return SplitTensors(pixels=torch.as_tensor(np.asarray(decoded.pixels)),
                        labels=torch.as_tensor(data.labels[indices][kept]),
                        paths=[paths[i] for i in kept], images_key=decoded.key,
                        rows=np.asarray(indices, dtype=np.int64)[kept])


def card_for(config: TrainConfig):
    """The model card of a run, with the config's input-size override applied."""
    card = get_card(config.model.name)
    if config.model.image_size:
        pre = card.preprocessing
        ratio = pre.effective_resize / pre.image_size
        size = int(config.model.image_size)
        card = card.with_overrides(preprocessing=dataclasses.replace(
            pre, image_size=size, resize_size=round(size * ratio)))
    return card


def build_run_backbone(config: TrainConfig):
    """The backbone a run starts from, built exactly as training builds it (so a saved run can be
    rebuilt for prediction): a random-init backbone (pretrained=False) is seeded by the run seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_backbone(card_for(config), weights=config.model.weights,
                              pretrained=config.model.pretrained)


def run_training(config: TrainConfig) -> RunResult:
    """Train and evaluate one configuration; write its run directory if ``config.out`` is set."""
    config.validate()
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    writer = RunWriter(config.out, overwrite=config.overwrite) if config.out else None
    if writer is not None:
        writer.attach_log(log)
    try:
        result, backbone, tensors = _run(config)
        if writer is not None:
            _write_run(writer, result, backbone, tensors)
            result.out_dir = writer.commit()
            log.info("run written to %s", result.out_dir)
        return result
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _run(config: TrainConfig) -> tuple[RunResult, torch.nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """The run itself; also returns the trained backbone and the tensors to save."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    reset_peak_memory(device)
    data = load_dataset(config.data.source, config.data.layout, **config.data.options)
    train_idx, val_idx, test_idx = select_indices(data, config)
    log.info("data %s: %d classes, %d train / %d val / %d test images", data.name,
             data.num_classes, len(train_idx), len(val_idx), len(test_idx))

    backbone = build_run_backbone(config)
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    store = ImageStore(cache_dir / "images" if cache_dir else None, num_workers=config.num_workers)
    t0 = time.perf_counter()
    pre = backbone.preprocessing
    splits = {name: _decode(store, data, idx, pre, config.data.skip_bad_images, name)
              for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    decode_s = time.perf_counter() - t0
    steps = config.optim.resolve_steps(len(splits["train"].labels), config.shots)

    torch.manual_seed(config.seed)
    ctx = MethodContext(config=config, backbone=backbone, train=splits["train"], val=splits["val"],
                        test=splits["test"], class_names=list(data.class_names), device=device,
                        feature_cache=FeatureCache(cache_dir), steps=steps)
    outcome = METHODS[config.method](ctx)

    metrics = {"val": classification_metrics(outcome.val.labels.numpy(), outcome.val.probs.numpy(),
                                             data.class_names),
               "test": classification_metrics(outcome.test.labels.numpy(),
                                              outcome.test.probs.numpy(), data.class_names),
               "best_step": outcome.history.best_step, "steps": outcome.history.steps}
    probs = outcome.test.probs.numpy()
    test_rows = splits["test"].rows
    for level, (level_labels, level_names) in data.label_levels.items():
        # accuracy higher up a class tree (HiCervix levels 1-2), from the fine predictions; the
        # tree (each fine class's parent) is label metadata, read off the whole data set
        mapping = coarse_class_map(data.labels, level_labels, data.num_classes)
        metrics.setdefault("test_levels", {})[level] = coarse_level_metrics(
            level_labels[test_rows], probs, mapping, level_names)
    predictions = pd.DataFrame({
        "path": [str(p) for p in splits["test"].paths],
        "label": [data.class_names[i] for i in outcome.test.labels.tolist()],
        "predicted": [data.class_names[i] for i in probs.argmax(1)],
    })
    for c, name in enumerate(data.class_names):
        predictions[f"prob_{name}"] = probs[:, c]
    timings = {"decode_s": decode_s, **outcome.timings, "total_s": time.perf_counter() - started}
    result = RunResult(config=config, class_names=list(data.class_names), metrics=metrics,
                       predictions=predictions, trainable_parameters=outcome.trainable_parameters,
                       timings=timings, history=outcome.history.evaluations,
                       memory=peak_memory(device))
    log.info(result.summary())
    return result, backbone, outcome.tensors_to_save


def _write_run(writer: RunWriter, result: RunResult, backbone: torch.nn.Module,
               tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    config = result.config
    writer.write_text("config.yaml", config.to_yaml())
    for stem, named in tensors.items():
        save_file({k: v.contiguous() for k, v in named.items()}, str(writer.path(f"{stem}.safetensors")),
                  metadata={"model": config.model.name, "classes": "\n".join(result.class_names)})
    if count_lora_parameters(backbone) > 0:
        # rank, alpha and targets are recorded by save_adapter itself, from the layers
        save_adapter(writer.path("adapter.safetensors"), backbone.model, {"model": config.model.name})
    result.predictions.to_csv(writer.path("predictions.csv"), index=False)
    writer.write_json("metrics.json", {
        **result.metrics,
        "class_names": result.class_names,
        "trainable_parameters": result.trainable_parameters,
        "timings": result.timings,
        "memory": result.memory,
        "history": result.history,
        "environment": {"cytotune": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "device": config.device},
    })
