"""One training run end to end: data -> split -> sample -> decode -> backbone -> method -> results.

Each stage hands a plain value to the next (a LabelledImages, index arrays, uint8 tensors), so
sweeps, benchmarks and ``predict`` can reuse any stage alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
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
from cytotune.data import (DataError, ImageStore, LabelledImages, domain_pools, few_shot,
                           few_shot_multilabel, few_shot_validation, fraction, load_dataset,
                           make_splits)
from cytotune.data.prompts import class_prompts
from cytotune.data.sampling import FEW_SHOT_VALIDATION_MAX
from cytotune.models import build_backbone, get_card
from cytotune.models.text import build_text_encoder
from cytotune.training.budget import budget_shots, choose_budget
from cytotune.training.augment import note_ignored_augmentation
from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache, resolve_precision
from cytotune.training.method_registry import FEATURE_PROBES
from cytotune.training.methods import METHODS, TRAINING_FREE, MethodContext, SplitTensors
from cytotune.training.methods.base import needs_text_encoder
from cytotune.training.metrics import coarse_class_map, coarse_level_metrics
from cytotune.training.progress import observer, step_plan
from cytotune.training.rundir import RunWriter
from cytotune.training.stain_run import (run_image_store, stain_record, warn_unnormalised,
                                         write_stain_file)
from cytotune.training.task import Task, task_for

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
        ood = self.metrics.get("test_ood")
        c = self.config
        sample = (f"budget={c.budget} ({c.sampling})" if c.budget is not None else
                  f"shots={c.shots if c.shots is not None else 'all'}")
        return (f"{c.model.name} {c.method} {sample} "
                f"seed={self.config.seed}: test accuracy {t['accuracy']:.4f}, "
                f"balanced {t['balanced_accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}, "
                f"AUROC {t['auroc']:.4f}"
                + (f"; out of domain: accuracy {ood['accuracy']:.4f}, AUROC {ood['auroc']:.4f}"
                   if ood else ""))


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


@dataclass
class RunIndices:
    """Indices into the data set of a run's splits; ``test_ood`` holds the images of the test
    domains (empty without a domain split), which never reach training or validation."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_ood: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def select_indices(data: LabelledImages, config: TrainConfig) -> RunIndices:
    """Train / val / test (and out-of-domain test) indices: domains, split, then sampling.

    With train/test domains, only the training domains' images are split (so in-domain test is
    their held-out part) and the test domains' images are all out-of-domain test. The split uses
    ``data.split_seed`` (same test set for every run seed); sampling uses the run seed. Few-shot
    validation takes min(k, 4) images per class (per label for multi-label data, where k shots
    means k positive images per label), as the reference study does. Multi-label splits and
    fractions are stratified by each image's rarest label.
    """
    pools = domain_pools(data, config.data.train_domains, config.data.test_domains)
    view = data.stratification_view()
    pool = pools.in_domain if pools is not None else np.arange(len(data), dtype=np.int64)
    splits = make_splits(view.subset(pool) if pools is not None else view,
                         seed=config.data.split_seed, val_fraction=config.data.val_fraction,
                         test_fraction=config.data.test_fraction)
    train, val, test = pool[splits.train], pool[splits.val], pool[splits.test]
    if config.budget is not None:  # the whole training split is the pool the budget picks from
        if data.targets is not None:
            raise DataError(f"{data.name}: --budget picks single-label training images; "
                            f"multi-label data needs --shots or --fraction")
        val = few_shot_validation(data.labels, val, budget_shots(config.budget, data.num_classes),
                                  config.seed, data.class_names)
    elif config.shots is not None:
        if data.targets is not None:
            train = few_shot_multilabel(data.targets, train, config.shots, config.seed,
                                        data.class_names)
            val = few_shot_multilabel(data.targets, val, min(config.shots, FEW_SHOT_VALIDATION_MAX),
                                      config.seed, data.class_names, strict=False)
        else:
            train = few_shot(data.labels, train, config.shots, config.seed, data.class_names)
            val = few_shot_validation(data.labels, val, config.shots, config.seed, data.class_names)
    elif config.fraction is not None:
        train = fraction(view.labels, train, config.fraction, config.seed)
    if pools is not None and len(test) == 0:
        raise DataError(f"{data.name}: no in-domain test images (test_fraction="
                        f"{config.data.test_fraction}); in- and out-of-domain results are "
                        f"reported side by side, so keep test_fraction > 0")
    ood = pools.out_of_domain if pools is not None else np.empty(0, dtype=np.int64)
    return RunIndices(train=train, val=val, test=test, test_ood=ood)


