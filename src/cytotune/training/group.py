"""Several runs that share a frozen backbone, trained together.

A sweep's runs on one data set and backbone differ in seed, learning rate and sample size, and
most of their cost is shared: reading the data set, building the backbone, decoding images and,
for linear probes, extracting features. :func:`run_training_group` plans such runs into groups
and trains each group at once:

- linear probes: one data set read, one decode of the union of their images, one feature
  extraction, and all heads in one batched loop (:func:`~cytotune.training.heads.fit_linear_heads`);
- LoRA on the image tower: up to ``pack_size`` runs packed on one backbone
  (:mod:`cytotune.adapters.packed`), one forward/backward per step for all of them
  (:func:`~cytotune.training.packed.fit_packed_lora`).

Each run still gets its own result and run directory, equal to what :func:`run_training`
gives it alone (tested), and a failing run fails alone: a run whose preparation raises gets its
error back, and a group that cannot be trained together falls back to one run at a time.

Accounting: each run's timings hold its own share of the group's time (shared phases and the
batched training loop split evenly between the runs), so a store's timings add up to the real
time; ``group_total_s`` and ``group_size`` record the whole group. Each run's ``train.log``
holds the group's shared lines and its own lines only (:class:`~cytotune.training.loop.RunLogFilter`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from cytotune.data import load_dataset
from cytotune.training.config import TrainConfig
from cytotune.training.features import FeatureCache
from cytotune.training.heads import fit_linear_heads
from cytotune.training.loop import RunLogFilter, run_scope, set_current_run
from cytotune.training.methods import MethodContext, SplitTensors
from cytotune.training.methods.base import needs_text_encoder
from cytotune.training.methods.linear import freeze, linear_problem, linear_result
from cytotune.training.methods.linear_cv import linear_cv
from cytotune.training.progress import observer
from cytotune.training.rundir import RunWriter
from cytotune.training.runner import (RunData, RunResult, _decode, _write_run, assemble_result,
                                      build_run_backbone, build_run_text_encoder,
                                      prepare_run_data, reset_peak_memory, resolve_device,
                                      run_steps, run_training, starting_weights_fingerprint,
                                      wanted_splits)
from cytotune.training.stain_run import run_image_store, stain_record, warn_unnormalised

log = logging.getLogger("cytotune")

Outcome = Union[RunResult, Exception]

# options that may differ between the runs of one group, per kind of group
_RUN_OPTIONS = ("seed", "shots", "fraction", "out", "overwrite")
_LINEAR_FREE = _RUN_OPTIONS + ("optim",)
_LORA_FREE_OPTIM = ("lr", "weight_decay", "steps", "epochs", "warmup_fraction", "val_every")


def group_key(config: TrainConfig) -> Optional[str]:
    """Runs with equal keys can be trained together; None: this run is trained alone.

    The key is the config without what a group lets differ (seed, sample size, output and, for
    linear probes, every optimiser setting; for LoRA, learning rate, weight decay, schedule and
    validation cadence). A random-init backbone depends on the seed, so there the seed stays.
    LoRA runs with dropout, torch.compile or gradient checkpointing are trained alone.
    """
    if config.budget is not None:
        return None  # its training images are chosen on the backbone's features: one at a time
    if config.method == "linear":
        free = _LINEAR_FREE
    elif (config.method == "lora" and config.encoder == "vision" and not config.lora.dropout
          and not config.optim.compile and not config.finetune.grad_checkpointing):
        free = _RUN_OPTIONS
    else:
        return None
    values = config.to_dict()
    for name in free:
        values.pop(name, None)
    if config.method == "lora":
        values["optim"] = {k: v for k, v in values["optim"].items() if k not in _LORA_FREE_OPTIM}
    if not config.model.pretrained:
        values["seed"] = config.seed
    return json.dumps(values, sort_keys=True, default=str)


def plan_groups(configs: Sequence[TrainConfig], pack_size: int) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`group_key` (first-seen order); LoRA groups are
    cut into packs of at most ``pack_size`` runs, linear groups are never cut."""
    groups: dict[str, list[int]] = {}
    plan: list[list[int]] = []
    for i, config in enumerate(configs):
        key = group_key(config)
        if key is None or (config.method == "lora" and pack_size <= 1):
            plan.append([i])
            continue
        group = groups.get(key)
        if group is None or (config.method == "lora" and len(group) >= pack_size):
            group = groups[key] = []
            plan.append(group)
        group.append(i)
    return plan


