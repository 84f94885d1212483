"""Named layouts on tiny fake trees shaped like each official download, and load_dataset."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from cytotune.data import LAYOUTS, DataError, load_dataset

MLCC_LONG_NAMES = {
    "High squamous intra-epithelial lesion": 3,
    "Low squamous intra-epithelial lesion": 2,
    "Negative for Intraepithelial malignancy": 4,
    "Squamous cell carcinoma": 1,
}
SIPAKMED = ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate")


def test_registry_entries_describe_their_layout():
    assert {"bcfc", "mlcc", "sipakmed", "hicervix", "folder", "csv"} <= set(LAYOUTS)
    for name, layout in LAYOUTS.items():
        assert layout.name == name and callable(layout.reader)
        assert layout.summary and layout.expected_layout


# --------------------------------------------------------------------------- folder layouts


def test_bcfc_any_case_nested_one_level(tmp_path, make_tree):
    make_tree(tmp_path / "Body cavity fluid", {"Benign": 3, "MALIGNANT": 2})
    data = load_dataset(tmp_path, "bcfc")
    assert data.name == "bcfc"
    assert data.class_counts() == {"benign": 3, "malignant": 2}


def test_bcfc_missing_class_lists_what_was_found(tmp_path, make_tree):
    make_tree(tmp_path, {"benign": 1, "other": 1})
    with pytest.raises(DataError, match="benign, malignant.*other"):
        load_dataset(tmp_path, "bcfc")


def test_mlcc_official_long_folder_names(tmp_path, make_tree):
    make_tree(tmp_path, MLCC_LONG_NAMES, suffix=".jpg")
    data = load_dataset(tmp_path, "mlcc")
    assert data.class_counts() == {"HSIL": 3, "LSIL": 2, "NL": 4, "SCC": 1}


def test_mlcc_short_names_and_duplicate_folders(tmp_path, make_tree):
    make_tree(tmp_path, {"HSIL": 1, "LSIL": 1, "NL": 1, "SCC": 1})
    assert load_dataset(tmp_path, "mlcc").class_names == ["HSIL", "LSIL", "NL", "SCC"]
    make_tree(tmp_path, {"Squamous cell carcinoma": 1})
    with pytest.raises(DataError, match="SCC.*Squamous cell carcinoma.*'SCC'"):
        load_dataset(tmp_path, "mlcc")


def test_sipakmed_official_layout_reads_only_cropped_cells(tmp_path, make_image):
    for i, cls in enumerate(SIPAKMED):
        inner = tmp_path / "SIPaKMeD" / f"im_{cls}" / f"im_{cls}"
        for j in range(i + 1):
            make_image(inner / "CROPPED" / f"{j:03d}_{j:02d}.bmp")
            (inner / "CROPPED" / f"{j:03d}_{j:02d}.dat").write_text("boundary")
        make_image(inner / "001.bmp", size=(64, 48))  # full cluster image: not a cell
        (inner / "001_cyt01.dat").write_text("boundary")
    data = load_dataset(tmp_path, "sipakmed")
    assert data.class_names == sorted(SIPAKMED)
    assert data.class_counts() == {cls: i + 1 for i, cls in enumerate(SIPAKMED)}
    assert all(path.parent.name == "CROPPED" for path in data.paths)


def test_sipakmed_plain_class_folders(tmp_path, make_tree):
    make_tree(tmp_path, {cls: 2 for cls in SIPAKMED}, suffix=".bmp")
    assert load_dataset(tmp_path, "sipakmed").class_counts() == {cls: 2 for cls in SIPAKMED}


# --------------------------------------------------------------------------- HiCervix

HICERVIX_HEADER = "image_name,class_name,level_1,level_2,level_3"
# level_1, level_2, level_3 per row; level_3 (and sometimes level_2) empty where the tree stops.
HICERVIX_ROWS = {
    "train": [("NILM", "NILM", ""), ("ASC", "ASC-US", "ASC-US"), ("ASC", "ASC-H", "ASC-H"),
              ("ASC", "ASC-US", "ASC-US"), ("ASC", "LSIL", ""), ("ASC", "ASC-H", "ASC-H")],
    "val": [("ASC", "ASC-US", "ASC-US"), ("NILM", "", "")],
    "test": [("ASC", "ASC-H", "ASC-H"), ("ASC", "ASC-US", "ASC-US")],
}


@pytest.fixture
def hicervix_root(tmp_path, make_image):
    for split, rows in HICERVIX_ROWS.items():
        lines = [HICERVIX_HEADER]
        for i, (l1, l2, l3) in enumerate(rows):
            make_image(tmp_path / split / f"{split}_{i}.jpg")
            lines.append(f"{split}_{i}.jpg,{l3 or l2 or l1},{l1},{l2},{l3}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_hicervix_level3_drops_shallow_rows_with_warning(hicervix_root, caplog):
    with caplog.at_level(logging.WARNING, logger="cytotune.data.layouts"):
        data = load_dataset(hicervix_root, "hicervix")
    assert "dropped 2 of 6 rows of train.csv" in caplog.text
    assert "dropped 1 of 2 rows of val.csv" in caplog.text
    assert len(data) == 7 and data.class_names == ["ASC-H", "ASC-US"]
    assert list(data.splits) == ["train"] * 4 + ["val"] + ["test"] * 2
    assert set(data.label_levels) == {"level_1", "level_2"}
    level_2, names_2 = data.label_levels["level_2"]
    assert names_2 == ["ASC-H", "ASC-US"] and list(level_2) == list(data.labels)
    assert data.label_levels["level_1"][1] == ["ASC"]
    assert data.paths[0] == hicervix_root / "train" / "train_1.jpg"


def test_hicervix_other_levels(hicervix_root):
    level_1 = load_dataset(hicervix_root, "hicervix", level=1)
    assert len(level_1) == 10 and level_1.class_names == ["ASC", "NILM"]
    assert level_1.label_levels == {}
    level_2 = load_dataset(hicervix_root, "hicervix", level=2)
    assert len(level_2) == 9 and "LSIL" in level_2.class_names
    finest = load_dataset(hicervix_root, "hicervix", level="finest")
    assert len(finest) == 10 and "NILM" in finest.class_names
    _, level_3_names = finest.label_levels["level_3"]
    assert -1 in finest.label_levels["level_3"][0] and "" not in level_3_names
    with pytest.raises(DataError, match="level=4"):
        load_dataset(hicervix_root, "hicervix", level=4)


def test_hicervix_missing_image_names_csv_row_and_column(hicervix_root):
    (hicervix_root / "test" / "test_1.jpg").unlink()
    with pytest.raises(DataError, match=r"test\.csv row 3, column 'image_name'"):
        load_dataset(hicervix_root, "hicervix")


def test_hicervix_custom_column_names(hicervix_root):
    for split in HICERVIX_ROWS:
        csv = hicervix_root / f"{split}.csv"
        csv.write_text(csv.read_text().replace("image_name", "file"))
    with pytest.raises(DataError, match="no column 'image_name'"):
        load_dataset(hicervix_root, "hicervix")
    assert len(load_dataset(hicervix_root, "hicervix", image_column="file")) == 7


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_guesses_folder_or_csv(tmp_path, make_tree):
    make_tree(tmp_path / "tree", {"a": 2, "b": 1})
    assert load_dataset(tmp_path / "tree").class_counts() == {"a": 2, "b": 1}
    (tmp_path / "list.csv").write_text("path,label\ntree/a/img_000.png,x\ntree/b/img_000.png,y\n")
    data = load_dataset(tmp_path / "list.csv")
    assert data.class_names == ["x", "y"]
    np.testing.assert_array_equal(data.labels, [0, 1])


def test_load_dataset_unknown_layout_and_option(tmp_path, make_tree):
    make_tree(tmp_path, {"a": 1})
    with pytest.raises(DataError, match="unknown layout 'kather'.*bcfc.*hicervix.*mlcc"):
        load_dataset(tmp_path, "kather")
    with pytest.raises(DataError, match="'mlcc'.*colour"):
        load_dataset(tmp_path, "mlcc", colour="red")
    with pytest.raises(DataError, match="neither a directory nor a .csv"):
        load_dataset(tmp_path / "missing")
