"""Issue 19 in the report: a train-cv linear run's learning rate is chosen on its CV score, and
runs.csv / the HTML page show what each probe run chose (k, C, select_on, fallback)."""
from __future__ import annotations

import pandas as pd

from cytotune.experiments import ResultStore, make_report, select_best
from experiments_helpers import hand_record


def cv_record(run_id: str, *, seed: int, lr: float, val: float, test: float, cv=None,
              cv_loss: float = 0.5, **extra):
    """A linear run trained with select_on: train-cv (``cv``: its CV accuracy; None: it fell
    back to validation)."""
    record = hand_record(run_id, seed=seed, lr=lr, val=val, test=test, **extra)
    record["config"]["select_on"] = "train-cv"
    if cv is None:
        record["metrics"]["hyperparameters"] = {"select_on": "val",
                                                "select_on_requested": "train-cv",
                                                "select_on_fallback": "1 image"}
    else:
        record["metrics"]["hyperparameters"] = {"select_on": "train-cv", "cv_folds": 2,
                                                "cv_scheme": "stratified 2-fold"}
        record["metrics"]["train_cv"] = {"accuracy": cv, "loss": cv_loss, "folds": 2}
    return record


def test_train_cv_runs_choose_their_lr_on_the_cv_score(tmp_path):
    records = [
        # seed 1: validation prefers 1e-2, the CV score 1e-3
        cv_record("1a", seed=1, lr=1e-3, val=0.5, test=0.8, cv=0.9),
        cv_record("1b", seed=1, lr=1e-2, val=0.9, test=0.2, cv=0.6),
        # seed 2: equal CV accuracy, the lower CV loss decides (not validation)
        cv_record("2a", seed=2, lr=1e-3, val=0.9, test=0.1, cv=0.7, cv_loss=0.8),
        cv_record("2b", seed=2, lr=1e-2, val=0.1, test=0.7, cv=0.7, cv_loss=0.3),
        # seed 3 fell back to validation (1 shot per class): chosen on validation
        cv_record("3a", seed=3, lr=1e-3, val=0.4, test=0.3),
        cv_record("3b", seed=3, lr=1e-2, val=0.6, test=0.6),
        # the study's protocol beside them: a variant of its own, chosen on validation
        hand_record("v1", seed=1, lr=1e-3, val=0.5, test=0.8),
        hand_record("v2", seed=1, lr=1e-2, val=0.9, test=0.2),
    ]
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    selected = select_best(store.records(full=True)).set_index("run_id")
    assert sorted(selected.index) == ["1a", "2b", "3b", "v2"]
    assert selected.loc["1a", "lr_chosen_on"] == "train-cv"
    assert selected.loc["2b", "lr_chosen_on"] == "train-cv"
    assert selected.loc["3b", "lr_chosen_on"] == "val"
    assert selected.loc["v2", "lr_chosen_on"] == "val"
    assert selected.loc["1a", "variant"] != selected.loc["v2", "variant"]
    report = make_report(store, tmp_path / "out", metrics=("accuracy",))
    summary = report.summary.set_index("variant")
    cv_row = summary.loc[selected.loc["1a", "variant"]]
    assert cv_row["lrs"] == "0.001,0.01,0.01"
    assert abs(cv_row["mean"] - (80 + 70 + 60) / 3) < 1e-9
    on_disk = pd.read_csv(tmp_path / "out" / "selected.csv").set_index("run_id")
    assert on_disk.loc["1a", "lr_chosen_on"] == "train-cv"


def test_runs_csv_and_html_show_what_probes_chose(tmp_path):
    knn = hand_record("knn", method="knn", seed=1, lr=1e-3)
    knn["metrics"]["hyperparameters"] = {"k": 5, "k_grid": [1, 2, 5], "select_on": "train-cv",
                                         "cv_scheme": "stratified 2-fold", "cv_folds": 2}
    knn["config"]["select_on"] = "train-cv"
    logreg = hand_record("logreg", method="logreg", seed=1, lr=1e-3)
    logreg["metrics"]["hyperparameters"] = {"C": 0.01, "C_grid": [0.01, 1.0], "select_on": "val",
                                            "select_on_requested": "train-cv",
                                            "select_on_fallback": "class(es) [2] have 1 image"}
    logreg["config"]["select_on"] = "train-cv"
    tip = hand_record("tip", method="tip-adapter", seed=1, lr=1e-3)
    tip["metrics"]["hyperparameters"] = {"alpha": 1.0, "beta": 5.5, "select_on": "val"}
    linear = cv_record("lin", seed=1, lr=1e-3, val=0.5, test=0.5, cv=0.75)
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many([knn, logreg, tip, linear, hand_record("plain", seed=1)])
    make_report(store, tmp_path / "out")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")
    assert runs.loc["knn", "hp_k"] == 5 and runs.loc["logreg", "hp_C"] == 0.01
    assert runs.loc["tip", "hp_alpha"] == 1.0 and runs.loc["tip", "hp_beta"] == 5.5
    assert runs.loc["knn", "hp_select_on"] == "train-cv"
    assert runs.loc["logreg", "hp_select_on"] == "val"
    assert runs.loc["logreg", "hp_select_on_requested"] == "train-cv"
    assert "1 image" in runs.loc["logreg", "hp_select_on_fallback"]
    assert runs.loc["knn", "hp_cv_folds"] == 2
    assert runs.loc["lin", "train_cv_accuracy"] == 0.75
    assert pd.isna(runs.loc["plain", "hp_select_on"])  # an older run records nothing
    assert not any(c.endswith("_grid") for c in runs.columns)
    page = (tmp_path / "out" / "report.html").read_text()
    for column in ("hp_k", "hp_C", "hp_alpha", "hp_select_on_fallback", "train_cv_accuracy"):
        assert column in page


def test_reports_without_choices_gain_no_columns(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many([hand_record("a", seed=1), hand_record("b", seed=1, lr=1e-2)])
    make_report(store, tmp_path / "out")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert not [c for c in runs.columns if c.startswith("hp_") or c.startswith("train_cv")]
