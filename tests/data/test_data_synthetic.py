"""The generated cytology-like set: deterministic, readable, and labelled as generated."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cytotune.data import DEFAULT_CLASSES, DataError, generate_cytology_dataset, read_folder


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_set_is_deterministic(tmp_path):
    first = generate_cytology_dataset(tmp_path / "one", seed=11)
    data = read_folder(first)
    assert data.class_names == sorted(DEFAULT_CLASSES)
    assert data.class_counts() == {name: 40 for name in DEFAULT_CLASSES}
    with Image.open(data.paths[0]) as image:
        assert (image.mode, image.size) == ("RGB", (128, 128))
    second = generate_cytology_dataset(tmp_path / "two", seed=11)
    assert _files(first) == _files(second)


def test_seed_changes_images_and_readme_documents_settings(tmp_path):
    a = generate_cytology_dataset(tmp_path / "a", n_per_class=2, image_size=48, seed=0)
    b = generate_cytology_dataset(tmp_path / "b", n_per_class=2, image_size=48, seed=1)
    assert (a / "normal/normal_0000.png").read_bytes() != (b / "normal/normal_0000.png").read_bytes()
    readme = (a / "README.md").read_text()
    assert "generated, not real cytology" in readme
    assert "seed=0" in readme and "n_per_class=2" in readme and "image_size=48" in readme


def test_custom_classes_differ_in_nucleus_darkness(tmp_path):
    root = generate_cytology_dataset(tmp_path / "s", n_per_class=6, image_size=64,
                                     classes=["benign", "malignant"])
    data = read_folder(root)
    assert data.class_names == ["benign", "malignant"]
    darkest = [np.mean([np.asarray(Image.open(p)).min() for p in data.paths if p.parent.name == c])
               for c in data.class_names]
    assert darkest[1] < darkest[0]  # hyperchromatic nuclei in the malignant class


def test_same_settings_reuse_the_set_and_overwrite_rules(tmp_path):
    root = generate_cytology_dataset(tmp_path / "s", n_per_class=1, image_size=32)
    stamp = (root / "normal" / "normal_0000.png").stat().st_mtime_ns
    assert generate_cytology_dataset(root, n_per_class=1, image_size=32) == root  # reused
    assert (root / "normal" / "normal_0000.png").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="overwrite=True"):
        generate_cytology_dataset(root, n_per_class=2, image_size=32)
    generate_cytology_dataset(root, n_per_class=2, image_size=32, overwrite=True)
    assert len(read_folder(root)) == 2 * len(DEFAULT_CLASSES)
    (root / "normal" / "normal_0001.png").unlink()  # damaged set: regenerated, not reused
    generate_cytology_dataset(root, n_per_class=2, image_size=32)
    assert len(read_folder(root)) == 2 * len(DEFAULT_CLASSES)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="refusing"):
        generate_cytology_dataset(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").exists()


@pytest.mark.parametrize("options, name", [({"classes": []}, "classes"),
                                           ({"classes": ["a", "a"]}, "classes"),
                                           ({"classes": [".hidden"]}, "hidden"),
                                           ({"n_per_class": 0}, "n_per_class"),
                                           ({"image_size": 8}, "image_size")])
def test_bad_options_are_named(tmp_path, options, name):
    with pytest.raises(DataError, match=name):
        generate_cytology_dataset(tmp_path / "s", **options)
