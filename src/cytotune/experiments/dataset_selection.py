"""Which of a sweep's data sets to run: a chosen subset, and those whose location is known.

The shipped experiments name four data sets through environment variables (``CYTOTUNE_MLCC``
...); most users hold one or two. Rather than stop on the first unset variable, a sweep can skip
the data sets whose variables are unset (one line says which and why) and run the rest. This
works on the sweep as written (before any ``${...}`` is expanded), so the runs kept have the same
ids as in a full sweep: a later run with every data set finds them done.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from cytotune.training.config import ConfigError

# ${NAME} or ${NAME:-default} in a sweep's values (expanded by the sweep loader)
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def unset_variables(value: Any, environ: Mapping[str, str]) -> list[str]:
    """The ``${NAME}`` references in ``value`` (strings anywhere inside) that are unset or empty
    and have no ``:-default``."""
    if isinstance(value, str):
        return [m.group(1) for m in ENV_REFERENCE.finditer(value)
                if m.group(2) is None and not environ.get(m.group(1))]
    if isinstance(value, Mapping):
        return [n for v in value.values() for n in unset_variables(v, environ)]
    if isinstance(value, list):
        return [n for v in value for n in unset_variables(v, environ)]
    return []


def select_datasets(values: dict[str, Any], names: Optional[Sequence[str]],
                    environ: Mapping[str, str], skip_unset: bool) -> dict[str, str]:
    """Keep in ``values["datasets"]`` (a sweep dict, changed in place) the data sets ``names``
    (None: all) and, with ``skip_unset``, drop those whose entry needs an unset variable.
    Returns the dropped-for-being-unset data sets and why. A named data set that is unknown, or
    whose variable is unset, is an error: the user asked for it. So is a sweep left with none."""
    datasets = values.get("datasets")
    if not isinstance(datasets, Mapping) or not datasets:
        return {}  # the sweep parser reports it
    if names:
        unknown = [n for n in names if n not in datasets]
        if unknown:
            raise ConfigError(f"--datasets: unknown data set(s) {', '.join(unknown)}; this sweep "
                              f"has {', '.join(datasets)}")
        for name in names:
            missing = unset_variables(datasets[name], environ)
            if missing:
                raise ConfigError(f"--datasets: {name} needs the environment variable "
                                  f"{', '.join(dict.fromkeys(missing))}, which is not set "
                                  f"(point it to that data set's folder)")
        datasets = {n: datasets[n] for n in datasets if n in names}
    skipped: dict[str, str] = {}
    if skip_unset:
        for name, entry in list(datasets.items()):
            missing = list(dict.fromkeys(unset_variables(entry, environ)))
            if missing:
                skipped[name] = f"{', '.join(missing)} not set"
        if skipped and len(skipped) == len(datasets):
            raise ConfigError("no data set left to run: " + "; ".join(
                f"{n} ({why})" for n, why in skipped.items())
                + "; set at least one of these variables to the data set's folder")
        datasets = {n: e for n, e in datasets.items() if n not in skipped}
    values["datasets"] = dict(datasets)
    return skipped


def skipped_line(skipped: Mapping[str, str], kept: Sequence[str]) -> str:
    """One line for people: which data sets were skipped, why, and which run."""
    return ("skipped data set(s) " + "; ".join(f"{n} ({why})" for n, why in skipped.items())
            + f"; running {', '.join(kept)}")
