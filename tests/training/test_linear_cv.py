"""Issue 19 for the linear probe: ``select_on: train-cv`` scores a run by cross-validation on its
training features (fold heads trained one by one as the reference), falls back to validation at 1
shot per class, gives the same result alone and in a sweep's group, and the flag is accepted for
linear only among the trained methods."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

import cytotune
from cytotune.api import build_config
from cytotune.training.config import ConfigError
from cytotune.training.heads import fit_linear_heads
from cytotune.training.loop import fit
from cytotune.training.methods.base import new_head
from cytotune.training.methods.linear import linear_problem, linear_result
from cytotune.training.methods.linear_cv import cv_metrics, linear_cv
from cytotune.training.task import SINGLE_LABEL

CPU = torch.device("cpu")


def context(labels: np.ndarray, seed: int = 3, lr: float = 3e-2, **optim):
    """The parts of a MethodContext a linear probe's head training reads."""
    config = build_config(data="d", method="linear", select_on="train-cv", seed=seed, lr=lr,
                          batch_size=4, linear_epochs=6, **optim)
    split = SimpleNamespace(labels=torch.as_tensor(labels))
    return SimpleNamespace(config=config, train=split, val=split, test=split, task=SINGLE_LABEL,
                           class_names=["a", "b", "c"], device=CPU)


def blobs(counts=(6, 5, 4), dim: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = rng.normal(size=(3, dim))[y] + 1.5 * rng.normal(size=(len(y), dim))
    return torch.from_numpy(x).float(), y


def reference_cv(x: torch.Tensor, y: np.ndarray, ctx) -> tuple[float, float]:
    """Mean held-out accuracy and cross-entropy of heads trained fold by fold with ``fit``
    (torch's AdamW), on scikit-learn's stratified folds."""
    o, seed = ctx.config.optim, ctx.config.seed
    n = min(5, int(np.bincount(y).min()))
    accs, losses = [], []
    for tr, te in StratifiedKFold(n, shuffle=True, random_state=seed).split(y, y):
        head = new_head(x.shape[1], 3, seed, CPU)
        xt, yt = x[tr], torch.from_numpy(y[tr])
        fit(head, lambda idx: torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx]),
            len(tr), None, lr=o.lr, weight_decay=o.weight_decay, batch_size=o.batch_size,
            steps=o.linear_steps(len(tr)), warmup_fraction=o.warmup_fraction, val_every=None,
            seed=seed, device=CPU)
        with torch.no_grad():
            logits = head(x[te])
            target = torch.from_numpy(y[te])
            accs.append(float((logits.argmax(1) == target).float().mean()))
            losses.append(float(torch.nn.functional.cross_entropy(logits, target)))
    return float(np.mean(accs)), float(np.mean(losses))


def train(ctx, x: torch.Tensor):
    problem = linear_problem(ctx, x, x)
    cv = linear_cv(ctx, problem)
    history, *folds = fit_linear_heads([problem, *cv.problems], CPU, ctx.task)
    return problem, cv, history, folds


@pytest.mark.parametrize("counts,optim", [((6, 5, 4), {}), ((2, 2, 2), {}),
                                          ((7, 5, 3), {"steps": 9})])
