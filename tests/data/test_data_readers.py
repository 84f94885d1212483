"""Generic readers: folder trees (flat and split) and CSV tables, including their error messages."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cytotune.data import DataError, generate_cytology_dataset, read_csv, read_folder

# --------------------------------------------------------------------------- folders


def test_read_folder_flat_generated_tree(tmp_path):
    root = generate_cytology_dataset(tmp_path / "syn", n_per_class=3, image_size=32)
    data = read_folder(root)
    assert data.class_names == ["carcinoma", "high_grade", "low_grade", "normal"]
    assert data.class_counts() == {name: 3 for name in data.class_names}
    assert data.splits is None and data.name == "syn" and data.root == root
    assert all(path.parent.name == data.class_names[label]
               for path, label in zip(data.paths, data.labels))
    assert data.paths == read_folder(root).paths  # deterministic order


def test_read_folder_is_recursive_case_insensitive_and_skips_debris(tmp_path, make_image):
    make_image(tmp_path / "a" / "x.PNG")
    make_image(tmp_path / "a" / "deeper" / "y.jpeg")
    make_image(tmp_path / "a" / "z.TIF")
    make_image(tmp_path / "b" / "w.webp")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._x.PNG").write_bytes(b"macOS resource fork")
    make_image(tmp_path / "__MACOSX" / "a" / "x.png")
    data = read_folder(tmp_path)
    assert data.class_names == ["a", "b"]
    assert [p.relative_to(tmp_path).as_posix() for p in data.paths] == [
        "a/deeper/y.jpeg", "a/x.PNG", "a/z.TIF", "b/w.webp"]


def test_read_folder_split_layout(tmp_path, make_tree):
    make_tree(tmp_path, {"train/cat": 3, "train/dog": 2, "val/cat": 1, "test/dog": 2,
                         "test/cat": 1})
    data = read_folder(tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert data.splits is not None
    counts = Counter((split, data.class_names[label])
                     for split, label in zip(data.splits, data.labels))
    assert counts == {("train", "cat"): 3, ("val", "cat"): 1, ("test", "cat"): 1,
                      ("train", "dog"): 2, ("test", "dog"): 2}


def test_read_folder_split_layout_without_val(tmp_path, make_tree):
    make_tree(tmp_path, {"train/a": 2, "test/a": 1})
    assert sorted(set(read_folder(tmp_path).splits)) == ["test", "train"]


def test_read_folder_errors(tmp_path, make_tree, make_image):
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path / "nowhere")
    make_image(tmp_path / "loose" / "x.png")
    with pytest.raises(DataError, match="no class folders.*inside class folders"):
        read_folder(tmp_path / "loose")
    make_tree(tmp_path / "flat", {"a": 2})
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        read_folder(tmp_path / "flat")


def test_read_folder_class_only_in_test_is_named(tmp_path, make_tree):
    make_tree(tmp_path, {"train/a": 2, "test/a": 1, "test/rare": 1})
    with pytest.raises(DataError, match="'rare'.*test.*not in train"):
        read_folder(tmp_path)


def test_read_folder_split_layout_with_stray_folder(tmp_path, make_tree):
    make_tree(tmp_path, {"train/a": 1, "extra/a": 1})
    with pytest.raises(DataError, match="extra"):
        read_folder(tmp_path)


# --------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_tree(tmp_path, make_tree):
    make_tree(tmp_path / "images", {"a": 3, "b": 3})
    return tmp_path


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


def test_read_csv_relative_paths_splits_groups_and_levels(csv_tree):
    rows = [[f"images/{c}/img_{i:03d}.png", c, s, f"p{i}", f"coarse_{c}"]
            for c in ("a", "b") for i, s in enumerate(("train", "val", "Test"))]
    csv = _write_csv(csv_tree / "labels.csv", ["path", "label", "split", "group", "coarse"], rows)
    data = read_csv(csv, level_columns=["coarse"])
    assert data.name == "labels" and len(data) == 6
    assert data.class_names == ["a", "b"]
    assert data.paths[0] == csv_tree / "images/a/img_000.png"
    assert list(data.splits) == ["train", "val", "test"] * 2
    assert list(data.groups) == ["p0", "p1", "p2"] * 2
    levels, names = data.label_levels["coarse"]
    assert names == ["coarse_a", "coarse_b"] and list(levels) == [0, 0, 0, 1, 1, 1]


def test_read_csv_root_option_and_custom_columns(csv_tree):
    (csv_tree / "meta").mkdir()
    csv = _write_csv(csv_tree / "meta" / "t.csv", ["file", "diagnosis"], [["a/img_000.png", "a"], ["b/img_001.png", "b"]])
    data = read_csv(csv, root=csv_tree / "images", path_column="file", label_column="diagnosis")
    assert data.paths == [csv_tree / "images/a/img_000.png", csv_tree / "images/b/img_001.png"]
    assert data.splits is None and data.groups is None


def test_read_csv_missing_column_is_named(csv_tree):
    csv = _write_csv(csv_tree / "t.csv", ["path", "diagnosis"], [["images/a/img_000.png", "a"]])
    with pytest.raises(DataError, match="no column 'label'.*diagnosis"):
        read_csv(csv)


def test_read_csv_empty_label_names_row_and_column(csv_tree):
    csv = _write_csv(csv_tree / "t.csv", ["path", "label"],
                     [["images/a/img_000.png", "a"], ["images/a/img_001.png", ""]])
    with pytest.raises(DataError, match=r"t\.csv row 3, column 'label': empty label"):
        read_csv(csv)


def test_read_csv_missing_file_names_row_column_and_path(csv_tree):
    csv = _write_csv(csv_tree / "t.csv", ["path", "label"],
                     [["images/a/img_000.png", "a"], ["images/a/gone.png", "a"]])
    with pytest.raises(DataError, match=r"row 3, column 'path': image file .*gone\.png not found"):
        read_csv(csv)


def test_read_csv_bad_split_value_and_empty_group(csv_tree):
    csv = _write_csv(csv_tree / "t.csv", ["path", "label", "split"],
                     [["images/a/img_000.png", "a", "holdout"]])
    with pytest.raises(DataError, match="row 2, column 'split'.*holdout"):
        read_csv(csv)
    csv = _write_csv(csv_tree / "g.csv", ["path", "label", "group"],
                     [["images/a/img_000.png", "a", ""]])
    with pytest.raises(DataError, match="row 2, column 'group'"):
        read_csv(csv)


def test_read_csv_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_csv(tmp_path / "none.csv")
    (tmp_path / "header_only.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no data rows"):
        read_csv(tmp_path / "header_only.csv")


def test_read_csv_labels_are_strings_not_nan(csv_tree):
    csv = _write_csv(csv_tree / "t.csv", ["path", "label"],
                     [["images/a/img_000.png", "NA"], ["images/b/img_000.png", "1"]])
    data = read_csv(csv)
    assert data.class_names == ["1", "NA"]
    np.testing.assert_array_equal(data.labels, [1, 0])


# ---- issue 31 item 6: a label with spaces beside the same label without ------------------------
@pytest.mark.parametrize("cell", [" HSIL", '" HSIL"', "HSIL ", ' "HSIL "'])
def test_read_csv_label_differing_by_spaces_is_an_error_naming_file_rows_and_labels(
        csv_tree, cell):
    csv = csv_tree / "t.csv"
    csv.write_text("path,label\nimages/a/img_000.png,HSIL\nimages/a/img_001.png,LSIL\n"
                   f"images/b/img_000.png,{cell}\n")
    with pytest.raises(DataError) as caught:
        read_csv(csv)
    message = str(caught.value)
    assert str(csv) in message and "row 2" in message and "row 4" in message
    as_read = {" HSIL": " HSIL", '" HSIL"': " HSIL", "HSIL ": "HSIL ", ' "HSIL "': "HSIL "}[cell]
    assert "'HSIL'" in message and repr(as_read) in message


def test_read_csv_spaces_written_the_same_way_on_every_row_or_around_quotes_are_formatting(
        csv_tree):
    csv = csv_tree / "t.csv"
    csv.write_text('path, label , split\nimages/a/img_000.png, HSIL, train\n'
                   'images/a/img_001.png, HSIL, val\nimages/b/img_000.png, "LSIL", test\n')
    data = read_csv(csv)
    assert data.class_names == ["HSIL", "LSIL"] and list(data.labels) == [0, 0, 1]
    assert list(data.splits) == ["train", "val", "test"]
    assert data.paths[0] == csv_tree / "images/a/img_000.png"
