"""Issue 16, item 1: a report cell pools only runs that differ in seed (and the learning rate
chosen per seed); runs whose settings differ otherwise get rows, lines and an lr choice of their
own, the differing settings are shown, and the report says so."""
from __future__ import annotations

import html
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cytotune.experiments import ResultStore, make_report, select_best, summarize
from experiments_helpers import hand_record

SRC = Path(__file__).resolve().parents[2] / "src"


def run(run_id: str, *, image_size=None, precision="auto", device="cpu", config=None,
        environment=None, **keys) -> dict:
    """A hand-made store record (no training) whose resolved config says ``image_size`` and
    ``precision``; ``config`` adds or replaces further config fields."""
    record = hand_record(run_id, **keys)
    record["config"] = {**record["config"], "model": {"name": record["backbone"],
                                                      "image_size": image_size},
                        "method": record["method"], "precision": precision, "device": device,
                        "out": f"runs/{run_id}", **(config or {})}
    record["device"] = device
    if environment is not None:
        record["metrics"]["environment"] = environment
    return record


def store_of(tmp_path: Path, records: list[dict]) -> ResultStore:
    store = ResultStore(tmp_path / "r.sqlite")
    store.insert_many(records)
    return store


def two_image_sizes() -> list[dict]:
    """Seeds 1 and 2, lrs 1e-3 and 1e-2, at 112 px and 224 px. At 112 px lr 1e-3 validates best
    (test 0.50, 0.60); at 224 px lr 1e-2 does (test 0.80, 0.90) but validates lower than the
    112 px choice, so an lr choice across sizes would take the 112 px runs only, and a pooled
    cell would mix the two sizes."""
    records = []
    for seed in (1, 2):
        small, large = 0.4 + 0.1 * seed, 0.7 + 0.1 * seed
        records += [
            run(f"112-{seed}-lo", image_size=112, seed=seed, lr=1e-3, val=0.9, test=small),
            run(f"112-{seed}-hi", image_size=112, seed=seed, lr=1e-2, val=0.7, test=0.1),
            run(f"224-{seed}-lo", image_size=224, seed=seed, lr=1e-3, val=0.6, test=0.2),
            run(f"224-{seed}-hi", image_size=224, seed=seed, lr=1e-2, val=0.8, test=large),
        ]
    return records


def test_runs_of_two_image_sizes_are_two_rows_with_their_own_lr_choice(tmp_path, caplog):
    store = store_of(tmp_path, two_image_sizes())
    selected = select_best(store.records(full=True))
    assert sorted(selected["run_id"]) == ["112-1-lo", "112-2-lo", "224-1-hi", "224-2-hi"]
    summary = summarize(selected, ["accuracy"]).set_index("variant")
    assert summary.loc["model.image_size=112", "mean"] == pytest.approx(55.0)
    assert summary.loc["model.image_size=224", "mean"] == pytest.approx(85.0)
    assert set(summary["seeds"]) == {2}

    with caplog.at_level(logging.WARNING, logger="cytotune.experiments.report"):
        report = make_report(store, tmp_path / "out", metrics=("accuracy",))
    table = report.tables["s__linear__all__accuracy"]
    assert list(table.index.names) == ["dataset", "setting"]
    assert list(table.index) == [("d", "model.image_size=112"), ("d", "model.image_size=224")]
    # seeds 1 and 2 give 50 and 60 at 112 px, 80 and 90 at 224 px: ± 5 over seeds
    assert table.loc[("d", "model.image_size=112"), "b"] == "55.00 [50.00, 60.00]"
    assert table.loc[("d", "model.image_size=224"), "b"] == "85.00 [80.00, 90.00]"
    assert report.summary.set_index("variant")["std"].to_dict() == {
        "model.image_size=112": pytest.approx(5.0), "model.image_size=224": pytest.approx(5.0)}
    # the statistics keep the variants apart too: compared with each other, never pooled
    paired = report.tables["paired__d__all_training_data__accuracy"]
    assert list(zip(paired["better"], paired["other"])) == [
        ("linear · b [model.image_size=224]", "linear · b [model.image_size=112]")]
    assert report.best["accuracy"].loc[("d", "all training data"), "best"] == \
        "linear · b [model.image_size=224]"
    # said on screen (a logged warning) and in the report's notes, page and Markdown
    (note,) = report.notes
    assert "model.image_size (112 vs 224)" in note and "d / b / linear / all data" in note
    assert "not pooled" in note
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [note]
    assert html.escape(note) in report.html.read_text()
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "| dataset | setting | b |" in md
    assert "| d | model.image_size=224 | 85.00 [80.00, 90.00] |" in md
    csv = pd.read_csv(tmp_path / "out" / "tables" / "s__linear__all__accuracy.csv")
    assert list(csv.columns) == ["dataset", "setting", "b"]
    assert "variant" in pd.read_csv(tmp_path / "out" / "summary.csv").columns


