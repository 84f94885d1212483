"""The real MLCC copy in shared/data/mlcc, read with the mlcc layout (skipped when absent)."""
from __future__ import annotations

from cytotune.data import load_dataset, load_rgb


def test_real_mlcc_counts(mlcc_root):
    data = load_dataset(mlcc_root, "mlcc")
    assert len(data) == 950
    assert data.class_counts() == {"HSIL": 163, "LSIL": 113, "NL": 600, "SCC": 74}
    assert all(path.suffix.lower() == ".jpg" for path in data.paths)
    image = load_rgb(data.paths[0])
    assert (image.mode, image.size) == ("RGB", (512, 512))
