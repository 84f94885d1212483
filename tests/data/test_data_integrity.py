"""Inputs that used to give silently wrong numbers: duplicate or conflicting manifest rows,
class spellings that differ only in case, near-duplicate files straddling splits, broken links
and link loops that vanished from listings, and single-class data that trained before failing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cytotune.data import (DataError, ImageDecodeError, ImageStore, LabelledImages,
                           decode_images, load_dataset, make_splits, read_csv, read_folder)
from cytotune.data.layouts import MLCC_GROUP_PATTERN
from cytotune.training.config import TrainConfig
from cytotune.training.runner import select_indices


def _manifest(tmp_path: Path, make_image, lines: list[str], name: str = "m.csv") -> Path:
    """A CSV of ``path,label[,...]`` lines (header first); every image it names is written."""
    header = lines[0].split(",")
    for line in lines[1:]:
        path = tmp_path / line.split(",")[header.index("path")].strip().strip('"')
        if not path.exists():
            make_image(path)
    csv = tmp_path / name
    csv.write_text("\n".join(lines) + "\n")
    return csv


# --------------------------------------------------------------------------- item 3: manifests


def test_identical_duplicate_rows_warn_and_keep_one(tmp_path, make_image, caplog):
    csv = _manifest(tmp_path, make_image, ["path,label", "a.png,x", "b.png,y", "./a.png,x",
                                           "c.png,y"])
    with caplog.at_level(logging.WARNING, logger="cytotune"):
        data = read_csv(csv)
    assert [p.name for p in data.paths] == ["a.png", "b.png", "c.png"]
    assert data.labels.tolist() == [0, 1, 1]
    assert "1 identical duplicate(s) dropped" in caplog.text
    assert "m.csv row 4 repeats" in caplog.text and "m.csv row 2" in caplog.text


def test_one_path_with_two_labels_is_an_error_naming_both_rows(tmp_path, make_image):
    csv = _manifest(tmp_path, make_image, ["path,label", "a.png,x", "b.png,y", "a.png,y"])
    with pytest.raises(DataError, match=r"m.csv row 2 and .*m.csv row 4 both list image "
                                        r".*a.png but differ in 'label': 'x' vs 'y'"):
        read_csv(csv)


def test_one_path_in_two_splits_is_an_error(tmp_path, make_image):
    csv = _manifest(tmp_path, make_image, ["path,label,split", "a.png,x,train", "b.png,y,train",
                                           "sub/../a.png,x,test"])
    with pytest.raises(DataError, match=r"row 2 and .*row 4 both list image .*differ in "
                                        r"'split': 'train' vs 'test'"):
        read_csv(csv)
    # an absolute path to the same file, or a link to it, is the same image
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    again = _manifest(tmp_path, make_image, ["path,label,split", f"{tmp_path / 'a.png'},x,train",
                                             "b.png,y,train", "link.png,x,test"], "n.csv")
    with pytest.raises(DataError, match="n.csv row 2 and .*n.csv row 4 both list image"):
        read_csv(again)


def test_labels_differing_only_in_case_or_spaces_name_both_spellings(tmp_path, make_image):
    csv = _manifest(tmp_path, make_image, ["path,label", "a.png,HSIL", "b.png,NL",
                                           'c.png," hsil "'])
    with pytest.raises(DataError, match=r"labels 'HSIL' \(.*m.csv row 2\) and ' hsil ' \(.*m.csv "
                                        r"row 4\) differ only in case or surrounding spaces"):
        read_csv(csv)


def test_class_folders_differing_only_in_case_are_an_error(tmp_path, make_tree):
    make_tree(tmp_path / "flat", {"HSIL": 2, "hsil": 2, "NL": 2})
    with pytest.raises(DataError, match=r"class folders 'HSIL' \(folder .*HSIL\) and 'hsil' "
                                        r"\(folder .*hsil\) differ only in case"):
        read_folder(tmp_path / "flat")
    make_tree(tmp_path / "split", {"train/HSIL": 2, "train/NL": 2, "test/hsil": 1, "test/NL": 1})
    with pytest.raises(DataError, match=r"'HSIL' .* and 'hsil' .*differ only in case"):
        read_folder(tmp_path / "split")


def test_a_file_linked_into_two_class_folders_is_an_error(tmp_path, make_tree):
    root = make_tree(tmp_path / "d", {"a": 2, "b": 2})
    (root / "b" / "alias.png").symlink_to(root / "a" / "img_000.png")
    with pytest.raises(DataError, match=r"listed twice with different classes: .*img_000.png "
                                        r"\(class 'a'\) and .*alias.png \(class 'b'\)"):
        read_folder(root)


def _mlcc_tree(root: Path, make_image, sources: dict[str, int], copies: int = 4) -> Path:
    """Files named like the MLCC mirror's: <class>_<source>_<copy>.jpg."""
    for cls, n_sources in sources.items():
        for source in range(1, n_sources + 1):
            for copy in range(1, copies + 1):
                make_image(root / cls / f"{cls}_{source}_{copy}.jpg",
                           color=(source * 20 % 256, copy * 40 % 256, 90))
    return root


