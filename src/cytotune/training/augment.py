"""Batch image transforms on the device: uint8 pixels in, normalised floats out.

Images are decoded and resized once (``cytotune.data.images``); everything per-step happens here
on whole batches, so the data path costs a few tensor ops rather than a JPEG decode per image.
Cytology has no canonical orientation, so training uses flips and right-angle rotations, which
keep every pixel (no interpolation, no border artefacts).
"""
from __future__ import annotations

from typing import Sequence

import torch


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
