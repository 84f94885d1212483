"""Stain normalisation at decode time (``--stain-norm macenko|reinhard --stain-target IMAGE``).

Slides from another lab are stained more or less strongly and with other dye lots; mapping every
image onto one target image's stain appearance removes part of that shift before a backbone sees
it. The algorithms are torchstain's (its numpy backend): Macenko et al. 2009 (the two stain
vectors of an image, from the angles of its optical densities, re-expressed with the target's
vectors and 99th-percentile concentrations) and Reinhard et al. 2001 (per-channel mean and
standard deviation in LAB moved to the target's).

Where it happens: **after** the resize and centre crop (:mod:`cytotune.data.images` calls a
:class:`StainNormaliser` on each decoded ``(crop, crop, 3)`` uint8 image). Why after: the cost of
both methods is linear in pixels, so normalising the 224 px crop instead of a 512 px (or 2048 px)
original is 5-80x cheaper, and the crop is exactly what the model sees, so the stain vectors are
estimated on the pixels that are classified. Prediction (``cytotune predict``, ``cytotune.load``)
applies it at the same place, so training and inference agree pixel for pixel.

The target is fitted once, at its own full resolution (so one fit, and one cache key, serves
every backbone), and refused with one :class:`StainError` line naming the file when it is
unreadable or shows no stain. The fitted parameters (Macenko ``HERef``/``maxCRef``, Reinhard
LAB means/stds) are what a run stores (``stain.json``): prediction rebuilds the normaliser from
them and never needs the target image. An image the method cannot handle (almost no stained
pixels, a constant image: torchstain raises or computes NaN) is kept unnormalised; the caller
counts such images and warns once.
"""
from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cytotune.data.dataset import DataError
from cytotune.data.images import ImageDecodeError, load_rgb

STAIN_METHODS: tuple[str, ...] = ("none", "macenko", "reinhard")
STAIN_FILE = "stain.json"  # a run's fitted parameters (see cytotune.training.runner)
_FORMAT = 1
# torchstain's defaults: transmitted light intensity and the optical density below which a pixel
# counts as background (no stain)
_IO, _BETA = 240, 0.15
# An image (or target) with fewer stained pixels than this is not normalised: Macenko's stain
# vectors come from the covariance and angle percentiles of the stained pixels, and from a
# handful of pixels they are noise (from 0 or 1 torchstain fails outright).
MIN_STAINED_PIXELS = 100
# Macenko targets whose two stain vectors are closer than this (degrees) found one stain only.
MIN_STAIN_ANGLE_DEG = 5.0
# numpy errors that mean a failed normalisation; underflow (exp of a large negative) is normal
_ERRSTATE = dict(divide="raise", invalid="raise", over="raise", under="ignore")
# the parameters each method stores, and the dtype torchstain computes them in (restored exactly,
# so a rebuilt normaliser gives the same pixels as the fitted one)
_PARAMS: dict[str, dict[str, Any]] = {"macenko": {"HERef": np.float64, "maxCRef": np.float64},
                                      "reinhard": {"target_means": np.float32,
                                                   "target_stds": np.float32}}


class StainError(DataError):
    """A stain target that cannot be used, or stored stain parameters that do not fit."""


def torchstain_version() -> str:
    try:
        return version("torchstain")
    except PackageNotFoundError:
        return "unknown"


def stained_pixels(rgb: np.ndarray) -> int:
    """How many pixels of a uint8 (..., 3) image have an optical density of at least torchstain's
    ``beta`` in every channel (the pixels Macenko estimates the stain vectors from)."""
    limit = _IO * np.exp(-_BETA) - 1.0  # OD >= beta  <=>  value <= Io * exp(-beta) - 1
    return int(np.all(rgb.reshape(-1, 3) <= limit, axis=1).sum())


def _new_torchstain(method: str):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    return NumpyMacenkoNormalizer() if method == "macenko" else NumpyReinhardNormalizer()


