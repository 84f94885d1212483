"""``cytotune sweep --list``: each shipped sweep with its description and its number of runs.

The runs are counted by planning the sweep (:meth:`SweepConfig.runs`), which trains nothing and
reads no data. A sweep whose data sets live behind environment variables that are unset here
(``CYTOTUNE_BCFC`` ...) is planned with a placeholder in their place, so the count is that of the
full sweep whichever data sets this machine holds; the variables are listed beside it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

from cytotune.experiments.catalog import experiment_path, list_experiments
from cytotune.experiments.dataset_selection import unset_variables
from cytotune.training.config import ConfigError, load_yaml_file

PLACEHOLDER = "/unset/{}"  # where an unset data set variable would point (never read)


@dataclass
class SweepSummary:
    """One line of ``sweep --list``; ``error`` instead of a count when the file does not plan."""

    name: str
    description: str
    runs: Optional[int]
    unset: list[str] = field(default_factory=list)  # data set variables unset here
    error: Optional[str] = None
    # runs added by each held-out domain named in an unset variable (leave_one_domain_out:
    # "${VAR}"): ``runs`` then counts the other runs, and the total depends on the domains
    per_domain: int = 0

    def count(self) -> str:
        """The run count as text, e.g. "180 runs" or "144 runs + 18 per held-out domain"."""
        if self.runs is None:
            return "cannot be planned"
        text = f"{self.runs} run{'s' if self.runs != 1 else ''}"
        return text + (f" + {self.per_domain} per held-out domain" if self.per_domain else "")


def summarize(name: str, environ: Optional[Mapping[str, str]] = None) -> SweepSummary:
    """The description and run count of the shipped sweep ``name``."""
    from cytotune.experiments.sweep import SweepConfig

    env = dict(os.environ if environ is None else environ)
    path = experiment_path(name)
    try:
        values = load_yaml_file(path) or {}
        description = " ".join(str(values.get("description") or "").split())
        unset = sorted(set(unset_variables(values, env)))
        domains = set(unset) & set(unset_variables(_domain_lists(values), env))

        def count(held_out: int) -> int:
            fill = {v: ",".join(f"domain{i}" for i in range(held_out)) if v in domains
                    else PLACEHOLDER.format(v) for v in unset}
            return run_count(SweepConfig.from_dict(values, environ={**env, **fill},
                                                   check_models=False))

        if not domains:
            return SweepSummary(name, description, count(0), unset)
        two, three = count(2), count(3)  # the domain count is unknown: runs = a + b x domains
        return SweepSummary(name, description, two - 2 * (three - two), unset,
                            per_domain=three - two)
    except (ConfigError, OSError, ValueError) as err:
        return SweepSummary(name, "", None, error=str(err))


def run_count(sweep) -> int:
    """``len(sweep.runs())`` without planning each run again (loading a sweep already planned
    and checked every one; a study-sized sweep takes a second to plan): the same loops over
    data sets, backbones, methods and each method's grid as :meth:`SweepConfig.runs`."""
    count = 0
    for dataset in sweep.datasets:
        for backbone in sweep.backbones:
            for method in sweep.method:
                if not sweep.excluded(dataset, backbone, method):
                    samples, seeds, lrs = sweep.grid_for(method)
                    count += len(samples) * len(seeds) * len(lrs) * len(sweep.combinations())
    return count


def _domain_lists(values: Mapping) -> list:
    """The ``leave_one_domain_out`` values of a sweep dict's data sets."""
    datasets = values.get("datasets")
    if not isinstance(datasets, Mapping):
        return []
    return [entry.get("leave_one_domain_out") for entry in datasets.values()
            if isinstance(entry, Mapping) and entry.get("leave_one_domain_out") is not None]


def summarize_all(environ: Optional[Mapping[str, str]] = None) -> list[SweepSummary]:
    return [summarize(name, environ) for name in list_experiments()]