def test_precision_variants_are_split_and_named(tmp_path):
    records = []
    for seed in (1, 2, 3):
        records.append(run(f"fp32-{seed}", seed=seed, val=0.8, test=0.6))
        records.append(run(f"bf16-{seed}", precision="bf16", seed=seed, val=0.8, test=0.9))
    report = make_report(store_of(tmp_path, records), tmp_path / "out", metrics=("accuracy",))
    means = report.summary.set_index("variant")["mean"]
    # "auto" is shown with what it meant on the run's device
    assert means["precision=auto (fp32)"] == pytest.approx(60.0)
    assert means["precision=bf16"] == pytest.approx(90.0)
    (note,) = report.notes
    assert "precision (auto (fp32) vs bf16)" in note


def test_auto_precision_on_a_cpu_and_on_cuda_is_not_pooled(tmp_path):
    # the same config: "auto" is fp32 on a CPU and bf16 on CUDA
    records = [run("cpu", device="cpu", seed=1, test=0.6), run("gpu", device="cuda:0", seed=2,
                                                               test=0.9)]
    report = make_report(store_of(tmp_path, records), tmp_path / "out")
    assert set(report.summary["variant"]) == {"resolved precision=fp32",
                                              "resolved precision=bf16"}
    assert set(report.summary["seeds"]) == {1}


def test_runs_differing_only_in_seed_and_execution_details_pool_in_one_cell(tmp_path):
    records = [run(f"r{seed}", seed=seed, lr=lr, val=0.5 + lr, test=0.5 + 0.1 * seed,
                   device=f"cuda:{seed % 2}",
                   config={"num_workers": seed, "cache_dir": f"/cache/{seed}",
                           "overwrite": bool(seed % 2)})
               for seed in (1, 2, 3) for lr in (1e-3, 1e-2)]
    # the subject is pooling, not the statistics: cells as mean ± std (no intervals)
    report = make_report(store_of(tmp_path, records), tmp_path / "out", metrics=("accuracy",),
                         intervals=None)
    assert report.notes == []
    (row,) = report.summary.itertuples()
    assert row.variant == "" and row.seeds == 3 and row.mean == pytest.approx(70.0)
    (table,) = report.tables.values()
    assert table.index.name == "dataset" and table.loc["d", "b"] == "70.00±8.16"
    assert "setting" not in (tmp_path / "out" / "tables.md").read_text()


def test_every_other_config_field_splits(tmp_path):
    """Steps, rank, alpha, targets, augmentation, weights, data: each its own variant."""
    changes = {"optim.steps": {"optim": {"steps": 50}},
               "lora.rank": {"lora": {"rank": 16}},
               "lora.alpha": {"lora": {"alpha": 2.0}},
               "lora.targets": {"lora": {"targets": ["q", "k", "v"]}},
               "optim.augment": {"optim": {"augment": False}},
               "model.weights": {"model": {"name": "b", "weights": "/w/other.safetensors"}},
               "data.source": {"data": {"source": "/data/other"}},
               "data.options.level": {"data": {"options": {"level": 3}}}}
    for name, change in changes.items():
        records = [run(f"base{seed}", seed=seed, test=0.5) for seed in (1, 2)]
        records += [run(f"other{seed}", seed=seed, test=0.9, config=change) for seed in (1, 2)]
        summary = summarize(select_best(pd.concat([store_of(tmp_path / name, records)
                                                   .records(full=True)])), ["accuracy"])
        assert len(summary) == 2, name
        assert all(name in v for v in summary["variant"]), (name, list(summary["variant"]))


def test_a_recorded_environment_splits_by_version_and_fingerprints_not_by_machine(tmp_path):
    env = {"cytotune": "0.1.0", "torch": "2.3", "python": "3.11", "weights_fingerprint": "aa"}
    records = [run("a", seed=1, environment=env),
               run("b", seed=2, environment={**env, "torch": "2.4", "python": "3.12"}),
               run("c", seed=3, environment={**env, "cytotune": "0.2.0"}),
               run("d", seed=4, environment={**env, "weights_fingerprint": "bb"})]
    selected = select_best(store_of(tmp_path, records).records(full=True))
    cells = selected.groupby("variant")["run_id"].apply(sorted).to_dict()
    assert sorted(cells.values()) == [["a", "b"], ["c"], ["d"]]
    assert any("cytotune version=0.2.0" in v for v in cells)
    assert any("environment.weights_fingerprint=bb" in v for v in cells)


