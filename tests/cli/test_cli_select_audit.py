"""`cytotune select` and `cytotune audit` (issue 34): which cells to label first, chosen without
labels from the cached features, and which labels look wrong, with thumbnails for the expert."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cytotune.cli import main

MODEL = "uni-tiny"


def _bank_mtimes(cache: Path) -> dict[str, int]:
    chunks = sorted((cache / "features").glob("*/*.safetensors"))
    assert chunks, f"no feature bank under {cache}"
    return {str(c): c.stat().st_mtime_ns for c in chunks}


def _select(data, cache: Path, out: Path, *extra: str) -> int:
    return main(["select", "--data", str(data), "--model", MODEL, "--no-pretrained",
                 "--cache-dir", str(cache), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def flat_pool(synthetic_data, tmp_path_factory) -> Path:
    """The generated images in one flat folder: no class folders, nothing to read a label from."""
    pool = tmp_path_factory.mktemp("pool") / "flat"
    pool.mkdir()
    for i, image in enumerate(sorted(synthetic_data.rglob("*.png"))):
        shutil.copy(image, pool / f"cell_{i:03d}.png")
    return pool


@pytest.mark.parametrize("strategy", ["kmeans", "typiclust"])
def test_select_writes_the_picks_in_order_with_clusters_and_thumbnails(flat_pool, tmp_path,
                                                                       capsys, strategy):
    out = tmp_path / "labels" / "picks.csv"
    assert _select(flat_pool, tmp_path / "cache", out, "--budget", "6", "--strategy",
                   strategy) == 0
    picks = pd.read_csv(out, keep_default_na=False)
    assert list(picks.columns) == ["order", "path", "cluster", "label"]
    assert picks["order"].tolist() == list(range(1, 7))
    assert picks["path"].is_unique and all(Path(p).is_file() for p in picks["path"])
    assert all(Path(p).parent == flat_pool for p in picks["path"])
    # one image per cluster: the strategy's own clusters (6 of them for 6 picks)
    assert sorted(picks["cluster"].astype(int)) == list(range(6))
    assert set(picks["label"]) == {""}
    sheet = (out.parent / "picks.html").read_text()
    assert sheet.count("data:image/png;base64,") == 6
    # thumbnails in pick order
    positions = [sheet.index(Path(p).name) for p in picks["path"]]
    assert positions == sorted(positions)
    assert "6 of 48 pool images chosen" in capsys.readouterr().out


def test_a_second_selection_extends_the_first_from_the_cache(flat_pool, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = tmp_path / "first.csv"
    assert _select(flat_pool, cache, first, "--budget", "8", "--strategy", "typiclust") == 0
    assert "cached in" in capsys.readouterr().out
    chunks = _bank_mtimes(cache)
    for strategy in ("random", "kmeans", "typiclust", "probcover"):
        second = tmp_path / strategy / "picks.csv"
        assert _select(flat_pool, cache, second, "--budget", "10", "--strategy", strategy,
                       "--labelled", str(first), "--seed", "3") == 0
        out = capsys.readouterr().out
        assert "all from the feature cache" in out and "8 already labelled" in out
        assert _bank_mtimes(cache) == chunks  # nothing extracted, nothing written
        picks = pd.read_csv(second, keep_default_na=False)
        assert len(picks) == 10 and picks["path"].is_unique
        assert not set(picks["path"]) & set(pd.read_csv(first)["path"])
        if strategy in ("random", "probcover"):
            assert set(picks["cluster"]) == {""}


def test_select_reads_no_label(synthetic_data, tmp_path, capsys):
    """A path-only CSV and the labelled folder itself give the same picks as the flat copy's
    images would: folder names and label columns are never read."""
    images = sorted(synthetic_data.rglob("*.png"))
    manifest = tmp_path / "pool.csv"
    pd.DataFrame({"path": [str(p) for p in images]}).to_csv(manifest, index=False)
    cache = tmp_path / "cache"
    assert _select(manifest, cache, tmp_path / "a.csv", "--budget", "5", "--strategy",
                   "probcover") == 0
    # the same images under wrong labels: a label column is ignored, not read
    wrong = pd.DataFrame({"path": [str(p) for p in images], "label": "nonsense"})
    wrong.to_csv(tmp_path / "labelled.csv", index=False)
    assert _select(tmp_path / "labelled.csv", cache, tmp_path / "b.csv", "--budget", "5",
                   "--strategy", "probcover") == 0
    assert _select(synthetic_data, cache, tmp_path / "c.csv", "--budget", "5", "--strategy",
                   "probcover") == 0
    a, b, c = (pd.read_csv(tmp_path / f"{n}.csv")["path"].tolist() for n in "abc")
    assert a == b == c
    capsys.readouterr()


def test_select_bad_input_is_one_error_line(flat_pool, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "picks.csv"

    def error(*extra: str) -> str:
        assert _select(flat_pool, cache, out, *extra) == 2
        text = capsys.readouterr().out
        assert text.startswith("error:") and len(text.strip().splitlines()) == 1, text
        return text

    assert "--budget 49" in error("--budget", "49", "--strategy", "kmeans")
    text = error("--budget", "3", "--strategy", "greedy")
    assert "--strategy" in text and all(s in text for s in ("random", "kmeans", "typiclust",
                                                             "probcover"))
    no_path = tmp_path / "no_path.csv"
    pd.DataFrame({"file": ["x.png"]}).to_csv(no_path, index=False)
    assert "no 'path' column" in error("--budget", "3", "--strategy", "random", "--labelled",
                                       str(no_path))
    elsewhere = tmp_path / "elsewhere.png"
    shutil.copy(next(flat_pool.iterdir()), elsewhere)
    stranger = tmp_path / "stranger.csv"
    pd.DataFrame({"path": [str(elsewhere)]}).to_csv(stranger, index=False)
    text = error("--budget", "3", "--strategy", "random", "--labelled", str(stranger))
    assert "--labelled" in text and "not an image of the --data pool" in text
    assert not out.exists()
    assert _select(tmp_path / "missing", cache, out, "--budget", "3", "--strategy",
                   "random") == 2
    assert "missing" in capsys.readouterr().out


@pytest.fixture(scope="module")
def flipped_data(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two generated classes with 3 'normal' images filed under 'carcinoma' on purpose."""
    from cytotune.data import generate_cytology_dataset

    root = tmp_path_factory.mktemp("flipped")
    data = generate_cytology_dataset(root / "data", n_per_class=20, image_size=64, seed=0,
                                     classes=("normal", "carcinoma"))
    flipped = [f"normal_{i:04d}.png" for i in range(3)]
    for name in flipped:
        shutil.move(data / "normal" / name, data / "carcinoma" / name)
    return data, flipped


