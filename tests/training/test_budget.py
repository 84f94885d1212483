"""Label-budget runs (issue 34): N training images chosen on features before any label is read."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

import cytotune
from cytotune.data import DataError
from cytotune.training.budget import budget_shots, choose_rows, reveal_labels
from cytotune.training.config import ConfigError, TrainConfig

FAST = dict(seed=1, pretrained=False, num_workers=0)


def test_budget_shots_is_the_average_per_class_rounded_up():
    assert [budget_shots(b, 4) for b in (1, 4, 5, 8, 9, 64)] == [1, 1, 2, 2, 3, 16]


def test_budget_options_are_checked():
    with pytest.raises(ConfigError, match="sampling must be one of random, kmeans"):
        TrainConfig.from_dict({"data": {"source": "x"}, "budget": 8, "sampling": "best"}).validate()
    with pytest.raises(ConfigError, match="give budget or shots"):
        TrainConfig.from_dict({"data": {"source": "x"}, "budget": 8, "shots": 2}).validate()
    with pytest.raises(ConfigError, match="budget"):
        TrainConfig.from_dict({"data": {"source": "x"}, "budget": 1}).validate()


def test_choose_rows_maps_strategy_picks_to_pool_rows_and_refuses_a_too_large_budget():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 5)).astype(np.float32)
    rows = np.arange(100, 110)
    picked = choose_rows(feats, rows, 4, "random", seed=3)
    assert len(set(picked)) == 4 and set(picked) <= set(rows)
    with pytest.raises(DataError, match="--budget 11 asks for more images than the training "
                                        "split has \\(10\\)"):
        choose_rows(feats, rows, 11, "kmeans", seed=3)


def test_reveal_reports_missing_classes_and_refuses_a_single_class(caplog):
    labels = np.array([0, 0, 1, 1, 2, 2])
    with caplog.at_level(logging.WARNING, logger="cytotune"):
        pick = reveal_labels(np.array([0, 2, 3]), labels, ["a", "b", "c"], "kmeans")
    assert pick.per_class == {"a": 1, "b": 2, "c": 0} and pick.missing == ["c"]
    assert "no image of 1 class(es): c" in caplog.text
    assert pick.record()["missing_classes"] == ["c"]
    with pytest.raises(DataError, match="all of class 'a'.*needs two classes"):
        reveal_labels(np.array([0, 1]), labels, ["a", "b", "c"], "random")


def _split_csv(folder, out, permute_train: bool):
    """The generated folder as a CSV with a fixed split (6 train / 3 val / 3 test per class);
    with ``permute_train`` the labels of the training rows are shuffled among them."""
    rows = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for i, path in enumerate(sorted(class_dir.glob("*.png"))):
            rows.append({"path": str(path), "label": class_dir.name,
                         "split": "train" if i < 6 else "val" if i < 9 else "test"})
    frame = pd.DataFrame(rows)
    if permute_train:
        train = frame["split"] == "train"
        frame.loc[train, "label"] = np.random.default_rng(5).permutation(
            frame.loc[train, "label"].to_numpy())
    frame.to_csv(out, index=False)
    return out


@pytest.mark.parametrize("sampling", ["kmeans", "typiclust", "probcover", "random"])
def test_budget_never_reads_a_label_before_choosing(sampling, synthetic_data, tiny_model_names,
                                                     tmp_path):
    """Same images and split, training labels shuffled among them: the same files are chosen,
    in the same order; only the revealed labels differ."""
    records = []
    for permute in (False, True):
        csv = _split_csv(synthetic_data, tmp_path / f"d{permute}.csv", permute)
        result = cytotune.train(data=str(csv), model=tiny_model_names["uni"], method="prototype",
                                budget=8, sampling=sampling, cache_dir=str(tmp_path / "cache"),
                                **FAST)
        records.append(result.metrics["label_budget"])
    assert records[0]["images"] == records[1]["images"] and len(records[0]["images"]) == 8
    assert records[0]["sampling"] == sampling and records[0]["budget"] == 8


def test_budget_run_trains_on_the_chosen_images_and_records_them(synthetic_data,
                                                                  tiny_model_names, tmp_path):
    out = tmp_path / "run"
    result = cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"],
                            method="linear", budget=6, sampling="kmeans", out=str(out),
                            cache_dir=str(tmp_path / "cache"), steps=3, **FAST)
    record = json.loads((out / "metrics.json").read_text())["label_budget"]
    assert record["budget"] == 6 and sum(record["per_class"].values()) == 6
    assert len(record["images"]) == 6
    assert record["missing_classes"] == [k for k, v in record["per_class"].items() if v == 0]
    assert "budget=6 (kmeans)" in result.summary()
    # validation is the few-shot one for ceil(6 / 4) = 2 shots: 2 per class, whatever sampling
    assert result.metrics["val"]["n"] == 8


@pytest.mark.parametrize("method", ["lora", "knn", "logreg", "prototype"])
def test_every_training_method_takes_a_budget_with_a_class_left_out(method, synthetic_data,
                                                                    tiny_model_names, tmp_path):
    """A budget of 3 images over 4 classes leaves at least one class without an image: the run
    trains on the others, reports the missing class(es), and never predicts one."""
    extra = {"steps": 2, "batch_size": 4} if method == "lora" else {}
    result = cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"],
                            method=method, budget=3, sampling="random",
                            cache_dir=str(tmp_path / "cache"), **extra, **FAST)
    record = result.metrics["label_budget"]
    assert record["missing_classes"] and sum(record["per_class"].values()) == 3
    if method != "lora":  # a head trained without a class's image never predicts it
        predicted = set(result.predictions["predicted"])
        assert not predicted & set(record["missing_classes"])
