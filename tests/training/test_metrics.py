
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from cytotune.training.metrics import classification_metrics


def _probs(rng, n, c):
    p = rng.random((n, c))
    return p / p.sum(1, keepdims=True)


def test_metrics_match_scikit_learn_on_fixed_inputs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    p = _probs(rng, 50, 3)
    m = classification_metrics(y, p, ["a", "b", "c"])
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert np.array(m["confusion_matrix"]).sum() == 50


def test_expected_calibration_error_by_hand():
    # two confident right answers (conf 0.9) and two wrong (conf 0.6): one bin each
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    m = classification_metrics(y, p, ["x", "y"], ece_bins=10)
    # bin 0.9: acc 1, conf .9 -> gap .1 (weight .5); bin .6: acc 0, conf .6 -> gap .6 (weight .5)
    assert m["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.6, abs=1e-6)


def test_auroc_skips_classes_absent_from_labels_and_says_so():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["auroc_undefined_classes"] == ["c"]
    assert m["auroc"] == pytest.approx(1.0)
    assert set(m["per_class_recall"]) == {"a", "b"}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"])