def run_training_group(configs: Sequence[TrainConfig], pack_size: int = 8) -> list[Outcome]:
    """Train ``configs`` (grouped where they share a backbone); one result or error per config,
    in order. Run directories are written as by :func:`run_training`."""
    outcomes: list[Optional[Outcome]] = [None] * len(configs)
    for members in plan_groups(configs, pack_size):
        chosen = [configs[i] for i in members]
        if len(members) == 1:
            results = [_alone(chosen[0])]
        else:
            try:
                results = _run_group(chosen)
            except Exception as err:  # noqa: BLE001 - the group failed as a whole: retry alone
                log.warning("group of %d %s runs failed together (%s: %s); running them one by "
                            "one", len(chosen), chosen[0].method, type(err).__name__, err)
                results = [_alone(c) for c in chosen]
        for i, result in zip(members, results):
            outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def _alone(config: TrainConfig) -> Outcome:
    try:
        return run_training(config)
    except Exception as err:  # noqa: BLE001 - reported per run
        return err


class _Member:
    """One run of a group: its config, prepared data (or the error preparing it) and context."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.prepared: Optional[RunData] = None
        self.error: Optional[Exception] = None
        self.ctx: Optional[MethodContext] = None
        self.splits: dict[str, SplitTensors] = {}
        self.writer: Optional[RunWriter] = None

    @property
    def key(self) -> int:
        """This run's key for log attribution (its config object: the same in its context)."""
        return id(self.config)

    def open_log(self) -> None:
        """The run's own train.log in its staging folder: the group's shared lines and this
        run's lines, not the other runs'. Its writer closes it at commit or abort."""
        assert self.writer is not None
        self.writer.attach_log(log, [RunLogFilter(self.key)])


def _run_group(configs: list[TrainConfig]) -> list[Outcome]:
    """Train the group; run directories are staged before training (so an existing one fails
    its run at once, as alone) and each stage's train.log holds the whole group's log."""
    members = [_Member(c) for c in configs]
    try:
        return _train_group(members)
    finally:
        set_current_run(None)
        for m in members:  # whatever was not committed (failed runs, a failed group)
            if m.writer is not None:
                m.writer.abort()


