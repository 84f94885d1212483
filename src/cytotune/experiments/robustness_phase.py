"""A sweep's robustness phase: every finished run evaluated under the sweep's perturbations.

A sweep with ``robustness: [hed, blur, jpeg, ...]`` trains its runs as usual, then evaluates each
finished run's saved model (its run directory: the sweep needs ``base.out``) on its own test
split under each perturbation at severities 1-5 (:mod:`cytotune.inference.robustness`: the
same perturbed pixels for every run, so runs compare paired) and keeps the rows in the store
(:mod:`.store_robustness`). Resumable like the training: a run whose rows are stored is not
evaluated again, and an interrupted phase goes on with the others at the next call. A run that
cannot be evaluated (its directory gone, say) is reported and left without rows; the training
results are never touched.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from cytotune.experiments.store import ResultStore
from cytotune.experiments.sweep import SweepConfig

log = logging.getLogger("cytotune")


@dataclass
class RobustnessPhase:
    """What the phase did: runs evaluated now, already evaluated, and failed (id, reason)."""

    evaluated: list[str] = field(default_factory=list)
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        text = (f"robustness: {len(self.evaluated)} runs evaluated in {self.seconds:.0f} s, "
                f"{self.already} already in the store")
        if self.failed:
            text += f", {len(self.failed)} failed (first: {self.failed[0][1]})"
        return text


def evaluate_sweep_robustness(sweep: SweepConfig, store: ResultStore,
                              device: Optional[str] = None) -> RobustnessPhase:
    """Evaluate the sweep's finished runs that lack rows for its ``robustness`` kinds."""
    from cytotune.inference.robustness import robustness_rows

    phase = RobustnessPhase()
    kinds = list(sweep.robustness or [])
    if not kinds:
        return phase
    started = time.perf_counter()
    done = store.robustness_done()
    records = store.records(sweep.name)
    out_dirs = dict(zip(records["run_id"], records["out_dir"]))
    for run in sweep.runs():
        if run.run_id not in out_dirs:
            continue  # not finished (failed, or not run yet)
        if set(kinds) <= done.get(run.run_id, set()):
            phase.already += 1
            continue
        out_dir = out_dirs[run.run_id]
        if not out_dir:
            phase.failed.append((run.run_id, f"{run.describe()}: no run directory recorded"))
            continue
        try:
            rows = robustness_rows(out_dir, kinds, device=device or run.config.device,
                                   num_workers=run.config.num_workers,
                                   cache_dir=run.config.cache_dir)
        except Exception as err:  # noqa: BLE001 - reported per run; the phase goes on
            reason = f"{run.describe()}: {type(err).__name__}: {err}"
            log.warning("robustness of %s failed: %s", run.run_id, reason)
            phase.failed.append((run.run_id, reason))
            continue
        store.add_robustness(run.run_id, rows)
        phase.evaluated.append(run.run_id)
        log.info("robustness of %s: %d rows", run.describe(), len(rows))
    phase.seconds = time.perf_counter() - started
    return phase
