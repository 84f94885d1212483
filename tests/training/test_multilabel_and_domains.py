"""Multi-label metrics and runs, out-of-domain runs and leave-one-domain-out, end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import cytotune
from cytotune.cli import main
from cytotune.data import SYNTHETIC_LABELS, write_synthetic_manifest
from cytotune.training.metrics import multilabel_metrics
from cytotune.training.task import MULTI_LABEL

FAST = dict(steps=4, val_every=2, batch_size=8, linear_epochs=3, pretrained=False, num_workers=0)


def test_multilabel_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 3)) < [0.5, 0.3, 0.2]).astype(int)
    p = np.clip(y * 0.3 + rng.random((40, 3)) * 0.7, 0, 1)
    m = multilabel_metrics(y, p, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p, average="macro"))
    for j, name in enumerate("abc"):
        assert m["auroc_per_label"][name] == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        assert m["average_precision_per_label"][name] == pytest.approx(
            average_precision_score(y[:, j], p[:, j]))
    assert m["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
    # a label without negatives has no AUROC: listed, not averaged in
    y[:, 2] = 1
    m = multilabel_metrics(y, p, ["a", "b", "c"])
    assert m["auroc_undefined_labels"] == ["c"]
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in (0, 1)]))


def test_multilabel_task_loss_is_binary_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(MULTI_LABEL.loss(logits, targets), expected)
    assert torch.allclose(MULTI_LABEL.probabilities(logits), logits.sigmoid())


@pytest.fixture(scope="module")
def multilabel_csv(synthetic_data, tmp_path_factory):
    return write_synthetic_manifest(synthetic_data, tmp_path_factory.mktemp("ml") / "ml.csv",
                                    multi_label=True)


@pytest.mark.parametrize("method", ["linear", "lora", "full"])
def test_multilabel_run_writes_sigmoid_predictions_that_reload(method, multilabel_csv, tmp_path,
                                                               tiny_model_names):
    out = tmp_path / "run"
    result = cytotune.train(data=str(multilabel_csv), label_columns=",".join(SYNTHETIC_LABELS),
                            model=tiny_model_names["uni"], method=method, shots=2, lr=1e-2,
                            out=str(out), cache_dir=str(tmp_path / "cache"), **FAST)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multi_label"
    assert set(metrics["test"]["auroc_per_label"]) == set(SYNTHETIC_LABELS)
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    probs = preds[[f"prob_{n}" for n in SYNTHETIC_LABELS]].to_numpy()
    assert not np.allclose(probs.sum(1), 1.0)  # independent sigmoids, not a softmax
    expected = ["|".join(n for n, p in zip(SYNTHETIC_LABELS, row) if p >= 0.5) for row in probs]
    assert preds["predicted"].tolist() == expected
    truth = pd.read_csv(multilabel_csv, keep_default_na=False)
    assert set(preds["label"]) <= set(truth["label"])
    assert result.metrics["test"]["n"] == len(preds)
    model = cytotune.load(out)
    again = model.predict(list(preds["path"]))
    assert np.abs(again.probs.numpy() - probs).max() < 1e-4
    assert again.labels_above() == expected


@pytest.fixture(scope="module")
def domain_csv(synthetic_data, tmp_path_factory):
    return write_synthetic_manifest(synthetic_data, tmp_path_factory.mktemp("dom") / "d.csv",
                                    domains=("centre_a", "centre_b", "centre_c"))


def test_out_of_domain_metrics_beside_in_domain(domain_csv, tmp_path, tiny_model_names):
    out = tmp_path / "run"
    result = cytotune.train(data=str(domain_csv), model=tiny_model_names["uni"], method="linear",
                            test_domains="centre_c", lr=1e-2, out=str(out),
                            cache_dir=str(tmp_path / "cache"), **FAST)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["domains"] == {"train": ["centre_a", "centre_b"], "test": ["centre_c"]}
    assert metrics["test_ood"]["n"] == 16  # every centre_c image (4 classes x 4)
    by_domain = metrics["test_by_domain"]
    assert by_domain["centre_c"]["in_domain"] is False and by_domain["centre_a"]["in_domain"]
    assert by_domain["centre_a"]["n"] + by_domain["centre_b"]["n"] == metrics["test"]["n"]
    preds = result.predictions
    assert set(preds.loc[~preds["in_domain"], "domain"]) == {"centre_c"}
    assert "centre_c" not in set(preds.loc[preds["in_domain"], "domain"])


def test_leave_one_domain_out_command_writes_one_run_per_domain_and_resumes(
        domain_csv, tmp_path, tiny_model_names):
    out = tmp_path / "lodo"
    argv = ["train", "--data", str(domain_csv), "--model", tiny_model_names["uni"], "--method",
            "linear", "--pretrained", "false", "--steps", "3", "--linear-epochs", "2",
            "--batch-size", "8", "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "--leave-one-domain-out"]
    assert main(argv) == 0
    table = pd.read_csv(out / "leave_one_domain_out.csv")
    assert table["held_out_domain"].tolist() == ["centre_a", "centre_b", "centre_c"]
    assert {"in_domain_accuracy", "out_of_domain_accuracy", "in_domain_auroc",
            "out_of_domain_auroc"} <= set(table.columns)
    for domain in table["held_out_domain"]:
        metrics = json.loads((out / f"heldout_{domain}" / "metrics.json").read_text())
        assert metrics["domains"]["test"] == [domain]
        assert domain not in metrics["domains"]["train"]
    # a second call finds every run finished and trains nothing
    stamp = (out / "heldout_centre_a" / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "heldout_centre_a" / "metrics.json").stat().st_mtime_ns == stamp