def test_labels_line_up_across_backbones_and_sample_sizes(tmp_path):
    # backbone b1 was run at 112 and 224 px, b2 only at 112 px: b2's runs carry the label too,
    # so the 112 px row holds both backbones; each setting has its own Average row (over the
    # two data sets d and e; e runs 2 points higher)
    records = []
    for dataset, lift in (("d", 0.0), ("e", 0.02)):
        for backbone, sizes in (("b1", (112, 224)), ("b2", (112,))):
            for size in sizes:
                for seed in (1, 2):
                    records.append(run(f"{dataset}{backbone}{size}{seed}", dataset=dataset,
                                       backbone=backbone, image_size=size, seed=seed,
                                       test=size / 400 + lift))
    # the subject is the layout of variants: cells as mean ± std, no comparison tables
    report = make_report(store_of(tmp_path, records), tmp_path / "out", metrics=("accuracy",),
                         intervals=None)
    (table,) = report.tables.values()
    assert list(table.index) == [("d", "model.image_size=112"), ("d", "model.image_size=224"),
                                 ("e", "model.image_size=112"), ("e", "model.image_size=224"),
                                 ("Average", "model.image_size=112"),
                                 ("Average", "model.image_size=224")]
    assert table.loc[("d", "model.image_size=112"), "b2"] == "28.00±0.00"
    assert table.loc[("d", "model.image_size=224"), "b2"] == ""
    assert table.loc[("Average", "model.image_size=224"), "b1"] == "57.00"
    assert table.loc[("Average", "model.image_size=224"), "b2"] == ""
    assert len(report.notes) == 1 and "2 cells " in report.notes[0]


def test_figures_draw_one_line_per_variant(tmp_path):
    from cytotune.experiments.report import shots_points

    records = []
    for size in (112, 224):
        for shots in (1, 4):
            for seed in (1, 2):
                records.append(run(f"lora{size}{shots}{seed}", sweep="exp2", method="lora",
                                   dataset="mlcc", backbone="clip", shots=shots, seed=seed,
                                   image_size=size, test=size / 400 + shots / 100))
        records.append(run(f"zs{size}", sweep="exp2", method="zero-shot", dataset="mlcc",
                           backbone="clip", image_size=size, test=size / 1000))
    report = make_report(store_of(tmp_path, records), tmp_path / "out",
                         figure_metrics=("accuracy",))
    points = shots_points(report.summary, "exp2", "lora", "accuracy")
    assert len(points) == 6  # 2 variants x (0, 1, 4 shots)
    for size in (112, 224):
        mine = points[points["variant"] == f"model.image_size={size}"]
        assert list(mine["shots"]) == [0, 1, 4]
        assert mine.iloc[0]["mean"] == pytest.approx(size / 10)  # its own zero-shot point
        assert mine.iloc[2]["mean"] == pytest.approx(size / 4 + 4)
    assert "shots__exp2__lora__accuracy.png" in {p.name for p in report.figures}
    drawn = pd.read_csv(tmp_path / "out" / "figures" / "shots__exp2__lora__accuracy.csv")
    drawn["shots"] = drawn["shots"].fillna(0)  # the zero-shot point (x: dodged per variant)
    assert drawn.groupby("variant")["shots"].apply(sorted).to_dict() == {
        f"model.image_size={size}": [0.0, 1.0, 4.0] for size in (112, 224)}


def test_comparison_table_keeps_variants_apart(tmp_path):
    records = []
    for method in ("linear", "lora"):
        for size in (112, 224):
            for seed in (1, 2):
                records.append(run(f"{method}{size}{seed}", sweep="cmp", method=method,
                                   fraction=10.0, seed=seed, image_size=size, test=size / 400))
    # the subject is the layout of variants: cells as mean ± std (no intervals)
    report = make_report(store_of(tmp_path, records), tmp_path / "out", intervals=None)
    # two methods: one table per data set and backbone, methods x training sizes (issue 30)
    table = report.tables["cmp__d__b__accuracy"]
    assert list(table.index.names) == ["method", "setting"]
    assert list(table.index) == [("linear", "model.image_size=112"),
                                 ("linear", "model.image_size=224"),
                                 ("lora", "model.image_size=112"), ("lora", "model.image_size=224")]
    assert table.loc[("lora", "model.image_size=224"), "10%"] == "56.00±0.00"
    assert table.loc[("lora", "model.image_size=112"), "10%"] == "28.00±0.00"
    # the headline metric's figure (balanced accuracy by default)
    assert "comparison__cmp__balanced_accuracy.png" in {p.name for p in report.figures}


def test_selection_refuses_records_that_cannot_be_told_apart(tmp_path):
    store = store_of(tmp_path, two_image_sizes())
    with pytest.raises(ValueError, match="records\\(full=True\\)"):
        select_best(store.records())
    # a variant column of the caller's own is used as given
    selected = select_best(store.records().assign(variant=""))
    assert len(selected) == 2


