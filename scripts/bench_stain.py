"""Cost of stain normalisation on MLCC (docs/robustness.md, "Stain normalisation").

    .venv/bin/python scripts/bench_stain.py [MLCC_ROOT]

Per image: Macenko and Reinhard (torchstain, numpy backend, as cytotune applies them) on the
224 px centre crop cytotune normalises vs on the full 512 px image; how many images fell back
(too little stain); and a whole decode of the data set through the image store (2 threads, no
cache) with each method.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from cytotune.data import ImageStore
from cytotune.data.images import decode_resized, load_rgb
from cytotune.data.stain import stain_normaliser


def main(root: Path) -> None:
    paths = sorted(root.glob("*/*.jpg"))
    target = root / "NL" / "NL_10_1.jpg"
    print(f"{len(paths)} images, target {target}")
    crops = [decode_resized(p, 256, 224, "bilinear") for p in paths]
    full = [np.asarray(load_rgb(p)) for p in paths[::19]]
    for method in ("macenko", "reinhard"):
        normaliser = stain_normaliser(method, target)
        start = time.perf_counter()
        fallbacks = sum(normaliser(c) is None for c in crops)
        crop_ms = 1000 * (time.perf_counter() - start) / len(crops)
        start = time.perf_counter()
        for image in full:
            normaliser(image)
        full_ms = 1000 * (time.perf_counter() - start) / len(full)
        print(f"{method}: {crop_ms:.1f} ms per 224 px crop ({fallbacks} of {len(crops)} fell "
              f"back), {full_ms:.1f} ms per full {full[0].shape[1]}x{full[0].shape[0]} image")
    for method in ("none", "macenko", "reinhard"):
        store = ImageStore(None, num_workers=2,
                           transform=stain_normaliser(method, target if method != "none" else None))
        start = time.perf_counter()
        decoded = store.get(paths, 256, 224, "bilinear")
        print(f"decode {method}: {len(decoded)} images in {time.perf_counter() - start:.1f} s "
              f"(2 threads, no cache), {len(decoded.unnormalised)} unnormalised")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/mlcc"))