def _train_group(members: list[_Member]) -> list[Outcome]:
    configs = [m.config for m in members]
    first = configs[0]
    for config in configs:
        config.validate()
    started = time.perf_counter()
    device = resolve_device(first.device)
    reset_peak_memory(device)
    data = load_dataset(first.data.source, first.data.layout, **first.data.options)
    for m in members:
        try:
            if m.config.out:
                m.writer = RunWriter(m.config.out, overwrite=m.config.overwrite)
                m.open_log()
            with run_scope(m.key):
                m.prepared = prepare_run_data(m.config, data)
        except Exception as err:  # noqa: BLE001 - this run fails alone
            m.error = err
    live = [m for m in members if m.error is None]
    if not live:
        return [m.error for m in members]  # type: ignore[misc]
    backbone = build_run_backbone(first)
    weights_fingerprint = starting_weights_fingerprint(first, backbone)
    if first.method == "lora":
        from cytotune.training.packed import check_backbone_packable
        check_backbone_packable(backbone, first)  # before any image is decoded
    text_encoder = build_run_text_encoder(first) if needs_text_encoder(first) else None
    pre = backbone.preprocessing
    cache_dir = Path(first.cache_dir) if first.cache_dir else None
    store = run_image_store(first)  # with the group's stain normalisation (one data config)

    # one decode of every image any run uses; each run's splits are rows of it
    t0 = time.perf_counter()
    rows = np.unique(np.concatenate([idx for m in live for idx in
                                     wanted_splits(m.config, m.prepared.indices).values()]))
    observer().phase("decoding", len(rows))
    unnormalised: list[Path] = []  # warned about once, for the whole group
    union = _decode(store, data, rows, pre, first.data.skip_bad_images, "union", unnormalised)
    warn_unnormalised(store.transform, unnormalised, len(union.paths))
    position = {int(r): i for i, r in enumerate(union.rows)}
    decode_s = time.perf_counter() - t0
    keep_pixels = first.method != "linear"  # linear probes need only their features
    shared: dict[str, SplitTensors] = {}  # equal row sets (the test split) share one tensor

    def store_key(paths: list[Path]) -> str:
        # the key a single run's own decode of these files gets: the test split's fingerprint
        # (and its feature-cache key) must not depend on whether the run was trained in a group
        return store.cache_key(paths, pre.effective_resize, pre.image_size, pre.interpolation)
    for m in live:
        try:
            m.splits = {name: _subset(union, position, idx, name, keep_pixels, shared,
                                      store_key if name == "test" else None)
                        for name, idx in wanted_splits(m.config, m.prepared.indices).items()}
        except Exception as err:  # noqa: BLE001
            m.error = err
            continue
        m.ctx = MethodContext(config=m.config, backbone=backbone, train=m.splits["train"],
                              val=m.splits["val"], test=m.splits["test"],
                              class_names=list(data.class_names), device=device,
                              feature_cache=FeatureCache(cache_dir),
                              steps=run_steps(m.config, m.splits, data.num_classes), prompts=m.prepared.prompts,
                              text_encoder=text_encoder, task=m.prepared.task)
    live = [m for m in members if m.error is None]
    if not live:
        return [m.error for m in members]  # type: ignore[misc]
    # the decode is shared: each run is charged its share (feature extraction and training are
    # shared out by the method's group trainer)
    timings = {"decode_s": decode_s / len(live)}
    if first.method == "linear":
        method_results = _linear_group(live, backbone, union, position, device, timings)
    else:
        from cytotune.training.packed import run_packed_lora
        method_results = run_packed_lora([m.ctx for m in live], timings)

    done: dict[int, tuple[RunResult, object, object]] = {}  # member index -> result, ...
    errors: dict[int, Exception] = {}
    results = iter(zip(live, method_results))
    for i, m in enumerate(members):
        if m.error is not None:
            continue
        _, (outcome, adapter_writer) = next(results)
        try:
            with run_scope(m.key):
                result = assemble_result(m.config, m.prepared, m.splits["test"], outcome, timings,
                                         started, device, weights_fingerprint=weights_fingerprint)
                own = {str(p) for split in m.splits.values() for p in split.paths}
                result.metrics.update(stain_record(
                    store.transform, [p for p in unnormalised if str(p) in own]))
            done[i] = (result, outcome, adapter_writer)
        except Exception as err:  # noqa: BLE001
            errors[i] = err
    share_group_time(done, time.perf_counter() - started, len(live))

    out: list[Outcome] = []
    for i, m in enumerate(members):
        if m.error is not None or i in errors:
            out.append(m.error if m.error is not None else errors[i])
            continue
        result, outcome, adapter_writer = done[i]
        try:
            if m.writer is not None:
                with run_scope(m.key):
                    _write(m, result, backbone, outcome.tensors_to_save, adapter_writer)
            out.append(result)
        except Exception as err:  # noqa: BLE001
            out.append(err)
    return out


def share_group_time(done: dict[int, tuple[RunResult, object, object]], group_total: float,
                     group_size: int) -> None:
    """Each run's ``total_s`` becomes its share of the group's wall time (so the runs of a group
    add up to the group's time, not ``group_size`` times it); the group's own figures are kept
    beside it as ``group_total_s`` and ``group_size``."""
    for result, _, _ in done.values():
        result.timings["total_s"] = group_total / group_size
        result.timings["group_total_s"] = group_total
        result.timings["group_size"] = float(group_size)


def _write(member: _Member, result: RunResult, backbone, tensors, adapter_writer) -> None:
    writer = member.writer
    assert writer is not None
    if adapter_writer is None:
        _write_run(writer, result, backbone, tensors)
    else:
        with adapter_writer():  # the backbone holds this run's plain LoRA layers
            _write_run(writer, result, backbone, tensors)
    log.info("run written to %s", writer.out_dir)
    result.out_dir = writer.commit()  # closes train.log before the staging folder is renamed
    member.writer = None


