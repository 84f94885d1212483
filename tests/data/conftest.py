"""Small image trees written into tmp_path, so data tests need no real data."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

MakeImage = Callable[..., Path]


@pytest.fixture
def make_image() -> MakeImage:
    """``make_image(path, color=(r, g, b), size=(w, h))`` writes a solid RGB image, returns path.

    The format follows the suffix (.png, .jpg, .bmp, ...); parent folders are created.
    """

    def make(path: Path, color: tuple[int, int, int] = (200, 120, 160),
             size: tuple[int, int] = (24, 24)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
        pixels[...] = color
        Image.fromarray(pixels).save(path)
        return path

    return make


@pytest.fixture
def make_tree(make_image: MakeImage) -> Callable[[Path, dict[str, int]], Path]:
    """``make_tree(root, {"a/x": 3, ...})`` writes that many PNGs into each relative folder."""

    def make(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
        for folder, count in counts.items():
            for i in range(count):
                make_image(root / folder / f"img_{i:03d}{suffix}", color=(10 * i % 256, 100, 150))
        return root

    return make
