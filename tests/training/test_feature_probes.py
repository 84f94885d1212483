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
from cytotune.training.methods.cv_selection import plan_folds, select_by_cv
from cytotune.training.methods.feature_probes import (C_DEFAULT, C_GRID, K_GRID, c_tie_rank,
                                                      logistic_head, select_on_validation)
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


def unit_norm_scaled(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``x`` divided by the mean L2 norm of ``train`` (what the logreg probe fits on)."""
    return x / np.linalg.norm(train, axis=1).mean()


@pytest.mark.parametrize("classes", [3, 2])
def test_logreg_matches_scikit_learn_on_features_scaled_to_unit_mean_norm(classes):
    x, y = toy(classes=classes)
    x = x.astype(np.float64)  # what run_logreg fits on
    q, _ = toy(classes=classes, seed=1)
    for c in (0.01, 1.0):
        reference = LogisticRegression(C=c, max_iter=1000).fit(
            unit_norm_scaled(x, x), y).predict_proba(unit_norm_scaled(q, x))
        head = logistic_head(x, y, classes, c, seed=0)
        assert isinstance(head, torch.nn.Linear)  # the linear probe's head format
        with torch.no_grad():
            probs = head(torch.from_numpy(q)).softmax(-1).numpy()
        np.testing.assert_allclose(probs, reference, atol=1e-4)


def near_constant_dims(shots: int, seed: int, classes: int = 4, informative: int = 16,
                       flat: int = 500):
    """Class blobs in ``informative`` dimensions plus ``flat`` dimensions that barely vary
    (std 1e-3 around 1, as dead or saturated units do): standardising on one image per class
    makes them as loud as the informative ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, informative)) * 1.5

    def draw(n_per_class: int):
        y = np.repeat(np.arange(classes), n_per_class)
        signal = centres[y] + rng.normal(size=(len(y), informative))
        noise = 1.0 + 1e-3 * rng.normal(size=(len(y), flat))
        return np.hstack([signal, noise]), y

    return draw(shots), draw(100)


@pytest.mark.parametrize("shots", [1, 2])
def test_logreg_is_not_drowned_by_near_constant_dimensions_at_1_and_2_shots(shots):
    """Issue 31: the standardised probe collapsed at 1 shot; scaled features keep it at the level
    of plain logistic regression on L2-normalised features, over 5 draws."""
    from sklearn.metrics import balanced_accuracy_score

    ours, l2n, standardised = [], [], []
    for seed in range(5):
        (x, y), (q, yq) = near_constant_dims(shots, seed)
        head = logistic_head(x, y, 4, C_DEFAULT, seed=0)
        with torch.no_grad():
            predicted = head(torch.from_numpy(q).float()).argmax(-1)
        ours.append(balanced_accuracy_score(yq, predicted))
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        l2n.append(balanced_accuracy_score(
            yq, LogisticRegression(C=C_DEFAULT, max_iter=1000).fit(unit(x), y).predict(unit(q))))
        standardised.append(balanced_accuracy_score(
            yq, make_pipeline(StandardScaler(), LogisticRegression(C=C_DEFAULT, max_iter=1000))
            .fit(x, y).predict(q)))
    assert np.mean(standardised) < 0.5  # the old probe: the flat dimensions win
    assert np.mean(ours) > 0.9
    assert np.mean(ours) >= np.mean(l2n) - 0.02


def scaled_heads(confident_when: str):
    """Builders of heads that all predict alike (so every C ties in accuracy) and grow more
    confident with C; validation labels that the heads get all right or all wrong."""
    x = torch.eye(3)
    labels = torch.arange(3) if confident_when == "right" else (torch.arange(3) + 1) % 3

    def build(c: float) -> torch.nn.Module:
        head = torch.nn.Linear(3, 3)
        with torch.no_grad():
            head.weight.copy_(torch.eye(3) * (1.0 + float(np.log10(c)) + 4.0))
            head.bias.zero_()
        return head

    return x, labels, build


@pytest.mark.parametrize("outcome", ["right", "wrong"])
def test_logreg_c_ties_go_to_the_default_not_to_a_grid_edge(outcome):
    """Issue 31: on tiny validation sets every C often ties in accuracy; the loss then picks an
    edge of the grid (the least confident C when the images are missed, the most confident when
    they are hit), and an exact tie kept the first, smallest C. Ties now go to C_DEFAULT."""
    x, labels, build = scaled_heads(outcome)
    ctx = SimpleNamespace(val=SimpleNamespace(labels=labels), task=SINGLE_LABEL)
    c, _, val, history = select_on_validation(ctx, "C", C_GRID, build, x, c_tie_rank)
    accuracies = {e["val_accuracy"] for e in history.evaluations}
    assert len(accuracies) == 1  # all tied
    losses = [e["val_loss"] for e in history.evaluations]
    edge = C_GRID[int(np.argmin(losses))]
    assert edge in (C_GRID[0], C_GRID[-1])  # what the loss alone would choose
    assert c == C_DEFAULT
    # identical heads: a full tie, which went to the grid's first value
    c, *_ = select_on_validation(ctx, "C", C_GRID, lambda c: build(1.0), x, c_tie_rank)
    assert c == C_DEFAULT
    # the same rule in cross-validation on the training images
    y = np.tile(np.arange(3), 2)
    xs = torch.eye(3).repeat(2, 1)
    ys = torch.from_numpy(y) if outcome == "right" else torch.from_numpy((y + 1) % 3)
    c, _ = select_by_cv("C", C_GRID, lambda c, tr: build(c), xs, ys,
                        plan_folds(y, seed=0, allow_singletons=False), SINGLE_LABEL,
                        prefer=c_tie_rank)
    assert c == C_DEFAULT
    # ties at equal distance from the default: the lower loss decides
    assert c_tie_rank(0.1) == c_tie_rank(10.0) > c_tie_rank(1.0) == 0


def test_logreg_c_is_still_chosen_on_score_when_scores_differ():
    x, labels, build = scaled_heads("right")
    ctx = SimpleNamespace(val=SimpleNamespace(labels=labels), task=SINGLE_LABEL)

    def build_wrong_below(c: float) -> torch.nn.Module:
        head = build(c)
        if c < 1e3:  # every C below 1e3 misses the validation images
            with torch.no_grad():
                head.weight.copy_(head.weight.roll(1, 0))
        return head

    c, *_ = select_on_validation(ctx, "C", C_GRID, build_wrong_below, x, c_tie_rank)
    assert c == 1e3  # the best score wins, however far from the default


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
                                               "head.safetensors", "train.log", "manifest.json"}
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
