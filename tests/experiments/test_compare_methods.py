"""The ready comparison sweep (linear probe vs LoRA vs full fine-tuning, data fractions,
leave-one-domain-out), its planning, and its table and figure in the report."""
from __future__ import annotations

import pandas as pd
import pytest

from cytotune.data import write_synthetic_manifest
from cytotune.experiments import ResultStore, load_sweep, make_report, run_sweep
from cytotune.training.config import ConfigError


@pytest.fixture(scope="module")
def domain_csv(synthetic_data, tmp_path_factory):
    return write_synthetic_manifest(synthetic_data, tmp_path_factory.mktemp("cmp") / "d.csv",
                                    domains=("centre_a", "centre_b"))


def _environ(csv, tmp_path):
    return {"CYTOTUNE_COMPARE_DATA": str(csv), "CYTOTUNE_COMPARE_DOMAINS": "centre_a,centre_b",
            "CYTOTUNE_CACHE": str(tmp_path / "cache")}


def test_the_shipped_sweep_plans_every_method_fraction_and_held_out_domain(domain_csv, tmp_path):
    sweep = load_sweep("compare_methods", environ=_environ(domain_csv, tmp_path))
    runs = sweep.runs()
    assert list(sweep.datasets) == ["mine", "mine_lodo.heldout-centre_a", "mine_lodo.heldout-centre_b"]
    combos = {(r.backbone, r.method) for r in runs}
    assert combos == {("clip-vit-b16", "linear"), ("clip-vit-b16", "lora"), ("clip-vit-b16", "full"),
                      ("timm:resnet50", "linear"), ("timm:resnet50", "full")}  # no LoRA on the CNN
    assert {r.fraction for r in runs} == {1.0, 10.0, 100.0}
    for run in runs:
        domains = run.config.data.test_domains
        if run.dataset == "mine":
            assert domains is None
        else:
            assert domains == (run.dataset.rsplit("-", 1)[1],)
    # 3 data sets x (3 + 2 methods) x 3 fractions x 3 seeds x 2 lrs
    assert len(runs) == 3 * 5 * 3 * 3 * 2


def test_exclude_and_leave_one_domain_out_are_checked(domain_csv, tmp_path):
    env = _environ(domain_csv, tmp_path)
    with pytest.raises(ConfigError, match=r"exclude\[0\]: unknown key\(s\) model"):
        load_sweep("compare_methods", overrides={"exclude": [{"model": "x"}]}, environ=env)
    with pytest.raises(ConfigError, match="leave_one_domain_out: give at least two domains"):
        load_sweep("compare_methods", environ={**env, "CYTOTUNE_COMPARE_DOMAINS": "centre_a"})
    with pytest.raises(ConfigError, match="exclude leaves no run"):
        load_sweep("compare_methods", overrides={"exclude": [{"dataset": "mine"},
                                                             {"dataset": "mine_lodo"}]}, environ=env)


def test_comparison_sweep_runs_and_reports_methods_side_by_side(domain_csv, tmp_path):
    overrides = {"backbones": ["uni-tiny"], "seeds": [1], "fractions": [10, 100],
                 "lrs": {"linear": [1e-2], "lora": [1e-2], "full": [1e-3]},
                 "base.model.pretrained": False, "base.lora": {"rank": 2},
                 "base.optim.steps": 2, "base.optim.val_every": 2, "base.optim.batch_size": 8,
                 "base.optim.linear_epochs": 2, "base.num_workers": 0, "base.device": "cpu"}
    sweep = load_sweep("compare_methods", overrides=overrides,
                       environ=_environ(domain_csv, tmp_path))
    store = ResultStore(tmp_path / "s.sqlite")
    summary = run_sweep(sweep, store, progress=False)
    assert summary.failed == [] and summary.planned == 3 * 3 * 2
    records = store.records()
    held_out = records[records["dataset"] != "mine"]
    assert held_out["ood_accuracy"].notna().all() and held_out["ood_n"].eq(24).all()  # 4 classes x 6 per domain
    assert records.loc[records["dataset"] == "mine", "ood_accuracy"].isna().all()

    report = make_report(store, tmp_path / "report", metrics=["accuracy", "auroc"])
    # two or more methods: one table per data set and backbone, methods as rows, training sizes
    # as columns; an out-of-domain column after each size only where the data set holds
    # test domains (issue 30)
    def table(dataset):
        return pd.read_csv(tmp_path / "report" / "tables" /
                           f"compare_methods__{dataset}__uni-tiny__accuracy.csv",
                           index_col=0, keep_default_na=False)

    mine = table("mine")
    assert list(mine.index) == ["linear", "lora", "full"]
    # the in-domain data set has no out-of-domain value, so no such column
    assert list(mine.columns) == ["trainable parameters", "10%", "100%"]
    for dataset in ("mine_lodo.heldout-centre_a", "mine_lodo.heldout-centre_b"):
        held_out = table(dataset)
        assert list(held_out.index) == ["linear", "lora", "full"]
        assert list(held_out.columns) == ["trainable parameters", "10%", "10% (out of domain)",
                                          "100%", "100% (out of domain)"]
    assert table("mine_lodo.heldout-centre_b").loc["full", "10% (out of domain)"] != ""
    params = {m: int(mine.loc[m, "trainable parameters"].replace(",", ""))
              for m in ("linear", "lora", "full")}
    assert params["linear"] < params["lora"] < params["full"]
    figure = tmp_path / "report" / "figures" / "comparison__compare_methods__accuracy.png"
    assert figure in report.figures and figure.stat().st_size > 0
    assert "methods compared" in report.html.read_text()