class StainNormaliser:
    """A fitted normaliser: call it on a uint8 (H, W, 3) image to get the normalised image, or
    None when this image cannot be normalised (the caller keeps the original).

    ``fingerprint`` covers the method, the target's sha256, the fitted parameters and the
    torchstain version: the decoded-image cache key includes it (and through the images' keys,
    the feature cache's), so another method or target never reuses stale pixels or features.
    Safe to call from several decoding threads (torchstain's ``normalize`` only reads the fitted
    parameters; numpy's error state is per thread)."""

    def __init__(self, method: str, params: dict[str, list], target_sha256: str,
                 target_name: str = "", torchstain: Optional[str] = None) -> None:
        if method not in _PARAMS:
            raise StainError(f"unknown stain normalisation {method!r}; choose one of "
                             f"{', '.join(STAIN_METHODS)}")
        self.method = method
        self.params = {name: np.asarray(params[name], dtype=dtype).tolist()
                       for name, dtype in _PARAMS[method].items()}
        self.target_sha256 = target_sha256
        self.target_name = target_name
        self.torchstain = torchstain or torchstain_version()
        self._normaliser = _new_torchstain(method)
        for name, dtype in _PARAMS[method].items():
            setattr(self._normaliser, name, np.asarray(self.params[name], dtype=dtype))
        blob = json.dumps({"method": method, "params": self.params, "target": target_sha256,
                           "torchstain": self.torchstain, "backend": "numpy",
                           "min_stained": MIN_STAINED_PIXELS, "format": _FORMAT},
                          sort_keys=True)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:24]

    def __call__(self, pixels: np.ndarray) -> Optional[np.ndarray]:
        """The normalised uint8 (H, W, 3) image, or None if this image cannot be normalised."""
        if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"stain normalisation takes uint8 (H, W, 3) images, got "
                             f"{pixels.dtype} {pixels.shape}")
        if self.method == "macenko" and stained_pixels(pixels) < MIN_STAINED_PIXELS:
            return None
        try:
            with np.errstate(**_ERRSTATE):
                if self.method == "macenko":
                    out = self._normaliser.normalize(pixels, stains=False)[0]
                else:
                    out = self._normaliser.normalize(pixels)
        except (FloatingPointError, np.linalg.LinAlgError, ValueError, IndexError):
            return None
        return np.ascontiguousarray(out, dtype=np.uint8)

    def describe(self) -> str:
        return f"{self.method} to {self.target_name or 'a target'} (sha256 {self.target_sha256[:12]})"

    # -- stored form (a run's stain.json) ---------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "method": self.method, "params": self.params,
                "target": {"name": self.target_name, "sha256": self.target_sha256},
                "fingerprint": self.fingerprint, "torchstain": self.torchstain,
                "backend": "numpy", "applied": "after resize and centre crop"}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "StainNormaliser":
        """Rebuild from :meth:`to_json`; a value that does not fit is a StainError naming
        ``where``."""
        try:
            method = value["method"]
            if method not in _PARAMS:
                raise ValueError(f"unknown method {method!r}")
            params = {name: value["params"][name] for name in _PARAMS[method]}
            made = cls(method, params, str(value["target"]["sha256"]),
                       str(value["target"].get("name", "")), value.get("torchstain"))
        except (KeyError, TypeError, ValueError) as err:
            raise StainError(f"{where}: not usable stain parameters ({err})") from None
        if not all(np.isfinite(v).all() for v in made.params.values()):
            raise StainError(f"{where}: the stain parameters hold NaN or infinite values")
        if value.get("fingerprint") not in (None, made.fingerprint):
            raise StainError(f"{where}: the stain parameters do not match their recorded "
                             f"fingerprint (edited?)")
        return made


def fit_target(method: str, target: str | Path) -> StainNormaliser:
    """Fit ``method`` on the image ``target``; an unreadable target, or one in which no stain is
    found, is one :class:`StainError` naming the file."""
    path = Path(target).expanduser()
    word = f"--stain-target {path}"
    try:
        data = path.read_bytes()
        rgb = np.asarray(load_rgb(path), dtype=np.uint8)
    except OSError as err:
        raise StainError(f"{word}: cannot read it ({err.strerror or err})") from None
    except ImageDecodeError as err:
        raise StainError(f"{word}: {err.reason}") from None
    n_stained = stained_pixels(rgb)
    if n_stained < MIN_STAINED_PIXELS:
        raise StainError(f"{word}: no stain found ({n_stained} pixels with optical density >= "
                         f"{_BETA} in every channel, at least {MIN_STAINED_PIXELS} needed); "
                         f"choose a stained image as the target")
    normaliser = _new_torchstain(method)
    try:
        with np.errstate(**_ERRSTATE):
            normaliser.fit(rgb)
    except (FloatingPointError, np.linalg.LinAlgError, ValueError, IndexError) as err:
        raise StainError(f"{word}: {method} cannot be fitted on it ({err})") from None
    params = {name: np.asarray(getattr(normaliser, name)) for name in _PARAMS[method]}
    problem = _target_problem(method, params)
    if problem:
        raise StainError(f"{word}: {problem}; choose a stained image as the target")
    return StainNormaliser(method, {k: v.tolist() for k, v in params.items()},
                           hashlib.sha256(data).hexdigest(), path.name)


def _target_problem(method: str, params: dict[str, np.ndarray]) -> str:
    if not all(np.isfinite(v).all() for v in params.values()):
        return f"{method} found no usable stain (NaN or infinite parameters)"
    if method == "macenko":
        he, max_c = params["HERef"], params["maxCRef"]
        if (max_c <= 0).any():
            return "no stain found (a stain's 99th-percentile concentration is not positive)"
        cosine = abs(float(he[:, 0] @ he[:, 1])) / float(np.linalg.norm(he[:, 0])
                                                          * np.linalg.norm(he[:, 1]))
        if np.degrees(np.arccos(min(1.0, cosine))) < MIN_STAIN_ANGLE_DEG:
            return "only one stain found (its two stain vectors coincide)"
    elif (params["target_stds"] <= 0).any():
        return "no stain found (a LAB channel is constant)"
    return ""


_FITTED: dict[tuple[str, str, str], StainNormaliser] = {}


def stain_normaliser(method: str, target: Optional[str | Path]) -> Optional[StainNormaliser]:
    """The normaliser of a run's ``stain_norm`` / ``stain_target`` (None for "none"); fitted once
    per (method, target contents) in a process, so a sweep's runs share one fit."""
    if method == "none":
        return None
    if method not in _PARAMS:
        raise StainError(f"unknown stain normalisation {method!r}; choose one of "
                         f"{', '.join(STAIN_METHODS)}")
    if not target:
        raise StainError(f"--stain-norm {method} needs --stain-target IMAGE")
    path = Path(target).expanduser()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise StainError(f"--stain-target {path}: cannot read it ({err.strerror or err})") \
            from None
    key = (method, str(path.resolve()), digest)
    if key not in _FITTED:
        _FITTED[key] = fit_target(method, path)
    return _FITTED[key]


def fitted_stain(fingerprint: str) -> Optional[StainNormaliser]:
    """The normaliser this process fitted with ``fingerprint`` (a run writes the one it trained
    with, even if its target file changed or went away meanwhile); None if none was."""
    return next((n for n in _FITTED.values() if n.fingerprint == fingerprint), None)
