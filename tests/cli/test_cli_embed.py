"""`cytotune embed` (issue 32, item 5): the features the probes use, written with their paths,
labels and splits, read from the same feature cache (a second call extracts nothing)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cytotune.cli import main

MODEL = "uni-tiny"


def _bank_rows(cache: Path) -> tuple[torch.Tensor, dict[str, int]]:
    """Every feature row the per-image feature bank holds, and its chunk files' mtimes."""
    chunks = sorted((cache / "features").glob("*/*.safetensors"))
    assert chunks, f"no feature bank under {cache}"
    rows = torch.cat([load_file(str(c))["features"] for c in chunks])
    return rows, {str(c): c.stat().st_mtime_ns for c in chunks}


def _embed(data: Path, cache: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--data", str(data), "--model", MODEL, "--no-pretrained",
                 "--cache-dir", str(cache), "--out", str(out), "--no-progress", *extra])


def test_embed_writes_the_linear_probes_cached_features(synthetic_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    # the linear probe on all the data fills the feature cache with every image
    assert main(["train", "--data", str(synthetic_data), "--model", MODEL, "--no-pretrained",
                 "--method", "linear", "--linear-epochs", "2", "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    probe_rows, probe_chunks = _bank_rows(cache)
    capsys.readouterr()

    assert _embed(synthetic_data, cache, tmp_path / "emb") == 0
    assert "all from the feature cache" in capsys.readouterr().out
    assert _bank_rows(cache)[1] == probe_chunks  # nothing extracted, nothing written
    features = load_file(str(tmp_path / "emb.safetensors"))
    table = pd.read_csv(tmp_path / "emb.csv")
    n_images = sum(1 for _ in synthetic_data.rglob("*.png"))
    assert features["features"].shape == (n_images, probe_rows.shape[1]) == probe_rows.shape
    # each written vector is one the probe's cache holds, bit for bit, and all of them are
    distances = torch.cdist(features["features"], probe_rows)
    assert torch.all(distances.min(dim=1).values == 0)
    assert torch.all(distances.min(dim=0).values == 0)
    # paths, labels and splits line up with the rows
    assert list(table.columns) == ["index", "path", "label", "split"]
    assert table["index"].tolist() == list(range(n_images))
    assert all(Path(p).parent.name == label for p, label in zip(table["path"], table["label"]))
    with safe_open(str(tmp_path / "emb.safetensors"), "pt") as f:
        class_names = json.loads(f.metadata()["class_names"])
        assert f.metadata()["model"] == MODEL
    assert [class_names[i] for i in features["labels"].tolist()] == table["label"].tolist()
    assert set(table["split"]) == {"train", "val", "test"}

    # a second call hits the cache too, and writes the same features
    assert _embed(synthetic_data, cache, tmp_path / "again.safetensors", "--split", "test") == 0
    assert "all from the feature cache" in capsys.readouterr().out
    assert _bank_rows(cache)[1] == probe_chunks
    test_rows = load_file(str(tmp_path / "again.safetensors"))["features"]
    assert torch.equal(test_rows, features["features"][torch.as_tensor(
        (table["split"] == "test").to_numpy().copy())])
    assert set(pd.read_csv(tmp_path / "again.csv")["split"]) == {"test"}


def test_embed_fills_the_cache_once_and_refuses_to_overwrite(synthetic_data, tmp_path, capsys):
    from cytotune.api import build_config
    from cytotune.training.embed import embed

    cache = tmp_path / "cache"
    assert _embed(synthetic_data, cache, tmp_path / "first") == 0
    assert "extracted now" in capsys.readouterr().out
    _, chunks = _bank_rows(cache)
    config = build_config(data=str(synthetic_data), model=MODEL, pretrained=False,
                          cache_dir=str(cache))
    result = embed(config, split="train", batch_size=5)
    assert result.cache_hits == {"train": True} and result.extracted_nothing
    assert _bank_rows(cache)[1] == chunks
    # existing output is kept unless --overwrite
    before = (tmp_path / "first.safetensors").read_bytes()
    assert _embed(synthetic_data, cache, tmp_path / "first") == 2
    out = capsys.readouterr().out
    assert "error:" in out and "--overwrite" in out
    assert (tmp_path / "first.safetensors").read_bytes() == before
    assert _embed(synthetic_data, cache, tmp_path / "first", "--overwrite", "--split", "val") == 0
    assert set(pd.read_csv(tmp_path / "first.csv")["split"]) == {"val"}


def test_embed_bad_input_is_one_error_line(synthetic_data, tmp_path, capsys):
    assert _embed(tmp_path / "missing", tmp_path / "cache", tmp_path / "e") == 2
    assert "missing" in capsys.readouterr().out
    if importlib.util.find_spec("pyarrow") is None:  # else the parquet file is written
        assert _embed(synthetic_data, tmp_path / "cache", tmp_path / "e.parquet") == 2
        assert "pyarrow" in capsys.readouterr().out
    assert not list(tmp_path.glob("e.*"))