def _subset(union: SplitTensors, position: dict[int, int], rows: np.ndarray, name: str,
            keep_pixels: bool, shared: dict[str, SplitTensors],
            own_key: Optional[Callable[[list[Path]], str]] = None) -> SplitTensors:
    """A split as rows of the decoded union (unreadable images, skipped there, left out);
    ``shared`` memoises them, so runs with the same rows hold one copy of their pixels.
    ``own_key``: gives the split the images key of its own files (as a run decoding them alone
    gets), instead of one derived from the union's."""
    from cytotune.data import DataError

    pos = np.asarray([position[int(r)] for r in rows if int(r) in position], dtype=np.int64)
    if len(pos) == 0:
        raise DataError(f"no readable images in the {name} split")
    key = _digest(pos)
    memo = f"{key}:own" if own_key else key
    if memo not in shared:
        index = torch.as_tensor(pos)
        pixels = union.pixels[index] if keep_pixels else union.pixels[:0]
        paths = [union.paths[i] for i in pos.tolist()]
        images_key = own_key(paths) if own_key else f"{union.images_key}:{key}"
        shared[memo] = SplitTensors(pixels=pixels, labels=union.labels[index], paths=paths,
                                   images_key=images_key, rows=union.rows[pos],
                                   image_keys=[union.image_keys[i] for i in pos.tolist()]
                                   if union.image_keys else [])
    return shared[memo]


def _digest(pos: np.ndarray) -> str:
    return hashlib.blake2b(pos.tobytes(), digest_size=8).hexdigest()


def _linear_group(members: list[_Member], backbone, union: SplitTensors,
                  position: dict[int, int], device: torch.device, timings: dict[str, float]):
    """Every member's head trained at once on one extraction of the union's features."""
    ctx0 = members[0].ctx
    freeze(backbone, device)
    observer().phase("features", len(union.labels))
    feats, seconds, hit = ctx0.feature_cache.features(
        backbone, backbone.weights_fingerprint(), union.pixels, union.images_key, device,
        ctx0.config.precision, union.image_keys)
    log.info("features for %d images shared by %d linear probes: %s", len(union.labels),
             len(members), "cache hit" if hit else f"extracted in {seconds:.1f}s")
    feats = feats.to(device)
    split_features: dict[int, torch.Tensor] = {}  # runs with equal rows share one SplitTensors

    def of(split: SplitTensors) -> torch.Tensor:
        """The split's rows of the union's features, one tensor per distinct split: a grid of
        15 probes on one split would otherwise hold 15 copies (7 GB at 50k images, 1280-d)."""
        if id(split) not in split_features:
            index = torch.as_tensor([position[int(r)] for r in split.rows], device=device)
            split_features[id(split)] = feats[index]
        return split_features[id(split)]

    problems, views, cvs = [], [], []
    for m in members:
        f_train, f_val, f_test = of(m.ctx.train), of(m.ctx.val), of(m.ctx.test)
        problem = linear_problem(m.ctx, f_train, f_val)
        with run_scope(m.key):
            cv = linear_cv(m.ctx, problem)  # train-cv: its fold heads join the group's loop
        problem.validate = _attributed(m.key, problem.validate)
        problems.append(problem)
        views.append((f_val, f_test))
        cvs.append(cv)
    folds = [fold for cv in cvs for fold in cv.problems]
    try:
        histories = fit_linear_heads(problems + folds, device, ctx0.task)
    finally:
        set_current_run(None)
    fold_histories = iter(histories[len(problems):])
    shared = {"feature_extraction_s": seconds / len(members)}
    out = []
    for m, p, h, (f_val, f_test), cv in zip(members, problems, histories, views, cvs):
        own_folds = [next(fold_histories) for _ in cv.problems]
        with run_scope(m.key):
            out.append((linear_result(m.ctx, p, h, f_val, f_test, shared, cv, own_folds), None))
    return out


def _attributed(key: int, validate):
    """``validate`` that makes run ``key`` current and leaves it so: the batched head trainer
    logs a head's validation line right after calling its validate, outside any scope we could
    wrap; the trainer's caller resets the current run when the loop ends."""
    if validate is None:
        return None

    def run_validate(head):
        set_current_run(key)
        return validate(head)

    return run_validate
