"""The logic of scripts/audit_evidence.py (label flips, precision/recall at k, group comparison)
against hand computations on generated features, and scripts/bench_audit_scale.py at tiny
sizes through both the exact and the approximate neighbour paths."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evidence():
    return _script("audit_evidence")


def _classes(seed: int = 0, per_class: int = 60):
    """Three separable Gaussian classes in 16-D: (features, labels)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16) * 6.0
    x = np.concatenate([c + rng.normal(size=(per_class, 16)) for c in centres])
    return x, np.repeat(np.array(["a", "b", "c"]), per_class)


def test_flip_labels_moves_exactly_the_fraction_to_another_class(evidence):
    codes = np.repeat(np.arange(4), 50)
    noisy, flipped = evidence.flip_labels(codes, 4, 0.05, seed=3)
    assert len(flipped) == 10 and np.all(np.diff(flipped) > 0)
    assert np.all(noisy[flipped] != codes[flipped])
    assert np.array_equal(np.flatnonzero(noisy != codes), flipped)
    again, same = evidence.flip_labels(codes, 4, 0.05, seed=3)
    assert np.array_equal(again, noisy) and np.array_equal(same, flipped)
    with pytest.raises(ValueError, match="--flip"):
        evidence.flip_labels(codes, 4, 1.5, seed=0)


def test_flip_groups_flips_whole_groups(evidence):
    codes = np.repeat(np.arange(2), 20)
    groups = [f"g{i // 4}" for i in range(40)]  # 10 groups of 4
    noisy, flipped = evidence.flip_groups(codes, groups, 2, 0.1, seed=1)
    assert len(flipped) == 4  # one group reaches the 4 images asked for
    assert len({groups[i] for i in flipped}) == 1
    assert np.array_equal(np.flatnonzero(noisy != codes), flipped)


def test_precision_and_recall_at_k_by_hand(evidence):
    ranking = [5, 1, 9, 2, 7, 0]
    truth = [1, 2, 3]
    assert evidence.at_k(ranking, truth, 2) == (0.5, pytest.approx(1 / 3))
    assert evidence.at_k(ranking, truth, 4) == (0.5, pytest.approx(2 / 3))


def test_flipped_labels_rank_far_above_random(evidence):
    x, labels = _classes()
    table = evidence.flip_experiment(x, labels, 0.05, seeds=[1, 2])
    mean = table.groupby(["ranking", "cut"])[["precision", "recall"]].mean()
    assert mean.loc[("cleanlab", "k = flipped"), "recall"] >= 0.8
    assert mean.loc[("cleanlab", "k = 2 x flipped"), "recall"] == 1.0
    assert mean.loc[("random (expected)", "k = flipped"), "precision"] == pytest.approx(9 / 180)
    assert set(table["k"][table["cut"] == "k = flipped"]) == {9}
    summary = evidence.summary(table)
    assert ("cleanlab", "flagged set") in summary.index


def test_group_comparison_against_a_hand_count(evidence):
    # truth: {0,1,2} {3,4} {5}; found: {0,1} {4,5}, the rest alone
    truth = ["s1", "s1", "s1", "s2", "s2", "s3"]
    got = evidence.compare_groups([[0, 1], [4, 5]], truth, 6)
    # true pairs: 01 02 12 34 (4); found pairs: 01 45 (2); in both: 01
    assert got["pairs_true"] == 4 and got["pairs_found"] == 2
    assert got["pair_precision"] == 0.5 and got["pair_recall"] == 0.25
    from sklearn.metrics import adjusted_rand_score
    assert got["ari"] == pytest.approx(adjusted_rand_score([0, 0, 0, 1, 1, 2], [0, 0, 2, 3, 1, 1]))
    same = evidence.compare_groups([[0, 1, 2], [3, 4]], truth, 6)
    assert same["pair_precision"] == same["pair_recall"] == same["ari"] == 1.0
    with pytest.raises(ValueError, match="6 group ids for 5 images"):
        evidence.compare_groups([], truth, 5)


def test_planted_copies_are_the_near_duplicate_groups(evidence):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 32))
    x[30:40] = x[:10] * 1.5 + 1e-4 * rng.normal(size=(10, 32))  # copies of rows 0..9
    truth = [f"s{i % 30}" for i in range(40)]
    table = evidence.duplicate_experiment(x, truth, [0.999, 0.0])
    strict = table.iloc[0]
    assert strict["groups"] == 10 and strict["pair_precision"] == 1.0
    assert strict["pair_recall"] == 1.0 and strict["ari"] == 1.0
    assert table.iloc[1]["pair_precision"] < 0.5  # cosine >= 0 lumps unrelated images


def test_bench_synthetic_features_and_a_tiny_run(capsys, monkeypatch):
    bench = _script("bench_audit_scale")
    x, labels, pairs = bench.synthetic(400, 64, seed=0)
    assert x.shape == (400, 64) and x.dtype == np.float32 and len(pairs) == 4
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.all(np.sum(u[pairs[:, 0]] * u[pairs[:, 1]], axis=1) > 0.99)
    assert len(set(labels)) == 4
    from cytotune.data import neighbours

    from cytotune.analysis import audit

    monkeypatch.setattr(audit, "MINIBATCH_MIN_IMAGES", 300)  # 400 images: the minibatch probe
    default = neighbours.ANN_MIN_IMAGES
    assert bench.main(["--sizes", "200,400", "--dim", "64", "--ann-min", "300",
                       "--recall-sample", "50"]) == 0
    assert neighbours.ANN_MIN_IMAGES == default  # restored for whatever runs next
    assert audit.MINIBATCH_MIN_IMAGES == 300  # the warm-up's lowered threshold, restored
    printed = capsys.readouterr().out
    # both probes warmed up before any size is timed (torch's import not in the first figure)
    assert "first exact L-BFGS audit of 200 images" in printed
    assert "first approximate minibatch one" in printed
    assert "200 images (exact, L-BFGS probe)" in printed
    assert "400 images (HNSW, minibatch probe)" in printed
    assert "4/4 planted near-copies grouped" in printed
    assert "400 | " in printed and "(1.00x)" in printed


def test_bench_compares_the_two_probes(capsys):
    """``--compare``: both probes on the same flipped labels; the counts agree with each other
    (hits = precision x flagged = recall x flipped) and the line is printed per size."""
    bench = _script("bench_audit_scale")
    x, truth, _ = bench.synthetic(600, 32, seed=0, flip=0.0)
    r = bench.compare_probes(x, truth, seed=0)
    assert r["flipped"] == 18
    for solver in ("lbfgs", "minibatch"):
        hits = r[f"{solver} precision"] * r[f"{solver} flagged"]
        assert hits == pytest.approx(r[f"{solver} recall"] * 18)
        assert r[f"{solver} s"] > 0
    assert 0 <= r["jaccard"] <= r["lbfgs flags also flagged by minibatch"] <= 1
    assert r["lbfgs recall"] >= 0.7  # clustered classes: L-BFGS finds most flips (14 of 18)
    assert bench.main(["--compare", "300", "--dim", "32"]) == 0
    printed = capsys.readouterr().out
    assert "300 images, 9 labels flipped (3 %): lbfgs " in printed and "Jaccard" in printed
    with pytest.raises(SystemExit, match="error: --compare 'x'"):
        bench.main(["--compare", "x"])
