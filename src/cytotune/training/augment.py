"""Batch image transforms on the device: uint8 pixels in, normalised floats out.

Images are decoded and resized once (``cytotune.data.images``); everything per-step happens here
on whole batches, so the data path costs a few tensor ops rather than a JPEG decode per image.
Cytology has no canonical orientation, so training uses flips and right-angle rotations, which
keep every pixel (no interpolation, no border artefacts): ``dihedral``, the default (``on``).
Stain and acquisition augmentations (``hed``, ``color``, ``blur``, ``jpeg``, ``scale``) add
random-strength versions of the robustness perturbations of :mod:`cytotune.data.perturb`, so a
model trained with them has seen the shifts it is later evaluated under.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from cytotune.data import perturb as P
from cytotune.training.config import AUGMENTATIONS, augment_names

log = logging.getLogger("cytotune")

# the methods that train on images and so see augmented views; the others train on the feature
# cache, which holds clean views only (design.md), and ignore the augmentation
IMAGE_TRAINING_METHODS = frozenset({"lora", "full"})

# blur and JPEG, the two costliest per image (a separate kernel per image; libjpeg on the CPU),
# touch each image with this probability: half the cost, and a share of sharp, uncompressed
# views stays in every batch (measured in docs/robustness.md)
APPLY_PROBABILITY = 0.5

# random strength of each training augmentation, drawn per image from the run's generator
# (documented in docs/robustness.md; the robustness severities are in cytotune.data.perturb)
TRAINING_STRENGTHS: dict[str, dict[str, tuple[float, float]]] = {
    # Tellez et al. (2019): HED scale U(1-s, 1+s) and shift U(-s, s) per stain channel
    "hed": {"scale": (0.97, 1.03), "shift": (-0.03, 0.03)},
    "color": {"gain": (0.9, 1.1), "contrast": (0.9, 1.1), "saturation": (0.9, 1.1),
              "hue": (-0.03, 0.03)},  # hue in turns of the colour circle
    "blur": {"sigma": (0.1, 1.5)},  # pixels; each image with probability APPLY_PROBABILITY
    "jpeg": {"quality": (50, 95)},  # whole numbers, both ends included; likewise
    "scale": {"zoom": (1.0, 1.3), "shift": (-1.0, 1.0)},  # magnification about a moved centre
}


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,3,H,W) uint8 -> float in the model's normalisation."""
    m = torch.tensor(mean, device=pixels.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=pixels.device, dtype=dtype).view(1, -1, 1, 1)
    return (pixels.to(dtype) / 255.0 - m) / s


def random_dihedral(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image gets one of the 8 flips/rotations of the square, drawn from ``generator``.

    The generator lives on the CPU so a run's augmentations depend only on its seed, not on the
    device it runs on.
    """
    if pixels.shape[-1] != pixels.shape[-2]:
        raise ValueError("random_dihedral needs square images")
    choice = torch.randint(0, 8, (pixels.shape[0],), generator=generator).to(pixels.device)
    out = pixels
    flip = (choice >= 4).view(-1, 1, 1, 1)
    out = torch.where(flip, out.flip(-1), out)
    turns = choice % 4
    rotated = out.clone()
    for k in (1, 2, 3):
        mask = turns == k
        if mask.any():
            rotated[mask] = torch.rot90(out[mask], k, dims=(-2, -1))
    return rotated


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float],
             width: int = 0) -> torch.Tensor:
    low, high = bounds
    shape = (n, width) if width else (n,)
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _chosen(generator: torch.Generator, n: int) -> torch.Tensor:
    """Indices of the images (each with probability APPLY_PROBABILITY) that get blur or JPEG."""
    return torch.nonzero(torch.rand(n, generator=generator) < APPLY_PROBABILITY).flatten()


def augment_batch(pixels: torch.Tensor, names: Sequence[str],
                  generator: torch.Generator) -> torch.Tensor:
    """``pixels`` (uint8 (B, 3, H, W), any device) with the augmentations ``names`` applied in
    :data:`AUGMENTATIONS` order, each image at its own random strength drawn from ``generator``
    (a CPU generator: the draws, and so the run, depend only on its seed). ``("dihedral",)``
    is exactly :func:`random_dihedral`."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {', '.join(unknown)}; choices: "
                         f"{', '.join(AUGMENTATIONS)}")
    n = pixels.shape[0]
    wanted = set(names)
    x = random_dihedral(pixels, generator) if "dihedral" in wanted else pixels
    floats = [a for a in ("hed", "color", "blur", "scale") if a in wanted]
    if floats:
        f = P.to_float(x)
        if "hed" in wanted:
            s = TRAINING_STRENGTHS["hed"]
            f = P.hed_jitter(f, _uniform(generator, n, s["scale"], 3),
                             _uniform(generator, n, s["shift"], 3), dtype=torch.float32)
        if "color" in wanted:
            s = TRAINING_STRENGTHS["color"]
            f = P.color_jitter(f, *(_uniform(generator, n, s[k]).float()
                                    for k in ("gain", "contrast", "saturation", "hue")))
        if "blur" in wanted:
            sigma = _uniform(generator, n, TRAINING_STRENGTHS["blur"]["sigma"])
            some = _chosen(generator, n)
            if len(some):
                f = f.index_copy(0, some.to(f.device), P.gaussian_blur(f[some.to(f.device)],
                                                                        sigma[some]))
        if "scale" in wanted:
            s = TRAINING_STRENGTHS["scale"]
            f = P.zoom(f, _uniform(generator, n, s["zoom"]), _uniform(generator, n, s["shift"], 2))
        x = P.to_uint8(f)
    if "jpeg" in wanted:
        low, high = TRAINING_STRENGTHS["jpeg"]["quality"]
        quality = torch.randint(int(low), int(high) + 1, (n,), generator=generator)
        some = _chosen(generator, n)
        if len(some):
            at = some.to(x.device)
            x = x.index_copy(0, at, P.jpeg(x[at], quality[some].tolist()))
    return x


def batch_augmenter(augment: Any, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``augment(pixels) -> pixels`` for a run's ``optim.augment`` (True/False, ``on``/``off``
    or names), drawing from a CPU generator seeded with ``seed``; the identity when off."""
    names = augment_names(augment)
    generator = torch.Generator().manual_seed(seed)
    if not names:
        return lambda pixels: pixels
    return lambda pixels: augment_batch(pixels, names, generator)


def note_ignored_augmentation(method: str, augment: Any) -> None:
    """One log line when a run asks for stain/acquisition augmentation but its method trains on
    cached clean features (the default flips and rotations are silently unused, as before)."""
    names = augment_names(augment)
    if method not in IMAGE_TRAINING_METHODS and names not in ((), ("dihedral",)):
        log.info("augment %s is not used: method %s trains on cached features of clean images "
                 "(augmentation applies to the image-training methods %s)", ",".join(names),
                 method, ", ".join(sorted(IMAGE_TRAINING_METHODS)))