def test_pooled_fields_are_config_fields_and_execution_ones_stay_out_of_the_run_id():
    """A field pooled in the report but part of the run id would put two runs per seed and lr
    in one cell (one of them picked on validation): the execution fields must be those the
    sweep leaves out of the run id."""
    from cytotune.experiments.report_variants import POOLED_FIELDS, _default_settings
    from cytotune.experiments.sweep import EXECUTION_FIELDS

    assert set(POOLED_FIELDS) <= set(_default_settings())
    keys = {"seed", "optim.lr", "shots", "fraction", "method", "model.name"}
    assert set(POOLED_FIELDS) - keys == set(EXECUTION_FIELDS)


def test_cytotune_report_says_on_screen_which_cells_were_split(tmp_path):
    store_of(tmp_path, two_image_sizes())
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "cytotune.cli", "report",
                           str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    screen = done.stdout + done.stderr
    assert "runs differ in model.image_size (112 vs 224)" in screen
    assert "not pooled" in screen


def test_repeated_runs_of_identical_settings_are_named(tmp_path):
    # two runs whose recorded settings are the same for one seed and lr (e.g. a generated data
    # set drawn with other options, which the config does not show): the report says so
    records = [run("x1", seed=1, val=0.8, test=0.6), run("x2", seed=1, val=0.7, test=0.9)]
    report = make_report(store_of(tmp_path, records), tmp_path / "out")
    (note,) = report.notes
    assert "more than one run with the same recorded settings" in note and "seed 1" in note
    assert list(report.selected["run_id"]) == ["x1"]


def test_the_recorded_device_resolves_auto_precision_before_the_configs(tmp_path):
    # a run read back from its run directory may carry the planned config (device auto) and
    # the device it ran on in the record: it pools with a run whose config names that device
    read_back = run("back", device="cuda:0", seed=1)
    read_back["config"]["device"] = "auto"
    records = [read_back, run("live", device="cuda:0", seed=2)]
    report = make_report(store_of(tmp_path, records), tmp_path / "out", metrics=("accuracy",))
    assert report.notes == [] and list(report.summary["seeds"]) == [2]


def test_recorded_weights_and_test_data_fingerprints_split_cells(tmp_path):
    """Runs record metrics["fingerprints"] (training.runner.assemble_result): two checkpoints
    under one model name, or two versions of the test data, are never pooled."""
    def printed(run_id, seed, weights="w1", data="d1"):
        record = run(run_id, seed=seed)
        record["metrics"]["fingerprints"] = {"weights": weights, "test_data": data}
        return record

    records = [printed("a", 1), printed("b", 2), printed("c", 3, weights="w2"),
               printed("d", 4, data="d2")]
    selected = select_best(store_of(tmp_path, records).records(full=True))
    cells = selected.groupby("variant")["run_id"].apply(sorted).to_dict()
    assert sorted(cells.values()) == [["a", "b"], ["c"], ["d"]]
    assert any("weights fingerprint=w2" in v for v in cells)
    assert any("test_data fingerprint=d2" in v for v in cells)


def test_runs_selecting_on_validation_and_by_cross_validation_are_not_pooled(tmp_path):
    """Issue 19: select_on val (the study's protocol) and train-cv are two settings."""
    records = [run(f"val{seed}", method="knn", shots=1, seed=seed, test=0.5) for seed in (1, 2)]
    records += [run(f"cv{seed}", method="knn", shots=1, seed=seed, test=0.9,
                    config={"select_on": "train-cv"}) for seed in (1, 2)]
    summary = summarize(select_best(store_of(tmp_path, records).records(full=True)),
                        ["accuracy"]).set_index("variant")
    assert summary.loc["select_on=train-cv", "mean"] == pytest.approx(90.0)
    assert summary.loc["select_on=val", "mean"] == pytest.approx(50.0)


def test_a_fingerprint_told_by_another_setting_is_left_out_of_the_label():
    """Stain normalisation changes the test pixels' fingerprint: `data.stain_norm=macenko` says
    it, so the label does not repeat it; where runs with equal settings differ in it, it stays."""
    from cytotune.experiments.report_variants import TEST_DATA_FINGERPRINT, _without_implied

    names = ["data.stain_norm", TEST_DATA_FINGERPRINT]
    told = [{"data.stain_norm": "none", TEST_DATA_FINGERPRINT: "a"},
            {"data.stain_norm": "macenko", TEST_DATA_FINGERPRINT: "b"},
            {"data.stain_norm": "none", TEST_DATA_FINGERPRINT: "a"}]
    assert _without_implied(names, told, TEST_DATA_FINGERPRINT) == ["data.stain_norm"]
    untold = told + [{"data.stain_norm": "none", TEST_DATA_FINGERPRINT: "c"}]
    assert _without_implied(names, untold, TEST_DATA_FINGERPRINT) == names
    assert _without_implied([TEST_DATA_FINGERPRINT], told, TEST_DATA_FINGERPRINT) == \
        [TEST_DATA_FINGERPRINT]
