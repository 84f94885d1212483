"""A sweep's plan for people (``cytotune sweep --dry-run``): the runs, what the store already
holds, and which backbones have no weights on this machine, so a long sweep does not stop hours
in on a gated or unreachable model. A dry run writes nothing: not even an empty store file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from cytotune.experiments.sweep import PlannedRun, SweepConfig


def missing_weights(sweep: SweepConfig) -> list[tuple[str, str]]:
    """(backbone, why) for each backbone of ``sweep`` whose pretrained weights are not on this
    machine, by the same offline check as ``cytotune models --check`` (never the network).
    A sweep with ``base.model.pretrained: false`` needs none."""
    from cytotune.models.availability import DOWNLOAD, check_weights

    model = sweep.base.get("model") if isinstance(sweep.base.get("model"), dict) else {}
    if model.get("pretrained") is False:
        return []
    out = []
    for name in sweep.backbones:
        try:
            report = check_weights(name, model.get("weights"))
        except Exception as err:  # noqa: BLE001 - e.g. a timm:<name> that does not exist
            out.append((name, f"cannot check: {err}"))
            continue
        if report.available:
            continue
        if report.missing_requirement:
            why = report.missing_requirement
        elif report.status == DOWNLOAD:
            why = ("not on this machine; downloaded from the hub on first use (needs the network"
                   + (" and a Hub token whose account accepted the terms" if report.gated
                      else "") + ")")
        else:
            why = "not available here" + (f": {report.notes[0]}" if report.notes else "")
        out.append((name, why))
    return out


def print_weights(console: Console, sweep: SweepConfig) -> None:
    missing = missing_weights(sweep)
    if not missing:
        console.print("weights: every backbone's weights are on this machine", highlight=False)
        return
    console.print(f"backbones without weights on this machine ({len(missing)} of "
                  f"{len(sweep.backbones)}; `cytotune models --check NAME` says what to do):",
                  highlight=False)
    for name, why in missing:
        console.print(f"  {name}: {why}", markup=False, highlight=False)


def stored_ids(store, retry_failed: bool) -> tuple[set[str], set[str], Path]:
    """Done and (unless retried) failed run ids of ``store``, read without writing anything:
    a store file that does not exist, or an empty one, holds nothing (the real sweep makes it a
    store); a folder, a file that is not SQLite, a damaged one or another program's database is
    a NotAStoreError naming it, as the real sweep would say."""
    from cytotune.experiments.store import ResultStore, inspect_store_file

    if not isinstance(store, ResultStore):
        path = Path(store).expanduser()
        if not inspect_store_file(path):  # None: no file; an empty set: an empty database
            return set(), set(), path
        store = ResultStore.open_read_only(path)
    return store.done_ids(), (store.failed_ids() if not retry_failed else set()), store.path


def print_plan(console: Console, sweep: SweepConfig, runs: Sequence[PlannedRun],
               done: set[str], failed: set[str], store: Optional[Path] = None) -> None:
    table = Table(title=f"sweep {sweep.name}: {len(runs)} runs")
    for col in ("#", "run id", "dataset", "backbone", "method", "sample", "seed", "lr", "status"):
        table.add_column(col, justify="right" if col in ("#", "seed", "lr") else "left")
    indices = list(range(len(runs)))
    if len(runs) > 200:
        indices = indices[:100] + [-1] + indices[-20:]
    for i in indices:
        if i < 0:
            table.add_row("...", "", "", "", "", "", "", "", "")
            continue
        run = runs[i]
        status = "done" if run.run_id in done else ("failed (skipped)" if run.run_id in failed
                                                    else "to run")
        table.add_row(str(i + 1), run.run_id, run.dataset, run.backbone, run.method, run.sample,
                      str(run.seed), f"{run.lr:g}", status)
    console.print(table)
    if store is not None and not store.exists():
        console.print(f"store {store} does not exist yet (a dry run does not create it)",
                      highlight=False)


def print_estimate(console: Console, sweep: SweepConfig, runs: Sequence[PlannedRun],
                   store_path: Path) -> None:
    """The estimated time of ``runs`` (those left to do) on this machine, from the store's past
    runs or a short calibration (cached per machine: the only file a dry run writes)."""
    from cytotune.experiments.estimate import sweep_estimate
    from cytotune.experiments.store import ResultStore, inspect_store_file

    if not runs:
        return
    records = None
    if inspect_store_file(store_path):
        records = ResultStore.open_read_only(store_path).records(full=True)
    with console.status("estimating the sweep's time (a short calibration where the store has "
                        "no past runs of a backbone and method)"):
        result = sweep_estimate(sweep, runs, records)
    for line in result.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def dry_run(sweep: SweepConfig, store, progress: bool, retry_failed: bool, console: Console,
            estimate: bool, summary_type):
    """The plan, what the store holds, the backbones without weights here and (``estimate``)
    the estimated time; writes nothing but the calibration cache. ``summary_type``: the
    runner's SweepSummary (passed in: the runner imports this module)."""
    runs = sweep.runs()
    done, failed, path = stored_ids(store, retry_failed)
    summary = summary_type(sweep=sweep.name, store=path, planned=len(runs),
                           already_done=sum(r.run_id in done for r in runs),
                           skipped_failed=sum(r.run_id in failed and r.run_id not in done
                                              for r in runs), runs=runs, dry_run=True)
    if progress:
        print_plan(console, sweep, runs, done, failed, path)
        print_weights(console, sweep)
        if estimate:
            print_estimate(console, sweep, [r for r in runs if r.run_id not in done
                                            and r.run_id not in failed], path)
        console.print(summary.line())
    return summary