def test_mlcc_augmented_copies_of_one_source_stay_in_one_split(tmp_path, make_image):
    root = _mlcc_tree(tmp_path / "mlcc", make_image, {"HSIL": 5, "LSIL": 4, "NL": 8, "SCC": 4})
    data = load_dataset(root, "mlcc")
    assert data.groups is not None
    assert data.groups[data.paths.index(root / "HSIL" / "HSIL_3_2.jpg")] == "HSIL_3"
    for seed in range(5):
        split = make_splits(data, seed=seed)
        owner: dict[str, str] = {}
        for name, indices in split.items():
            for group in data.groups[indices]:
                assert owner.setdefault(group, name) == name, f"{group} in two splits"
            # few groups per class (4) still reach every split
            assert set(data.labels[indices].tolist()) == {0, 1, 2, 3}, (seed, name)
    assert load_dataset(root, "mlcc", group_pattern=None).groups is None


def test_group_pattern_option_for_folders_and_csv(tmp_path, make_image):
    root = _mlcc_tree(tmp_path / "f", make_image, {"a": 3, "b": 3})
    data = read_folder(root, group_pattern=r"^([a-z]+_\d+)_")
    assert sorted(set(data.groups.tolist())) == ["a_1", "a_2", "a_3", "b_1", "b_2", "b_3"]
    with pytest.raises(DataError, match=r"group_pattern='\^\[a-z\]\+_' must have exactly one "
                                        r"capture group"):
        read_folder(root, group_pattern=r"^[a-z]+_")
    with pytest.raises(DataError, match=r"group_pattern='\^\(zzz\)' matches none of the 24 file"):
        read_folder(root, group_pattern=r"^(zzz)")
    csv = _manifest(root, make_image, ["path,label", "a/a_1_1.jpg,a", "a/a_1_2.jpg,a",
                                       "b/b_2_1.jpg,b"])
    assert read_csv(csv, group_pattern=MLCC_GROUP_PATTERN).groups.tolist() == ["a_1", "a_1", "b_2"]
    with_column = _manifest(root, make_image, ["path,label,group", "a/a_1_1.jpg,a,g1"], "g.csv")
    with pytest.raises(DataError, match="has a 'group' column and option group_pattern"):
        read_csv(with_column, group_pattern=MLCC_GROUP_PATTERN)


# --------------------------------------------------------------------------- item 4: links


def test_broken_links_and_link_loops_are_named_counted_and_unreadable(tmp_path, make_tree,
                                                                      caplog):
    root = make_tree(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "gone.png").symlink_to(root / "a" / "missing.png")
    (root / "b" / "loop.png").symlink_to(root / "b" / "loop.png")
    (root / "b" / "sub").mkdir()
    (root / "b" / "sub" / "back").symlink_to(root / "b")  # a folder loop: not followed
    extra = make_tree(tmp_path / "elsewhere", {"x": 1})
    (root / "a" / "linked").symlink_to(extra / "x")  # a linked folder is read
    with caplog.at_level(logging.WARNING, logger="cytotune"):
        data = read_folder(root)
    names = [p.name for p in data.paths]
    assert "gone.png" in names and "loop.png" in names and len(data) == 7
    assert "1 broken symbolic link(s)" in caplog.text and "gone.png" in caplog.text
    assert "loop.png: symbolic link loop" in caplog.text
    assert "back: symbolic link loop" in caplog.text
    # decoding reports them as it reports any unreadable image: an error, or a counted skip
    with pytest.raises(ImageDecodeError, match=r"gone.png"):
        decode_images(data.paths, resize_size=16, crop_size=16, interpolation="bilinear")
    decoded = decode_images(data.paths, resize_size=16, crop_size=16, interpolation="bilinear",
                            skip_bad=True)
    assert sorted(Path(p).name for p, _ in decoded.bad) == ["gone.png", "loop.png"]
    assert len(decoded) == 5
    # training decodes through the image store (with its cache): the same report
    store = ImageStore(tmp_path / "cache")
    with pytest.raises(ImageDecodeError, match=r"gone.png.*--skip-bad-images"):
        store.get(data.paths, resize_size=16, crop_size=16, interpolation="bilinear")
    kept = store.get(data.paths, resize_size=16, crop_size=16, interpolation="bilinear",
                     skip_bad=True)
    assert len(kept.bad) == 2 and len(kept) == 5


