"""What a sweep will cost on this machine, before it starts (``cytotune sweep --dry-run``).

Each run's planned work (:mod:`.work`) times a per-(backbone, method) rate. The rate comes from
the store's own past runs where it has any (their ``timings_json`` with their config: seconds =
overhead + rate x work, fitted by non-negative least squares), and otherwise from a short
calibration on this machine (:mod:`.calibrate`, cached per machine). Every part of the estimate
says which basis it used; an estimate for a GPU says so ("estimated on cuda").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from cytotune.experiments.calibrate import Calibration, calibrate
from cytotune.experiments.sweep import PlannedRun
from cytotune.experiments.work import RunWork, is_feature_method, plan_work
from cytotune.training.progress import duration

CalibrateFn = Callable[..., Calibration]
# A feature run after the first of its group (linear heads trained together, probes fitted on
# features in memory): the backbone is built once per group, each later run costs about this.
FEATURE_RUN_S = 0.3


@dataclass
class Rate:
    """Seconds of one run = ``overhead_s`` + ``per_unit_s`` x its work units; ``basis`` says
    where the numbers come from."""

    overhead_s: float
    per_unit_s: float
    basis: str
    eval_per_image_s: float = 0.0  # forward passes of validation/test images (training methods)

    shared_overhead: bool = False  # calibration: one backbone build per feature-run group

    def seconds(self, work: RunWork) -> float:
        overhead = (self.overhead_s if work.first_of_group or not self.shared_overhead
                    else FEATURE_RUN_S)
        return (overhead + self.per_unit_s * work.units
                + self.eval_per_image_s * work.eval_images)


@dataclass
class GroupEstimate:
    backbone: str
    method: str
    runs: int
    units: float
    seconds: float
    basis: str


@dataclass
class SweepEstimate:
    """The estimate of the runs left to do, per (backbone, method), and in all."""

    device: str
    groups: list[GroupEstimate] = field(default_factory=list)
    per_run: dict[str, float] = field(default_factory=dict)  # run id -> seconds
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(g.seconds for g in self.groups))

    def lines(self) -> list[str]:
        where = "this machine's CPU" if self.device == "cpu" else f"{self.device} (GPU)"
        out = [f"estimated time for the {sum(g.runs for g in self.groups)} runs to do: "
               f"{duration(self.seconds)} (estimated on {self.device}: {where})"]
        for g in self.groups:
            unit = "images to embed" if is_feature_method(g.method) else "training images"
            out.append(f"  {g.backbone} {g.method}: {g.runs} runs, {g.units:,.0f} {unit} -> "
                       f"{duration(g.seconds)}  [{g.basis}]")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def _past_units(config: Mapping, method: str, metrics: Mapping, timings: Mapping,
                classes: int = 4) -> Optional[float]:
    """The work units of a finished run from its config and metrics (the test and validation
    sizes it saw), as :func:`plan_work` would have planned them; None when unknown."""
    from cytotune.training.config import TrainConfig
    from cytotune.training.progress import step_plan

    n_val = (metrics.get("val") or {}).get("n") or 0
    n_test = (metrics.get("test") or {}).get("n") or 0
    try:
        tc = TrainConfig.from_dict(dict(config))
    except Exception:  # noqa: BLE001 - a config of an older version: not used for the fit
        return None
    shots = tc.shots
    pool = None
    if is_feature_method(method):
        return None  # feature methods are fitted from their timings' parts instead
    if tc.budget is not None:
        num_train = tc.budget
    elif shots is not None:
        num_train = shots * classes
    else:
        total = n_val + n_test
        frac = tc.data.val_fraction + tc.data.test_fraction
        pool = int(round(total / frac * (1 - frac))) if total and frac else None
        if pool is None:
            return None
        num_train = max(1, int(round(pool * (tc.fraction or 1.0))))
    steps, _ = step_plan(tc, num_train, classes)
    return float(steps * max(1, min(tc.optim.batch_size, num_train)))


def rates_from_store(records) -> dict[tuple[str, str], Rate]:
    """Per-(backbone, method) rates fitted on the store's finished runs (``records(full=True)``).

    Training methods: seconds = overhead + rate x (steps x batch), non-negative least squares
    (the rate alone when every run had the same work). Feature methods: the run's own cost
    (total minus feature extraction) as overhead, and extraction seconds per image embedded
    where runs extracted any (else no embedding rate: calibration fills it in)."""
    from scipy.optimize import nnls

    out: dict[tuple[str, str], Rate] = {}
    if records is None or len(records) == 0 or "config_json" not in records:
        return out
    frame = records.assign(_c=records["config_json"].map(json.loads),
                           _m=records["metrics_json"].map(json.loads),
                           _t=records["timings_json"].map(json.loads))
    for (backbone, method), part in frame.groupby(["backbone", "method"], sort=False):
        totals = np.array([float(t.get("total_s") or np.nan) for t in part["_t"]])
        if is_feature_method(method):
            extract = np.array([float(t.get("feature_extraction_s") or 0.0) for t in part["_t"]])
            ok = np.isfinite(totals)
            if not ok.any():
                continue
            overhead = float(np.median(totals[ok] - extract[ok]))
            embedded = [((m.get("val") or {}).get("n", 0) + (m.get("test") or {}).get("n", 0)
                         + (c.get("shots") or 0) * 4)
                        for m, c, e in zip(part["_m"], part["_c"], extract) if e > 0]
            per_image = (float(extract[extract > 0].sum() / max(1, sum(embedded)))
                         if embedded else float("nan"))
            out[(backbone, method)] = Rate(max(0.0, overhead), per_image,
                                           f"store: {int(ok.sum())} past runs")
            continue
        units = np.array([_past_units(c, method, m, t) or np.nan
                          for c, m, t in zip(part["_c"], part["_m"], part["_t"])], dtype=float)
        ok = np.isfinite(units) & np.isfinite(totals) & (units > 0)
        if not ok.any():
            continue
        x, y = units[ok], totals[ok]
        if len(set(x.tolist())) > 1:
            (overhead, rate), _ = nnls(np.column_stack([np.ones_like(x), x]), y)
        else:
            overhead, rate = 0.0, float(np.sum(y) / np.sum(x))
        out[(backbone, method)] = Rate(float(overhead), float(rate),
                                       f"store: {int(ok.sum())} past runs")
    return out


def _calibration_kind(method: str) -> str:
    if is_feature_method(method):
        return "embed"
    return "full" if method == "full" else "lora"


def estimate_sweep(runs: Sequence[PlannedRun], sizes: Mapping[str, int], records=None,
                   cache: Optional[Path] = None, calibrate_fn: CalibrateFn = calibrate,
                   cached: Sequence[tuple[str, str, int]] = (),
                   num_classes: Mapping[str, int] = {}) -> SweepEstimate:
    """Seconds for ``runs`` (the runs left to do) on this machine; see the module docstring.
    ``records``: the store's finished runs (``records(full=True)``) or None; ``cache``: the
    calibration folder (None: the default)."""
    works = plan_work(runs, sizes, cached, num_classes)
    fitted = rates_from_store(records)
    devices = sorted({w.device for w in works}) or ["cpu"]
    result = SweepEstimate(device=devices[0] if len(devices) == 1 else "/".join(devices))
    batch = {r.run_id: r.config.optim.batch_size for r in runs}
    groups: dict[tuple[str, str], list[RunWork]] = {}
    for w in works:
        groups.setdefault((w.backbone, w.method), []).append(w)
    for (backbone, method), members in groups.items():
        rate = fitted.get((backbone, method))
        embeds = sum(w.embed_images for w in members)
        needs_calibration = rate is None or (is_feature_method(method) and embeds
                                             and not np.isfinite(rate.per_unit_s))
        if needs_calibration:
            w0 = members[0]
            try:
                cal = calibrate_fn(backbone, _calibration_kind(method), w0.image_size,
                                   w0.device, batch=batch.get(w0.run_id, 32), cache=cache,
                                   notes=result.notes)
            except LookupError:
                raise  # a cached-only estimate (a running sweep's ETA) without this one
            except Exception as err:  # noqa: BLE001 - e.g. a backbone that cannot be built here
                result.notes.append(f"no estimate for {backbone} {method} ({len(members)} runs): "
                                    f"calibration failed: {type(err).__name__}: {err}")
                continue
            how = "calibration, cached" if cal.cached else "calibration, measured now"
            if rate is None:
                rate = Rate(cal.build_s, cal.per_image_s, f"{how} on {w0.device}",
                            0.0 if is_feature_method(method) else cal.forward_per_image_s,
                            shared_overhead=is_feature_method(method))
            else:  # the store's overhead, the calibration's embedding rate
                rate = Rate(rate.overhead_s, cal.per_image_s,
                            f"{rate.basis}; embedding: {how} on {w0.device}")
        elif is_feature_method(method) and not np.isfinite(rate.per_unit_s):
            rate = Rate(rate.overhead_s, 0.0, rate.basis)  # nothing to embed
        seconds = [rate.seconds(w) for w in members]
        result.per_run.update({w.run_id: s for w, s in zip(members, seconds)})
        result.groups.append(GroupEstimate(backbone, method, len(members),
                                           float(sum(w.units for w in members)),
                                           float(sum(seconds)), rate.basis))
    return result


def sweep_estimate(sweep, runs: Sequence[PlannedRun], records=None,
                   cache: Optional[Path] = None,
                   calibrate_fn: CalibrateFn = calibrate) -> SweepEstimate:
    """:func:`estimate_sweep` for ``runs`` of ``sweep``: data set sizes by listing them, and
    features counted as cached when a past feature run of the store left them on disk."""
    from cytotune.experiments.work import cached_features, dataset_sizes

    sizes, classes = dataset_sizes(sweep)
    return estimate_sweep(runs, sizes, records, cache, calibrate_fn,
                          sorted(cached_features(records, runs)), classes)


def _cached_only(*args, **kwargs) -> Calibration:
    return calibrate(*args, measure_now=False, **kwargs)


def run_weights(sweep, runs: Sequence[PlannedRun], records=None) -> tuple[dict[str, float], str]:
    """Weights of ``runs`` for a running sweep's ETA and what they are: estimated seconds when
    the store's past runs or this machine's cached calibration cover every run (nothing is
    timed now), else the planned work in forward-image equivalents."""
    try:
        return sweep_estimate(sweep, runs, records, calibrate_fn=_cached_only).per_run, "seconds"
    except Exception:  # noqa: BLE001 - no rate for some run: planned work, not run counts
        from cytotune.experiments.work import dataset_sizes

        sizes, classes = dataset_sizes(sweep)
        return {w.run_id: w.weight for w in plan_work(runs, sizes, (), classes)}, "work"