def test_cv_score_equals_heads_trained_fold_by_fold(counts, optim):
    x, y = blobs(counts)
    ctx = context(y, **optim)
    problem, cv, history, _ = train(ctx, x)
    assert cv.hyperparameters == {"select_on": "train-cv", "cv_folds": min(5, min(counts)),
                                  "cv_scheme": f"stratified {min(5, min(counts))}-fold"}
    got = cv_metrics(ctx, cv, x)
    accuracy, loss = reference_cv(x, y, ctx)
    assert got["folds"] == min(5, min(counts))
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert got["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    # the final head: all training features, the fixed schedule, the last step kept
    assert problem.validate is None and history.best_step == history.steps == problem.steps
    head = new_head(x.shape[1], 3, ctx.config.seed, CPU)
    yt = torch.from_numpy(y)
    o = ctx.config.optim
    fit(head, lambda idx: torch.nn.functional.cross_entropy(head(x[idx]), yt[idx]), len(y), None,
        lr=o.lr, weight_decay=o.weight_decay, batch_size=o.batch_size, steps=problem.steps,
        warmup_fraction=o.warmup_fraction, val_every=None, seed=ctx.config.seed, device=CPU)
    torch.testing.assert_close(problem.head.weight, head.weight, atol=1e-5, rtol=1e-4)


def test_one_shot_per_class_falls_back_to_validation():
    x, y = blobs((1, 1, 1))
    ctx = context(y)
    problem, cv, history, folds = train(ctx, x)
    assert not cv.active and not folds and problem.validate is not None
    assert cv.hyperparameters["select_on"] == "val"
    assert cv.hyperparameters["select_on_requested"] == "train-cv"
    assert "have 1 training image" in cv.hyperparameters["select_on_fallback"]
    result = linear_result(ctx, problem, history, x, x, {}, cv, folds)
    assert "train_cv" not in result.extra_metrics
    assert result.hyperparameters["select_on"] == "val"
    val_ctx = copy.copy(ctx)
    val_ctx.config = build_config(data="d", method="linear", seed=3)
    assert linear_cv(val_ctx, linear_problem(val_ctx, x, x)).hyperparameters == {
        "select_on": "val"}


def test_config_accepts_train_cv_for_linear_only_among_trained_methods():
    build_config(data="d", method="linear", select_on="train-cv").validate()
    for method in ("lora", "full"):
        with pytest.raises(ConfigError, match="implemented for methods knn, linear, logreg"):
            build_config(data="d", method=method, select_on="train-cv").validate()


def test_linear_run_alone_and_grouped_record_the_same_cv_score(synthetic_data, tiny_model_names,
                                                              tmp_path):
    from cytotune.training.group import plan_groups, run_training_group
    from cytotune.training.runner import run_training

    def configs(where):
        return [build_config(data=str(synthetic_data), model=tiny_model_names["uni"],
                             method="linear", select_on="train-cv", pretrained=False,
                             num_workers=0, device="cpu", cache_dir=None, seed=1, lr=lr,
                             shots=shots, linear_epochs=8, out=str(tmp_path / where / str(i)))
                for i, (lr, shots) in enumerate([(1e-2, 2), (3e-2, 2), (1e-2, 3), (1e-2, 1)])]

    alone = [run_training(c) for c in configs("alone")]
    grouped = configs("group")
    assert len(plan_groups(grouped, pack_size=1)) == 1
    together = run_training_group(grouped)
    for a, b in zip(alone, together):
        assert not isinstance(b, Exception), b
        assert a.metrics["hyperparameters"] == b.metrics["hyperparameters"]
        assert a.metrics["best_step"] == b.metrics["best_step"]
        pa = a.predictions.filter(like="prob_").to_numpy()
        pb = b.predictions.filter(like="prob_").to_numpy()
        assert abs(pa - pb).max() < 1e-4
        if "train_cv" in a.metrics:
            for key in ("accuracy", "loss"):
                assert b.metrics["train_cv"][key] == pytest.approx(a.metrics["train_cv"][key],
                                                                   rel=1e-4, abs=1e-5)
            assert a.metrics["train_cv"]["folds"] == b.metrics["train_cv"]["folds"]
            assert a.metrics["best_step"] == a.metrics["steps"]  # no early stopping
    assert "train_cv" in alone[0].metrics and "train_cv" not in alone[3].metrics  # 1 shot
    assert alone[3].metrics["hyperparameters"]["select_on_requested"] == "train-cv"
    saved = json.loads((together[0].out_dir / "metrics.json").read_text())
    assert saved["train_cv"]["folds"] == 2 and saved["hyperparameters"]["select_on"] == "train-cv"


def test_cytotune_train_linear_with_train_cv(synthetic_data, tiny_model_names, tmp_path):
    cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"], method="linear",
                   select_on="train-cv", shots=2, seed=1, pretrained=False, num_workers=0,
                   linear_epochs=4, cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "r"))
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 0.0 <= saved["train_cv"]["accuracy"] <= 1.0
    assert saved["hyperparameters"]["cv_scheme"] == "stratified 2-fold"
