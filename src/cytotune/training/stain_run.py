"""A run's stain normalisation (``data.stain_norm``, :mod:`cytotune.data.stain`): the image
store that applies it, the one warning about images it could not be applied to, what
metrics.json records, and the run's ``stain.json`` that prediction applies. Kept out of
:mod:`cytotune.training.runner` so the runner stays one screenful of stages."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from cytotune.data import ImageStore
from cytotune.data.stain import STAIN_FILE, StainNormaliser, fitted_stain, stain_normaliser
from cytotune.training.config import TrainConfig
from cytotune.training.rundir import RunWriter

log = logging.getLogger("cytotune")


def warn_unnormalised(stain: Optional[StainNormaliser], unnormalised: list[Path],
                      total: int) -> None:
    """One warning naming how many of ``total`` decoded images the stain normalisation could not
    be applied to (used as decoded); nothing when there are none."""
    if stain is None or not unnormalised:
        return
    unique = sorted({str(p) for p in unnormalised})
    shown = ", ".join(unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")
    log.warning("stain normalisation (%s) could not be applied to %d of %d images (too little "
                "stain, or torchstain failed on them); they are used unnormalised: %s",
                stain.method, len(unique), total, shown)


def stain_record(stain: Optional[StainNormaliser], unnormalised: list[Path]) -> dict[str, Any]:
    """metrics.json's ``stain_norm``: the method, the target and how many images fell back."""
    if stain is None:
        return {}
    return {"stain_norm": {"method": stain.method, "target": stain.target_name,
                           "target_sha256": stain.target_sha256,
                           "fingerprint": stain.fingerprint,
                           "unnormalised_images": len({str(p) for p in unnormalised})}}


def run_image_store(config: TrainConfig) -> ImageStore:
    """The decoded-image store of a run: its cache folder and its stain normalisation (fitted
    on the target here, so a target that fails is refused before any image is decoded)."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    return ImageStore(cache_dir / "images" if cache_dir else None, num_workers=config.num_workers,
                      transform=stain_normaliser(config.data.stain_norm, config.data.stain_target))


def write_stain_file(writer: RunWriter, config: TrainConfig, metrics: dict[str, Any]) -> None:
    """Write the fitted parameters the run trained with (``stain.json``), which prediction
    applies without the target image; nothing without stain normalisation."""
    if config.data.stain_norm == "none":
        return
    recorded = metrics.get("stain_norm", {}).get("fingerprint")
    stain = fitted_stain(recorded) if recorded else None
    stain = stain or stain_normaliser(config.data.stain_norm, config.data.stain_target)
    assert stain is not None
    writer.write_json(STAIN_FILE, stain.to_json())