def test_audit_finds_the_flipped_labels(flipped_data, tmp_path, capsys):
    data, flipped = flipped_data
    out = tmp_path / "audit"
    # a random-init ResNet-18 tells these two generated classes apart well enough to judge labels
    assert main(["audit", "--data", str(data), "--model", "timm:resnet18", "--no-pretrained",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--top", "5",
                 "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "probable label errors:" in summary and "40 images audited" in summary
    for name in ("label_issues.csv", "near_duplicates.csv", "exact_duplicates.csv",
                 "outliers.csv", "audit.html"):
        assert (out / name).is_file(), name
    issues = pd.read_csv(out / "label_issues.csv")
    assert list(issues.columns[:4]) == ["rank", "path", "given_label", "suggested_label"]
    ranks = {Path(p).name: r for p, r in zip(issues["path"], issues["rank"])}
    assert set(flipped) <= set(ranks), issues.head(10)
    assert max(ranks[name] for name in flipped) <= 8, issues.head(10)
    for name in flipped:
        row = issues[issues["path"].map(lambda p: Path(p).name) == name].iloc[0]
        assert (row["given_label"], row["suggested_label"]) == ("carcinoma", "normal")
    outliers = pd.read_csv(out / "outliers.csv")
    assert list(outliers.columns) == ["rank", "path", "label", "score", "nearest_class"]
    assert len(outliers) == 40 and outliers["score"].is_monotonic_decreasing
    near = pd.read_csv(out / "near_duplicates.csv")
    assert list(near.columns) == ["group", "path", "label"]
    if len(near):
        assert "group' column" in summary
    page = (out / "audit.html").read_text()
    shown = min(5, len(issues)) + min(5, len(outliers))
    assert page.count("data:image/png;base64,") >= shown


def test_audit_finds_exact_duplicates_and_refuses_one_class(synthetic_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    copy = data / "normal" / "copy_of_0.png"
    shutil.copy(data / "normal" / "normal_0000.png", copy)
    args = ["--model", MODEL, "--no-pretrained", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    assert main(["audit", "--data", str(data), "--out", str(tmp_path / "a"), *args]) == 0
    assert "group' column" in capsys.readouterr().out
    exact = pd.read_csv(tmp_path / "a" / "exact_duplicates.csv")
    assert sorted(Path(p).name for p in exact["path"]) == ["copy_of_0.png", "normal_0000.png"]
    assert exact["group"].nunique() == 1

    one = tmp_path / "one"
    shutil.copytree(synthetic_data / "normal", one / "normal")
    assert main(["audit", "--data", str(one), "--out", str(tmp_path / "b"), *args]) == 2
    text = capsys.readouterr().out
    assert text.startswith("error:") and len(text.strip().splitlines()) == 1
    assert str(one) in text or "class" in text
    assert not (tmp_path / "b" / "label_issues.csv").exists()
