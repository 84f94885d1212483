"""Metrics higher up a class tree (HiCervix levels 1-2) from level-3 predictions."""
import numpy as np
import pytest

import cytotune
from cytotune.training.metrics import coarse_class_map, coarse_level_metrics

PARENT = {"normal": "NILM", "low_grade": "SIL", "high_grade": "SIL", "carcinoma": "SIL"}


def test_coarse_metrics_sum_fine_probabilities_per_parent():
    fine = np.array([0, 1, 2, 2])
    coarse = np.array([0, 1, 1, -1])
    mapping = coarse_class_map(fine, coarse, num_fine=3)
    assert mapping.tolist() == [0, 1, 1]
    # fine predictions wrong within the same parent are right at the coarse level
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    m = coarse_level_metrics(coarse, probs, mapping, ["NILM", "SIL"])
    assert m["n"] == 3  # the image without a coarse label is left out
    assert m["accuracy"] == pytest.approx(1.0)


def test_hicervix_layout_run_reports_the_upper_levels(synthetic_data, tiny_model_names, tmp_path):
    root = tmp_path / "hicervix"
    images = sorted(p for p in synthetic_data.rglob("*.png"))
    rng = np.random.default_rng(0)
    split_of = {p: s for p, s in zip(images, rng.choice(["train", "train", "val", "test"], len(images)))}
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        lines = ["image_name,class_name,level_1,level_2,level_3"]
        for p in images:
            if split_of[p] == split:
                (root / split / p.name).write_bytes(p.read_bytes())
                cls = p.parent.name
                lines.append(f"{p.name},{cls},{PARENT[cls]},{cls},{cls}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    result = cytotune.train(data=str(root), layout="hicervix", model=tiny_model_names["uni"],
                            pretrained=False, method="linear", lr=1e-2, linear_epochs=3,
                            cache_dir=None)
    levels = result.metrics["test_levels"]
    assert set(levels) == {"level_1", "level_2"}
    assert levels["level_1"]["n"] == result.metrics["test"]["n"]
    # level 2 equals level 3 in this tree, so its accuracy is the fine accuracy
    assert levels["level_2"]["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    assert levels["level_1"]["accuracy"] >= result.metrics["test"]["accuracy"]
