"""Issue 19: knn's k and logreg's C chosen by cross-validation on the training images
(``select_on: train-cv``): the folds and choices against scikit-learn over the same folds, the
fallback to validation with its reason, what metrics.json records, the flag, config and sweeps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.base import BaseEstimator, TransformerMixin

import cytotune
from cytotune.api import build_config
from cytotune.cli import build_parser, train_options
from cytotune.training.config import ConfigError
from cytotune.training.methods.cv_selection import fold_train_size, plan_folds, select_by_cv
from cytotune.training.methods.feature_probes import C_GRID, K_GRID, logistic_head
from cytotune.training.methods.probe_heads import CosineKNNHead
from cytotune.training.task import SINGLE_LABEL


def noisy(counts=(7, 6, 5), dim: int = 6, spread: float = 2.5, seed: int = 0):
    """Overlapping Gaussian blobs (so grid values score differently), offset from the origin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim)) + 4
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_folds_are_stratified_k_fold_with_at_most_five_splits():
    _, y = noisy()
    plan = plan_folds(y, seed=3, allow_singletons=False)
    assert plan.scheme == "stratified 5-fold" and not plan.reason
    reference = StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(y, y)
    for (tr, te), (rtr, rte) in zip(plan.folds, reference):
        np.testing.assert_array_equal(tr, rtr)
        np.testing.assert_array_equal(te, rte)
    two = plan_folds(np.repeat([0, 1, 2], 2), seed=0, allow_singletons=False)
    assert two.scheme == "stratified 2-fold"  # 2 shots: every training fold keeps each class
    assert all(sorted(np.repeat([0, 1, 2], 2)[tr]) == [0, 1, 2] for tr, _ in two.folds)


def test_singleton_classes_mean_leave_one_out_for_knn_and_a_fallback_for_logreg():
    y = np.array([0, 0, 0, 1, 1, 2])
    knn = plan_folds(y, seed=0, allow_singletons=True)
    assert knn.scheme.startswith("leave-one-out over the 5 images")
    assert [te.tolist() for _, te in knn.folds] == [[0], [1], [2], [3], [4]]
    assert all(5 in tr for tr, _ in knn.folds)  # the singleton is always a neighbour
    logreg = plan_folds(y, seed=0, allow_singletons=False)
    assert not logreg.folds and "class(es) [2] have 1 training image" in logreg.reason
    one_shot = plan_folds(np.arange(4), seed=0, allow_singletons=True)
    assert not one_shot.folds and "every class has 1 training image" in one_shot.reason
    assert "fewer than two classes" in plan_folds(np.zeros(4), 0, allow_singletons=True).reason


def knn_fit(x, y, classes=3):
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    return lambda k, tr: CosineKNNHead(xt[torch.from_numpy(tr)], yt[torch.from_numpy(tr)],
                                       classes, int(k))


def sklearn_knn():
    return KNeighborsClassifier(metric="cosine", weights="distance", algorithm="brute")


# data seeds: 0 ties at the top (the lower loss decides), 2 and 1 have one best k
@pytest.mark.parametrize("allow_singletons,counts,seed", [(False, (7, 6, 5), 0),
                                                          (False, (7, 6, 5), 2),
                                                          (True, (7, 6, 1), 1)])
def test_knn_cv_choice_matches_grid_search_over_the_same_folds(allow_singletons, counts, seed):
    x, y = noisy(counts, seed=seed)
    plan = plan_folds(y, seed=1, allow_singletons=allow_singletons)
    grid = [k for k in K_GRID if k <= fold_train_size(plan)]
    k, history = select_by_cv("k", grid, knn_fit(x, y), torch.from_numpy(x).float(),
                              torch.from_numpy(y), plan, SINGLE_LABEL)
    search = GridSearchCV(sklearn_knn(), {"n_neighbors": grid}, cv=plan.folds,
                          scoring="accuracy").fit(x, y)
    scores = [e["cv_score"] for e in history.evaluations]
    np.testing.assert_allclose(scores, search.cv_results_["mean_test_score"], atol=1e-6)
    assert len(set(np.round(scores, 6))) > 1  # the grid values do score differently
    best = max(scores)
    tied = [e for e in history.evaluations if abs(e["cv_score"] - best) < 1e-9]
    assert k == min(tied, key=lambda e: e["cv_loss"])["k"]  # ties: the lower held-out loss
    assert (len(tied) == 1) == (seed > 0)
    if len(tied) == 1:
        assert k == search.best_params_["n_neighbors"]


