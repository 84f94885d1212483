"""Mean absolute pixel change (of 255) of each robustness perturbation per severity, and of
each training augmentation at its random strength, on real images: the figures of
docs/robustness.md. Usage: python scripts/perturbation_strengths.py
[MLCC_DIR] (default ../shared/data/mlcc): every 30th image, resized to 224 px."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cytotune.data.perturb import PERTURBATIONS, SEVERITIES, perturb


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mlcc")
    files = sorted(root.glob("*/*.jpg"))[::30]
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize(
        (224, 224)))).permute(2, 0, 1) for f in files])
    ids = [f"{f.parent.name}/{f.name}" for f in files]
    print(f"{len(files)} images from {root}")
    for kind in PERTURBATIONS:
        changes = [(perturb(images, kind, s, ids).float() - images.float()).abs().mean().item()
                   for s in SEVERITIES[1:]]
        print(kind, " ".join(f"{c:.1f}" for c in changes))
    from cytotune.training.augment import augment_batch
    for name in ("hed", "color", "blur", "jpeg", "scale"):  # training: random strength, seed 0
        out = augment_batch(images, (name,), torch.Generator().manual_seed(0))
        print(f"training {name}", f"{(out.float() - images.float()).abs().mean().item():.1f}")


if __name__ == "__main__":
    main()
