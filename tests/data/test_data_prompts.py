"""Class prompts: every class of every named layout has a descriptive name; overrides and the
generic fallback behave; bad overrides name what is wrong."""
from __future__ import annotations

import pytest

from cytotune.data import DataError
from cytotune.data.layouts import BCFC_CLASSES, MLCC_CLASSES, SIPAKMED_CLASSES
from cytotune.data.prompts import DEFAULT_PROMPTS, class_prompts, plain_name

# HiCervix's tree as the data set publishes it (levels 1, 2 and 3; class_name is the finest)
HICERVIX_TREE = {
    "negative": ["Normal", "ECC", "RPC", "MPC", "PG", "Atrophy", "EMC", "HCG"],
    "ASC": ["ASC-US", "LSIL", "ASC-H", "HSIL", "SCC"],
    "AGC": ["AGC-NOS", "AGC-FN", "ADC", "AGC-ECC-NOS", "AGC-EMC-NOS", "ADC-ECC", "ADC-EMC"],
    "microbe": ["FUNGI", "ACTINO", "TRI", "HSV", "CC"],
}


@pytest.mark.parametrize("layout,classes", [
    ("bcfc", list(BCFC_CLASSES)), ("mlcc", list(MLCC_CLASSES)),
    ("sipakmed", list(SIPAKMED_CLASSES)),
    ("hicervix", [c for parent, kids in HICERVIX_TREE.items() for c in (parent, *kids)]),
])
def test_every_class_of_each_layout_has_a_descriptive_name(layout, classes):
    names = DEFAULT_PROMPTS[layout].class_names
    missing = [c for c in classes if c not in names]
    assert not missing, f"{layout}: no descriptive name for {missing}"
    prompts = class_prompts(classes, layout)
    assert len(prompts) == len(classes)
    for cls, own in zip(classes, prompts):
        assert len(own) == len(DEFAULT_PROMPTS[layout].templates) >= 2
        assert all(names[cls] in p for p in own)
    # descriptive, not the bare abbreviation, and distinct per class
    assert len({names[c] for c in classes}) == len(classes)


def test_mlcc_names_follow_the_data_set_readme():
    names = DEFAULT_PROMPTS["mlcc"].class_names
    assert names["HSIL"] == "high-grade squamous intraepithelial lesion"
    assert "negative for intraepithelial lesion or malignancy" in names["NL"]


def test_generic_folders_fall_back_to_the_class_name():
    assert plain_name("clear_cell") == "clear cell"
    prompts = class_prompts(["clear_cell", "Mitosis"], None)
    assert prompts[0][0] == "a cytology image of clear cell."
    assert prompts[1][1] == "a microscopy image of Mitosis."


def test_overrides_replace_names_and_templates():
    prompts = class_prompts(["HSIL", "NL"], "mlcc", names={"NL": "a normal cell"},
                            templates=["{}", "a photo of {}"])
    assert prompts == [["high-grade squamous intraepithelial lesion",
                        "a photo of high-grade squamous intraepithelial lesion"],
                       ["a normal cell", "a photo of a normal cell"]]


def test_bad_overrides_name_the_problem():
    with pytest.raises(DataError, match="'HISL'"):
        class_prompts(["HSIL", "NL"], "mlcc", names={"HISL": "typo"})
    with pytest.raises(DataError, match="exactly once"):
        class_prompts(["HSIL"], "mlcc", templates=["no placeholder"])
