"""The names of the perturbations and their severities (:mod:`cytotune.data.perturb`), apart
from the functions so that configs and ``--help`` can list them without importing torch."""
from __future__ import annotations

PERTURBATIONS: tuple[str, ...] = ("hed", "blur", "jpeg", "noise", "scale", "brightness")
SEVERITIES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
