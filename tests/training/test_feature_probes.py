"""Few-shot probes on frozen features (prototype, knn, logreg): each against an independent
reference on toy features, then whole runs whose saved heads reproduce their test predictions."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cytotune
from cytotune.training.method_registry import is_known_method
from cytotune.training.methods import METHODS
from cytotune.training.methods.feature_probes import (C_GRID, K_GRID, logistic_head,
                                                      select_on_validation)
from cytotune.training.methods.probe_heads import (PROTOTYPE_TEMPERATURE, CosineKNNHead,
                                                   prototype_head)
from cytotune.training.task import SINGLE_LABEL

PROBES = ("prototype", "knn", "logreg")


def toy(n_per_class: int = 6, classes: int = 3, dim: int = 8, seed: int = 0):
    """Gaussian blobs around random class centres, features offset from the origin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2 + 5
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def test_probe_names_are_registered():
    for name in PROBES:
        assert is_known_method(name) and name in METHODS


def test_prototype_is_the_cosine_nearest_mean_of_centred_normalised_features():
    x, y = toy()
    q, _ = toy(seed=1)
    center = x.mean(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    z = unit(x - center)
    means = unit(np.stack([z[y == c].mean(0) for c in range(3)]))
    cosines = unit(q - center) @ means.T  # hand-computed CL2N
    expected = np.exp(PROTOTYPE_TEMPERATURE * cosines)
    expected /= expected.sum(1, keepdims=True)
    head = prototype_head(torch.from_numpy(x), torch.from_numpy(y), 3)
    with torch.no_grad():
        probs = head(torch.from_numpy(q)).softmax(-1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == cosines.argmax(1)).all()
    with pytest.raises(ValueError, match="no training image"):
        prototype_head(torch.from_numpy(x), torch.from_numpy(y), 4)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_matches_scikit_learn_cosine_distance_weighted(k):
    x, y = toy()
    q, _ = toy(seed=1)
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance",
                                     algorithm="brute").fit(x, y).predict_proba(q)
    head = CosineKNNHead(torch.from_numpy(x), torch.from_numpy(y), 3, k)
    with torch.no_grad():
        probs = head(torch.from_numpy(q)).softmax(-1).numpy()
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    # a query equal to a training image takes that image's label outright, as in scikit-learn
    with torch.no_grad():
        assert head.vote_shares(torch.from_numpy(x[:1]))[0, y[0]].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="between 1 and"):
        CosineKNNHead(torch.from_numpy(x), torch.from_numpy(y), 3, len(x) + 1)


@pytest.mark.parametrize("classes", [3, 2])
def test_logreg_matches_scikit_learn_on_standardised_features(classes):
    x, y = toy(classes=classes)
    x = x.astype(np.float64)  # what run_logreg fits on
    q, _ = toy(classes=classes, seed=1)
    for c in (0.01, 1.0):
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)
                                  ).fit(x, y).predict_proba(q)
        head = logistic_head(x, y, classes, c, seed=0)
        assert isinstance(head, torch.nn.Linear)  # the linear probe's head format
        with torch.no_grad():
            probs = head(torch.from_numpy(q)).softmax(-1).numpy()
        np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_grid_choice_is_the_best_validation_accuracy():
    x, y = toy(n_per_class=8)
    xv, yv = toy(n_per_class=5, seed=3)
    ctx = SimpleNamespace(val=SimpleNamespace(labels=torch.from_numpy(yv)), task=SINGLE_LABEL)
    grid = [k for k in K_GRID if k <= len(y)]
    k, head, val, history = select_on_validation(
        ctx, "k", grid, lambda k: CosineKNNHead(torch.from_numpy(x), torch.from_numpy(y), 3, k),
        torch.from_numpy(xv))
    accuracies = {kk: KNeighborsClassifier(n_neighbors=kk, metric="cosine", weights="distance",
                                           algorithm="brute").fit(x, y).score(xv, yv)
                  for kk in grid}
    assert val.accuracy == pytest.approx(max(accuracies.values()))
    assert accuracies[k] == pytest.approx(max(accuracies.values()))
    assert [e["k"] for e in history.evaluations] == grid
    assert int(head.k) == k


FAST = dict(shots=3, seed=1, pretrained=False, num_workers=0)


@pytest.fixture(scope="module")
def probe_runs(synthetic_data, tiny_model_names, tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    runs = {}
    for method in PROBES:
        result = cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"],
                                method=method, out=str(root / method),
                                cache_dir=str(root / "cache"), **FAST)
        runs[method] = (result, root / method)
    return runs


@pytest.mark.parametrize("method", PROBES)
def test_probe_run_round_trips_through_load(method, probe_runs):
    result, out = probe_runs[method]
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "predictions.csv",
                                               "head.safetensors", "train.log"}
    metrics = json.loads((out / "metrics.json").read_text())
    chosen = metrics["hyperparameters"]
    if method == "knn":
        assert chosen["k"] in chosen["k_grid"] and max(chosen["k_grid"]) <= 3 * 4
        assert int(load_file(str(out / "head.safetensors"))["k"]) == chosen["k"]
    elif method == "logreg":
        assert chosen["C"] in C_GRID
        assert set(load_file(str(out / "head.safetensors"))) == {"weight", "bias"}
    else:
        assert chosen == {"temperature": PROTOTYPE_TEMPERATURE}
    assert result.timings["feature_extraction_s"] >= 0 and metrics["steps"] == 0
    reference = pd.read_csv(out / "predictions.csv")
    columns = [c for c in reference.columns if c.startswith("prob_")]
    model = cytotune.load(out)
    predicted = model.predict(list(reference["path"]))
    np.testing.assert_allclose(predicted.probs.numpy(), reference[columns].to_numpy(), atol=1e-5)
    assert predicted.predicted == list(reference["predicted"])


def test_knn_and_prototype_export_is_a_clear_error(probe_runs, tmp_path):
    from cytotune.inference import ExportError, export

    for method in ("knn", "prototype"):
        with pytest.raises(ExportError, match=method):
            export(probe_runs[method][1], tmp_path / method)
        assert not (tmp_path / method).exists()


def test_probes_refuse_multi_label_data(tmp_path, synthetic_data, tiny_model_names):
    images = sorted(p for p in synthetic_data.rglob("*.png"))[:24]
    rows = [{"path": str(p), "a": i % 2, "b": (i // 2) % 2} for i, p in enumerate(images)]
    csv = tmp_path / "ml.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="multi-label"):
        cytotune.train(data=str(csv), label_columns="a,b", model=tiny_model_names["uni"],
                       method="knn", pretrained=False, num_workers=0)


def test_shipped_fewshot_probes_sweep_runs_each_probe_once_per_shots_and_seed(monkeypatch, tmp_path):
    from cytotune.experiments.sweep import load_sweep

    monkeypatch.setenv("CYTOTUNE_MLCC", str(tmp_path))
    runs = load_sweep("fewshot_probes").runs()
    per_method = {m: sum(r.config.method == m for r in runs)
                  for m in ("linear", "lora", *PROBES)}
    assert per_method == {"linear": 50, "lora": 50, "prototype": 25, "knn": 25, "logreg": 25}
