"""LoRA hyper-parameters."""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Mapping

#: Metadata keys written by :func:`cytotune.adapters.save_adapter` itself.
FORMAT_KEY = "cytotune_adapter_format"
FORMAT_VERSION = "1"
RESERVED_METADATA_KEYS = (FORMAT_KEY, "rank", "alpha", "targets", "dropout")


def check_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"LoRA option 'rank' must be an integer >= 1, got {rank!r}")
    return int(rank)


def check_alpha(alpha: object) -> float:
    if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
            or not math.isfinite(float(alpha)) or float(alpha) <= 0):
        raise ValueError(f"LoRA option 'alpha' must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def check_dropout(dropout: object) -> float:
    if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
            or not 0.0 <= float(dropout) < 1.0):
        raise ValueError(f"LoRA option 'dropout' must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def check_targets(targets: object) -> tuple[str, ...]:
    if isinstance(targets, str):  # "q,v" from a command line
        targets = [t.strip() for t in targets.split(",")]
    try:
        result = tuple(targets)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"LoRA option 'targets' must be a tuple of names, got {targets!r}") from None
    if not result:
        raise ValueError("LoRA option 'targets' must name at least one target, e.g. ('q', 'v')")
    for t in result:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"LoRA option 'targets' has an empty or non-string entry: {result!r}")
    if len(set(result)) != len(result):
        raise ValueError(f"LoRA option 'targets' lists a target twice: {result!r}")
    return result


@dataclass(frozen=True)
class LoRAConfig:
    """Hyper-parameters of a LoRA adaptation.

    rank     inner dimension r of every adapter (A: r x in, B: out x r)
    alpha    the adapter output is multiplied by ``scaling = alpha / rank``; the default 1.0
             is the reference study's CLIP-LoRA setting
    targets  canonical target names looked up in a model card's ``lora_targets`` ("q", "v",
             "o", "fc1" ...); a name the card does not know is an fnmatch pattern over module
             names (``"blocks.*.*.conv_pwl"``). A string is split on commas.
    dropout  dropout probability applied to the adapter input (not to the base layer)
    """

    rank: int = 2
    alpha: float = 1.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", check_rank(self.rank))
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "targets", check_targets(self.targets))
        object.__setattr__(self, "dropout", check_dropout(self.dropout))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_metadata(self) -> dict[str, str]:
        """String metadata as stored in an adapter file (targets as a JSON list)."""
        return {
            FORMAT_KEY: FORMAT_VERSION,
            "rank": str(self.rank),
            "alpha": repr(self.alpha),
            "targets": json.dumps(list(self.targets)),
            "dropout": repr(self.dropout),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "LoRAConfig":
        """The config an adapter file was trained with (see :func:`read_adapter_metadata`)."""
        missing = [k for k in ("rank", "alpha", "targets") if k not in metadata]
        if missing:
            raise ValueError(f"adapter metadata lacks {', '.join(missing)}: not a cytotune LoRA "
                             f"adapter (found keys: {sorted(metadata)})")
        try:
            targets = json.loads(metadata["targets"])
            return cls(rank=int(metadata["rank"]), alpha=float(metadata["alpha"]),
                       targets=tuple(targets), dropout=float(metadata.get("dropout", "0.0")))
        except (TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"malformed adapter metadata {dict(metadata)!r}: {e}") from None
