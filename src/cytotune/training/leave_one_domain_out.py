"""Leave-one-domain-out: one run per domain, trained on all the others and tested on it.

``cytotune train --leave-one-domain-out --out runs/lodo`` writes ``runs/lodo/heldout_<domain>/``
(ordinary run directories) and ``runs/lodo/leave_one_domain_out.csv``, the in-domain and
out-of-domain test metrics of every held-out domain side by side. A finished domain's run is
kept and not trained again, so a killed command resumes when run again.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from cytotune._atomic import write_csv_atomic
from cytotune.data import domain_names, load_dataset
from cytotune.training.config import ConfigError, TrainConfig
from cytotune.training.rundir import COMPLETE_MARKER
from cytotune.training.runner import RunResult, run_training

log = logging.getLogger("cytotune")

SUMMARY_FILE = "leave_one_domain_out.csv"
SIDE_BY_SIDE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "average_precision")


def run_dir_name(domain: str) -> str:
    return "heldout_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", domain)


def run_leave_one_domain_out(config: TrainConfig) -> list[RunResult]:
    """Train one run per domain of ``config``'s data, that domain held out as the test domain.

    Returns the results of the runs trained now (finished ones under ``config.out`` are kept
    unless ``config.overwrite``); the summary CSV covers every finished domain.
    """
    if config.data.train_domains or config.data.test_domains:
        raise ConfigError("leave-one-domain-out chooses the domains itself: drop "
                          "train_domains / test_domains")
    config.validate()
    data = load_dataset(config.data.source, config.data.layout, **config.data.options)
    domains = domain_names(data)
    if len(domains) < 2:
        raise ConfigError(f"{data.name}: leave-one-domain-out needs at least two domains, found "
                          f"{domains}")
    results = []
    for domain in domains:
        run_config = copy.deepcopy(config)
        run_config.data.test_domains = (domain,)
        if config.out:
            run_config.out = str(Path(config.out) / run_dir_name(domain))
            if (Path(run_config.out) / COMPLETE_MARKER).is_file() and not config.overwrite:
                log.info("domain %s: finished run in %s kept", domain, run_config.out)
                continue
        log.info("leave-one-domain-out: training without domain %s", domain)
        results.append(run_training(run_config))
    if config.out:
        metrics = {}
        for domain in domains:
            path = Path(config.out) / run_dir_name(domain) / COMPLETE_MARKER
            if path.is_file():
                metrics[domain] = json.loads(path.read_text(encoding="utf-8"))
        write_csv_atomic(side_by_side(metrics), Path(config.out) / SUMMARY_FILE)
    return results


def side_by_side(metrics_by_domain: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per held-out domain: in-domain test metrics (held-out images of the training
    domains) next to out-of-domain ones (the held-out domain's images)."""
    rows = []
    for domain, metrics in metrics_by_domain.items():
        row: dict[str, Any] = {"held_out_domain": domain,
                               "n_in_domain": metrics["test"]["n"],
                               "n_out_of_domain": metrics["test_ood"]["n"]}
        for name in SIDE_BY_SIDE_METRICS:
            if name in metrics["test"]:
                row[f"in_domain_{name}"] = metrics["test"][name]
                row[f"out_of_domain_{name}"] = metrics["test_ood"][name]
        rows.append(row)
    return pd.DataFrame(rows)