def _targets(data: LabelledImages, indices: np.ndarray) -> torch.Tensor:
    """What the loss compares with: class indices, or float 0/1 rows of multi-label data."""
    if data.targets is not None:
        return torch.as_tensor(data.targets[indices], dtype=torch.float32)
    return torch.as_tensor(data.labels[indices])


def _decode(store: ImageStore, data: LabelledImages, indices: np.ndarray, pre, skip_bad: bool,
            split: str, unnormalised: Optional[list[Path]] = None) -> SplitTensors:
    """Decode one split through ``store``. Images its stain normalisation could not be applied
    to are added to ``unnormalised`` (for one warning per run), or warned about here when no
    list is given."""
    paths = [data.paths[i] for i in indices]
    decoded = store.get(paths, resize_size=pre.effective_resize, crop_size=pre.image_size,
                        interpolation=pre.interpolation, skip_bad=skip_bad,
                        progress=observer().advance,  # image by image: 50k take minutes
                        reused=observer().reused)
    for path, reason in decoded.bad:
        log.warning("skipped unreadable %s image %s: %s", split, path, reason)
    if unnormalised is not None:
        unnormalised.extend(decoded.unnormalised)
    else:
        warn_unnormalised(store.transform, decoded.unnormalised, len(decoded))
    kept = np.asarray(decoded.kept, dtype=np.int64)
    if len(kept) == 0:
        raise DataError(f"no readable images in the {split} split")
    return SplitTensors(pixels=torch.as_tensor(np.asarray(decoded.pixels)),
                        labels=_targets(data, np.asarray(indices, dtype=np.int64)[kept]),
                        paths=[paths[i] for i in kept], images_key=decoded.key,
                        rows=np.asarray(indices, dtype=np.int64)[kept],
                        image_keys=list(decoded.image_keys))


def _no_images(size: int) -> SplitTensors:
    """An empty split (the training split of a method that learns nothing from it)."""
    return SplitTensors(pixels=torch.empty(0, 3, size, size, dtype=torch.uint8),
                        labels=torch.empty(0, dtype=torch.int64), paths=[], images_key="none",
                        rows=np.empty(0, dtype=np.int64))


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


def build_run_text_encoder(config: TrainConfig):
    """The card's text encoder, from the same weights as the run's backbone (random init seeded
    by the run seed, like the backbone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_text_encoder(card_for(config), weights=config.model.weights,
                                  pretrained=config.model.pretrained,
                                  tokenizer=config.model.tokenizer)


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


@dataclass
class RunData:
    """What a run knows before any image is decoded: the data set, its split indices, the kind
    of labels and the class prompts."""

    data: LabelledImages
    indices: RunIndices
    task: Task
    prompts: list[list[str]]


def prepare_run_data(config: TrainConfig, data: Optional[LabelledImages] = None) -> RunData:
    """Read the data set (unless given: runs of a group share one) and choose the run's images."""
    if data is None:
        data = load_dataset(config.data.source, config.data.layout, **config.data.options)
    indices = select_indices(data, config)
    log.info("data %s: %d %s, %d train / %d val / %d test images%s", data.name, data.num_classes,
             "labels" if data.multi_label else "classes", len(indices.train), len(indices.val),
             len(indices.test), f" + {len(indices.test_ood)} out-of-domain test images"
             if len(indices.test_ood) else "")
    prompts = class_prompts(data.class_names, config.data.layout,
                            config.data.prompts.class_names, config.data.prompts.templates)
    return RunData(data=data, indices=indices, task=task_for(data.multi_label), prompts=prompts)


def wanted_splits(config: TrainConfig, indices: RunIndices) -> dict[str, np.ndarray]:
    """The rows each split decodes. Out-of-domain images are evaluated with the in-domain test
    images, as one test split, and told apart again by their rows (methods need not know about
    domains); a training-free method (zero-shot) never looks at the training images."""
    test_all = np.concatenate([indices.test, indices.test_ood])
    if config.method in TRAINING_FREE:
        return {"val": indices.val, "test": test_all}
    return {"train": indices.train, "val": indices.val, "test": test_all}


def run_steps(config: TrainConfig, splits: dict[str, SplitTensors], num_classes: int = 0) -> int:
    """Optimizer steps of the run (0 for methods without any); a budget of N images takes the
    few-shot schedule of ceil(N / classes) shots."""
    if config.method in TRAINING_FREE or config.method in FEATURE_PROBES:
        return 0
    shots = config.shots
    if config.budget is not None:
        shots = budget_shots(config.budget, num_classes)
    return config.optim.resolve_steps(len(splits["train"].labels), shots)