def test_a_broken_link_in_a_manifest_is_named_as_one(tmp_path, make_image):
    csv = _manifest(tmp_path, make_image, ["path,label", "a.png,x", "b.png,y"])
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    csv.write_text(csv.read_text() + "c.png,y\n")
    with pytest.raises(DataError, match=r"m.csv row 4, column 'path': image file .*c.png is a "
                                        r"broken symbolic link \(its target .*gone.png does not"):
        read_csv(csv)


# --------------------------------------------------------------------------- item 14: one class


def test_single_class_data_is_refused_before_any_work(tmp_path, make_tree):
    root = make_tree(tmp_path / "one", {"only": 6})
    data = read_folder(root)
    with pytest.raises(DataError, match=r"one: .*a single class, 'only', and a classifier needs "
                                        r"at least two classes"):
        make_splits(data, seed=0)
    config = TrainConfig.from_dict({"data": {"source": str(root)}})
    with pytest.raises(DataError, match="single class, 'only'"):
        select_indices(data, config)


def test_a_domain_filter_leaving_one_class_is_refused(tmp_path):
    labels = np.array([0] * 6 + [1] * 6)
    data = LabelledImages(paths=[Path(f"i{i}.png") for i in range(12)], labels=labels,
                          class_names=["benign", "malignant"], name="fluids",
                          domains=np.array(["c1"] * 6 + ["c2"] * 6, dtype=object))
    config = TrainConfig.from_dict({"data": {"source": "x.csv", "train_domains": ["c1"],
                                             "test_domains": ["c2"]}})
    with pytest.raises(DataError, match=r"fluids: .*a single class, 'benign'.*other classes "
                                        r"\['malignant'\] were left out"):
        select_indices(data, config)
    given = LabelledImages(paths=[Path(f"i{i}.png") for i in range(4)], labels=[0, 0, 0, 0],
                           class_names=["a", "b"], name="given",
                           splits=np.array(["train", "train", "test", "test"], dtype=object))
    with pytest.raises(DataError, match="given: the images of the training split contain a "
                                        "single class, 'a'"):
        make_splits(given, seed=0)


def test_multilabel_strata_views_are_not_refused():
    data = LabelledImages(paths=[Path(f"i{i}.png") for i in range(6)], labels=[0] * 6,
                          class_names=["a", "b"], name="ml",
                          targets=np.array([[1, 1]] * 6, dtype=np.uint8))
    split = make_splits(data.stratification_view(), seed=0, val_fraction=0.0, test_fraction=0.34)
    assert len(split.train) + len(split.test) == 6


def test_the_memoised_same_file_key_equals_realpath_for_links_and_dot_dots(tmp_path):
    """duplicate_positions resolves each folder once; the key must stay what realpath gives."""
    from cytotune.data.readers import duplicate_positions, same_file_key

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "alias.png").symlink_to(tmp_path / "real" / "a.png")
    paths = [tmp_path / "real" / "a.png", tmp_path / "linked" / "a.png",
             tmp_path / "real" / "alias.png", tmp_path / "linked" / ".." / "real" / "a.png",
             tmp_path / "real" / "..", tmp_path / "real" / "b.png", Path("relative.png")]
    folders: dict[str, str] = {}
    for path in paths:
        assert same_file_key(path, folders) == same_file_key(path), path
    assert duplicate_positions(paths) == [(0, 1), (0, 2), (0, 3)]
