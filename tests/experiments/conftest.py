"""Fixtures of the sweep tests (helpers to import are in experiments_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def second_data(tmp_path_factory) -> Path:
    """Another generated data set: other seed, three classes of their own."""
    from cytotune.data import generate_cytology_dataset

    return generate_cytology_dataset(tmp_path_factory.mktemp("second") / "data", n_per_class=10,
                                     image_size=32, seed=1, classes=("benign", "atypical", "malignant"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; with several, a busy machine (other test
    processes, spawned workers) makes torch's thread pool spin and runs take 10x longer."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