class UnitMeanNorm(TransformerMixin, BaseEstimator):
    """Features divided by the mean L2 norm of the (fold's) training features, as logreg does."""

    def fit(self, x, y=None):
        self.scale_ = np.linalg.norm(x, axis=1).mean()
        return self

    def transform(self, x):
        return x / self.scale_


def test_logreg_cv_choice_matches_grid_search_over_the_same_folds():
    x, y = noisy(seed=2)
    plan = plan_folds(y, seed=0, allow_singletons=False)
    c, history = select_by_cv(
        "C", C_GRID, lambda c, tr: logistic_head(x[tr], y[tr], 3, float(c), seed=0),
        torch.from_numpy(x).float(), torch.from_numpy(y), plan, SINGLE_LABEL)
    pipe = make_pipeline(UnitMeanNorm(), LogisticRegression(max_iter=1000))
    search = GridSearchCV(pipe, {"logisticregression__C": list(C_GRID)}, cv=plan.folds,
                          scoring="accuracy").fit(x, y)
    scores = [e["cv_score"] for e in history.evaluations]
    np.testing.assert_allclose(scores, search.cv_results_["mean_test_score"], atol=1e-6)
    best = max(scores)
    tied = [e for e in history.evaluations if abs(e["cv_score"] - best) < 1e-9]
    assert len(tied) == 1 and c == search.best_params_["logisticregression__C"]


def test_config_flag_and_sweep_accept_select_on(tmp_path):
    from cytotune.experiments.sweep import load_sweep

    args = build_parser().parse_args(["train", "--data", "d", "--method", "knn",
                                      "--select-on", "train-cv"])
    config = build_config(None, **train_options(args))
    assert config.select_on == "train-cv"
    assert build_config(data="d", method="knn").select_on == "val"  # the study's protocol
    with pytest.raises(ConfigError, match="select_on.*'every-way'.*not one of"):
        build_config(data="d", select_on="every-way")
    with pytest.raises(ConfigError, match="implemented for methods knn, linear, logreg.*'lora'"):
        build_config(data="d", method="lora", select_on="train-cv").validate()
    for method in ("prototype", "zero-shot", "knn", "logreg", "linear"):  # nothing, or CV
        build_config(data="d", method=method, select_on="train-cv").validate()
    sweep = {"name": "t", "datasets": {"a": {"source": "/data/a"}}, "backbones": ["uni"],
             "method": ["knn", "logreg", "prototype"], "seeds": [1], "shots": [1, 2]}
    for loaded in (load_sweep({**sweep, "base": {"select_on": "train-cv"}}),
                   load_sweep(sweep, overrides={"base.select_on": "train-cv"})):
        assert {r.config.select_on for r in loaded.runs()} == {"train-cv"}
    assert {r.config.select_on for r in load_sweep(sweep).runs()} == {"val"}


FAST = dict(seed=1, pretrained=False, num_workers=0, select_on="train-cv")


def test_runs_record_the_selection_used_and_the_fallback(synthetic_data, tiny_model_names,
                                                         tmp_path):
    common = dict(data=str(synthetic_data), model=tiny_model_names["uni"],
                  cache_dir=str(tmp_path / "cache"), **FAST)
    cytotune.train(method="logreg", shots=2, out=str(tmp_path / "cv"), **common)
    chosen = json.loads((tmp_path / "cv" / "metrics.json").read_text())["hyperparameters"]
    assert chosen["select_on"] == "train-cv" and chosen["cv_scheme"] == "stratified 2-fold"
    assert chosen["C"] in chosen["C_grid"] and "select_on_fallback" not in chosen
    cytotune.train(method="knn", shots=1, out=str(tmp_path / "fallback"), **common)
    chosen = json.loads((tmp_path / "fallback" / "metrics.json").read_text())["hyperparameters"]
    assert chosen["select_on"] == "val" and chosen["select_on_requested"] == "train-cv"
    assert "every class has 1 training image" in chosen["select_on_fallback"]
    assert "select_on: train-cv" in (tmp_path / "fallback" / "config.yaml").read_text()
