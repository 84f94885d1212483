"""``cytotune compare``: two runs on the same test images, paired by image."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from cytotune.analysis import BootstrapSpec
from cytotune.cli import main
from cytotune.inference.compare import CompareError, compare_runs


def _tables(tmp_path, n=120, seed=0):
    rng = np.random.default_rng(seed)
    classes = np.array(["HSIL", "LSIL", "NL", "SCC"])
    labels = classes[rng.integers(0, 4, n)]
    a = np.where(rng.random(n) < 0.8, labels, classes[rng.integers(0, 4, n)])
    b = np.where(rng.random(n) < 0.6, labels, classes[rng.integers(0, 4, n)])
    paths = [f"/data/img{i:03d}.png" for i in range(n)]
    frame_a = pd.DataFrame({"path": paths, "label": labels, "predicted": a})
    frame_b = pd.DataFrame({"path": paths, "label": labels, "predicted": b})
    pa, pb = tmp_path / "a.csv", tmp_path / "b.csv"
    frame_a.to_csv(pa, index=False)
    frame_b.sample(frac=1.0, random_state=1).to_csv(pb, index=False)  # another order
    return pa, pb, frame_a, frame_b


def test_compare_tables_paired_by_image(tmp_path):
    pa, pb, fa, fb = _tables(tmp_path)
    result = compare_runs(pa, pb, BootstrapSpec(resamples=1000))
    row = result.table.set_index("metric").loc["balanced_accuracy"]
    assert row["A"] == pytest.approx(100 * balanced_accuracy_score(fa["label"], fa["predicted"]))
    assert row["B"] == pytest.approx(100 * balanced_accuracy_score(fb["label"], fb["predicted"]))
    assert row["difference"] == pytest.approx(row["A"] - row["B"])
    assert row["low"] < row["difference"] < row["high"]
    right_a = fa["label"] == fa["predicted"]
    right_b = fb["label"] == fb["predicted"]
    assert result.mcnemar.only_a == int((right_a & ~right_b).sum())
    assert result.mcnemar.only_b == int((~right_a & right_b).sum())
    assert result.images == 120


def test_a_run_compared_with_itself_differs_by_exactly_nothing(tmp_path):
    pa, _, _, _ = _tables(tmp_path)
    result = compare_runs(pa, pa, BootstrapSpec(resamples=200))
    assert (result.table[["difference", "low", "high"]].to_numpy() == 0).all()
    assert set(result.table["verdict"]) == {"not resolved"}
    assert result.mcnemar.pvalue == 1.0


def test_other_images_or_labels_are_refused_naming_the_first(tmp_path):
    pa, pb, fa, fb = _tables(tmp_path)
    other = fb.copy()
    other.loc[5, "path"] = "/data/elsewhere.png"
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(CompareError, match=r"/data/img005\.png is in .*a\.csv but not in"):
        compare_runs(pa, tmp_path / "other.csv")
    relabelled = fb.copy()
    relabelled.loc[7, "label"] = "SCC" if relabelled.loc[7, "label"] != "SCC" else "NL"
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(CompareError, match=r"labels differ: /data/img007\.png"):
        compare_runs(pa, tmp_path / "relabelled.csv")
    longer = pd.concat([fb, pd.DataFrame({"path": ["/data/extra.png"], "label": ["NL"],
                                          "predicted": ["NL"]})])
    longer.to_csv(tmp_path / "longer.csv", index=False)
    with pytest.raises(CompareError, match=r"/data/extra\.png is in .*longer\.csv but not in"):
        compare_runs(pa, tmp_path / "longer.csv")


def test_compare_two_trained_runs_from_the_command_line(trained_run, tmp_path, capsys):
    a, b = trained_run("uni", "linear", seed=1), trained_run("uni", "linear", seed=2)
    out = tmp_path / "cmp.csv"
    assert main(["compare", str(a), str(b), "--resamples", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "McNemar" in printed and "balanced_accuracy" in printed and "paired by image" in printed
    table = pd.read_csv(out)
    assert list(table["metric"]) == ["balanced_accuracy", "accuracy", "macro_f1"]


def test_compare_errors_are_one_line(tmp_path, capsys):
    pa, _, _, _ = _tables(tmp_path)
    assert main(["compare", str(pa), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().out
    assert err.count("\n") == 1 and "error:" in err and "missing" in err
    (tmp_path / "bad.csv").write_text("path,label\nx,NL\n")
    assert main(["compare", str(pa), str(tmp_path / "bad.csv")]) == 2
    assert "'predicted'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", str(pa), str(pa), "--resamples", "5"])
    assert "--resamples" in capsys.readouterr().err
