"""Fixtures shared by all test folders."""
from __future__ import annotations

from pathlib import Path

import pytest

# The real data sets live in shared/ beside the repository (not inside it), so a fresh clone
# placed next to shared/ finds them too.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mlcc_root() -> Path:
    """The real MLCC folder (950 JPEGs in HSIL/LSIL/NL/SCC), or skip when it is not there."""
    root = SHARED_DATA / "mlcc"
    if not root.is_dir():
        pytest.skip(f"real MLCC data not found at {root} (expected shared/data/mlcc beside the "
                    f"repository)")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small generated cytology-like data set (4 classes x 12 images, 32 px)."""
    from cytotune.data import generate_cytology_dataset

    return generate_cytology_dataset(tmp_path_factory.mktemp("synthetic") / "data",
                                     n_per_class=12, image_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_model_names() -> dict[str, str]:
    """Built-in card name -> name of its tiny random-init variant (``<card>-tiny``, which the
    model registry resolves on demand in any process)."""
    return {name: f"{name}-tiny" for name in ("clip-vit-b16", "biomedclip", "uni", "vit-b16")}
