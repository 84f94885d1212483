"""The real MLCC copy (found by tests/conftest.py: $CYTOTUNE_MLCC or its default place), read
with the mlcc layout (skipped when absent)."""
from __future__ import annotations

from cytotune.data import load_dataset, load_rgb


def test_real_mlcc_counts(mlcc_root):
    data = load_dataset(mlcc_root, "mlcc")
    assert len(data) == 950
    assert data.class_counts() == {"HSIL": 163, "LSIL": 113, "NL": 600, "SCC": 74}
    assert all(path.suffix.lower() == ".jpg" for path in data.paths)
    image = load_rgb(data.paths[0])
    assert (image.mode, image.size) == ("RGB", (512, 512))


def test_real_mlcc_groups_augmented_copies_and_every_split_has_every_class(mlcc_root):
    """The mirror's files are <class>_<source>_<copy>.jpg; copies of one source are one group,
    and few-group classes (LSIL and SCC: 4 sources each) still reach train, val and test."""
    import numpy as np

    from cytotune.data import make_splits

    data = load_dataset(mlcc_root, "mlcc")
    groups_per_class = {name: len(set(data.groups[data.labels == i].tolist()))
                        for i, name in enumerate(data.class_names)}
    assert groups_per_class == {"HSIL": 10, "LSIL": 4, "NL": 43, "SCC": 4}
    for seed in range(5):
        split = make_splits(data, seed=seed)
        sets = [set(data.groups[indices].tolist()) for _, indices in split.items()]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        for _, indices in split.items():
            assert np.bincount(data.labels[indices], minlength=4).min() > 0