def _run(config: TrainConfig) -> tuple[RunResult, torch.nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """The run itself; also returns the trained backbone and the tensors to save."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    reset_peak_memory(device)
    store = run_image_store(config)  # fits the stain target first: a bad one fails at once
    prepared = prepare_run_data(config)
    progress = observer()
    progress.planned(*step_plan(config, len(prepared.indices.train), prepared.data.num_classes))
    backbone = build_run_backbone(config)
    weights_fingerprint = starting_weights_fingerprint(config, backbone)
    text_encoder = build_run_text_encoder(config) if needs_text_encoder(config) else None
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    t0 = time.perf_counter()
    pre = backbone.preprocessing
    pick = None
    if config.budget is not None and config.method not in TRAINING_FREE:
        progress.phase("decoding", len(prepared.indices.train))
        pool = _decode(store, prepared.data, prepared.indices.train, pre,
                       config.data.skip_bad_images, "train pool")
        pick = choose_budget(config, prepared, pool, backbone, device)
    wanted = wanted_splits(config, prepared.indices)
    progress.phase("decoding", sum(len(idx) for idx in wanted.values()))
    splits = {}
    unnormalised: list[Path] = []
    for name, idx in wanted.items():
        splits[name] = _decode(store, prepared.data, idx, pre, config.data.skip_bad_images, name,
                               unnormalised)
    warn_unnormalised(store.transform, unnormalised,
                      len({str(p) for s in splits.values() for p in s.paths}))
    splits.setdefault("train", _no_images(pre.image_size))
    decode_s = time.perf_counter() - t0

    torch.manual_seed(config.seed)
    ctx = MethodContext(config=config, backbone=backbone, train=splits["train"], val=splits["val"],
                        test=splits["test"], class_names=list(prepared.data.class_names),
                        device=device, feature_cache=FeatureCache(cache_dir),
                        steps=run_steps(config, splits, prepared.data.num_classes),
                        prompts=prepared.prompts,
                        text_encoder=text_encoder, task=prepared.task)
    if config.method in TRAINING_FREE:
        progress.phase("evaluation")
    note_ignored_augmentation(config.method, config.optim.augment)
    outcome = METHODS[config.method](ctx)
    result = assemble_result(config, prepared, splits["test"], outcome,
                             {"decode_s": decode_s}, started, device,
                             weights_fingerprint=weights_fingerprint)
    if pick is not None:
        result.metrics["label_budget"] = pick.record()
    result.metrics.update(stain_record(store.transform, unnormalised))
    return result, backbone, outcome.tensors_to_save


def run_environment(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Versions and the precision a run computed in (what ``auto`` meant on its device), kept in
    its metrics (metrics.json and the store) so a report can tell runs of two versions apart."""
    return {"cytotune": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": config.device,
            # what "auto" meant on this machine: bf16 autocast or plain fp32
            "precision": resolve_precision(device, config.precision)}


def starting_weights_fingerprint(config: TrainConfig, backbone) -> Optional[str]:
    """The fingerprint of the weights a run starts from, recorded so a report never pools runs of
    two checkpoints under one model name; None for a random initialisation (seeded by the run
    seed, so it differs from seed to seed by design)."""
    if not config.model.pretrained:
        return None
    return backbone.weights_fingerprint()


def test_data_fingerprint(data: LabelledImages, test_split: SplitTensors) -> str:
    """A hash of what a run was tested on: the class names, the test images' content key (every
    file's bytes and the decode settings) and their labels. Fixed across run seeds; changed by any
    edit of the data, of its split or of the labels."""
    h = hashlib.sha256()
    h.update("\n".join(data.class_names).encode())
    h.update(test_split.images_key.encode())
    h.update(np.ascontiguousarray(test_split.labels.numpy()).tobytes())
    return h.hexdigest()[:16]


def assemble_result(config: TrainConfig, prepared: RunData, test_split: SplitTensors,
                    outcome, timings: dict[str, float], started: float,
                    device: torch.device, weights_fingerprint: Optional[str] = None) -> RunResult:
    """Metrics (in and out of domain, upper levels of a class tree), the predictions table and
    the timings of one finished method call. ``metrics["fingerprints"]`` records the starting
    weights and the test data, which the report compares before pooling runs."""
    data, indices, task = prepared.data, prepared.indices, prepared.task
    test_rows = test_split.rows
    in_domain = ~np.isin(test_rows, indices.test_ood)
    probs, targets = outcome.test.probs.numpy(), outcome.test.labels.numpy()
    names = data.class_names
    metrics = {"val": task.metrics(outcome.val.labels.numpy(), outcome.val.probs.numpy(), names),
               "test": task.metrics(targets[in_domain], probs[in_domain], names),
               "best_step": outcome.history.best_step, "steps": outcome.history.steps,
               "task": task.name,
               "environment": run_environment(config, device),
               "fingerprints": {"test_data": test_data_fingerprint(data, test_split),
                                **({"weights": weights_fingerprint} if weights_fingerprint else {})}}
    if outcome.hyperparameters:
        metrics["hyperparameters"] = dict(outcome.hyperparameters)
    metrics.update(getattr(outcome, "extra_metrics", None) or {})
    if len(indices.test_ood):
        metrics.update(domain_metrics(data, config, task, test_rows, in_domain, targets, probs))
    for level, (level_labels, level_names) in data.label_levels.items():
        # accuracy higher up a class tree (HiCervix levels 1-2), from the fine predictions; the
        # tree (each fine class's parent) is label metadata, read off the whole data set
        mapping = coarse_class_map(data.labels, level_labels, data.num_classes)
        metrics.setdefault("test_levels", {})[level] = coarse_level_metrics(
            level_labels[test_rows[in_domain]], probs[in_domain], mapping, level_names)
    predictions = prediction_table(data, task, test_split.paths, test_rows, targets, probs)
    if len(indices.test_ood):
        predictions["in_domain"] = in_domain
    timings = {**timings, **outcome.timings, "total_s": time.perf_counter() - started}
    result = RunResult(config=config, class_names=list(data.class_names), metrics=metrics,
                       predictions=predictions, trainable_parameters=outcome.trainable_parameters,
                       timings=timings, history=outcome.history.evaluations,
                       memory=peak_memory(device))
    log.info(result.summary())
    return result


def domain_metrics(data: LabelledImages, config: TrainConfig, task: Task, test_rows: np.ndarray,
                   in_domain: np.ndarray, targets: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Out-of-domain test metrics beside the in-domain ones: all test-domain images together
    (``test_ood``), each test domain alone and each training domain's held-out images
    (``test_by_domain``), and which domains were on which side (``domains``)."""
    assert data.domains is not None
    pools = domain_pools(data, config.data.train_domains, config.data.test_domains)
    assert pools is not None
    names = data.class_names
    out: dict[str, Any] = {"test_ood": task.metrics(targets[~in_domain], probs[~in_domain], names),
                           "domains": {"train": list(pools.train_domains),
                                       "test": list(pools.test_domains)}}
    row_domains = data.domains[test_rows]
    by_domain = {}
    for domain in (*pools.train_domains, *pools.test_domains):
        mask = row_domains == domain
        if mask.any():
            by_domain[domain] = {"in_domain": domain in pools.train_domains,
                                 **task.metrics(targets[mask], probs[mask], names)}
    out["test_by_domain"] = by_domain
    return out


def prediction_table(data: LabelledImages, task: Task, paths: list[Path], rows: np.ndarray,
                     targets: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """predictions.csv: one row per test image with its label(s), prediction and probabilities
    (softmax over classes, or one sigmoid per label whose names are joined by "|" at 0.5)."""
    names = data.class_names
    if task.multi_label:
        def joined(row: np.ndarray) -> str:
            return "|".join(n for n, on in zip(names, row) if on)
        frame = pd.DataFrame({"path": [str(p) for p in paths],
                              "label": [joined(t > 0.5) for t in targets],
                              "predicted": [joined(p >= 0.5) for p in probs]})
    else:
        frame = pd.DataFrame({"path": [str(p) for p in paths],
                              "label": [names[i] for i in targets.tolist()],
                              "predicted": [names[i] for i in probs.argmax(1)]})
    if data.domains is not None:
        frame["domain"] = data.domains[rows]
    for c, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, c]
    return frame


def _write_run(writer: RunWriter, result: RunResult, backbone: torch.nn.Module,
               tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write a finished run's files into the writer's staging folder; a failed write (full
    disk) is one RunDirError naming ``--out``."""
    with writer.writing():
        _write_run_files(writer, result, backbone, tensors)


def _write_run_files(writer: RunWriter, result: RunResult, backbone: torch.nn.Module,
                     tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    config = result.config
    writer.write_text("config.yaml", config.to_yaml())
    write_stain_file(writer, config, result.metrics)
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
    })
