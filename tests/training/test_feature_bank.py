"""The feature cache holds features image by image: any set of images reuses what is held."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cytotune
from cytotune.training.features import FeatureCache

CPU = torch.device("cpu")


class CountingBackbone(nn.Module):
    """A stand-in backbone: per-channel means as features; counts the images it sees."""

    def __init__(self):
        super().__init__()
        self.seen = 0
        self.card = SimpleNamespace(name="counting")
        self.preprocessing = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                             fingerprint=lambda: "pre")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return x.mean(dim=(2, 3))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_only_images_not_held_are_extracted(tmp_path):
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(4)
    keys = ["a", "b", "c", "d"]
    first, seconds, hit = cache.features(backbone, "w", pixels[:3], "abc", CPU,
                                         image_keys=keys[:3])
    assert backbone.seen == 3 and seconds > 0 and not hit
    second, _, hit = cache.features(backbone, "w", pixels[1:], "bcd", CPU, image_keys=keys[1:])
    assert backbone.seen == 4 and not hit  # only "d" was new
    torch.testing.assert_close(second[:2], first[1:], rtol=0, atol=0)
    again, seconds, hit = cache.features(backbone, "w", pixels[[3, 0]], "da", CPU,
                                         image_keys=["d", "a"])
    assert backbone.seen == 4 and hit and seconds == 0.0
    torch.testing.assert_close(again, torch.stack([second[2], first[0]]), rtol=0, atol=0)
    # another weights fingerprint or precision is another bank
    cache.features(backbone, "w2", pixels[:1], "a", CPU, image_keys=["a"])
    cache.features(backbone, "w", pixels[:1], "a", CPU, precision="bf16", image_keys=["a"])
    assert backbone.seen == 6


def test_an_image_asked_twice_is_extracted_once(tmp_path):
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(2)
    feats, _, _ = cache.features(backbone, "w", pixels[[0, 1, 0]], "x", CPU,
                                 image_keys=["a", "b", "a"])
    assert backbone.seen == 2
    torch.testing.assert_close(feats[0], feats[2], rtol=0, atol=0)


def test_an_unreadable_chunk_is_ignored_and_its_images_extracted_again(tmp_path, caplog):
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(2)
    expected, _, _ = cache.features(backbone, "w", pixels, "ab", CPU, image_keys=["a", "b"])
    (chunk,) = list((tmp_path / "features").glob("*/*.safetensors"))
    chunk.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        feats, _, hit = cache.features(backbone, "w", pixels, "ab", CPU, image_keys=["a", "b"])
    assert not hit and backbone.seen == 4
    assert "unusable feature cache chunk" in caplog.text
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)


def test_without_a_cache_dir_everything_is_extracted():
    cache, backbone = FeatureCache(None), CountingBackbone()
    cache.features(backbone, "w", _images(3), "x", CPU, image_keys=["a", "b", "c"])
    cache.features(backbone, "w", _images(3), "x", CPU, image_keys=["a", "b", "c"])
    assert backbone.seen == 6


def test_a_run_on_all_data_reuses_the_few_shot_runs_images(synthetic_data, tiny_model_names,
                                                           tmp_path):
    from safetensors.torch import load_file

    common = dict(data=str(synthetic_data), model=tiny_model_names["uni"], method="linear",
                  cache_dir=str(tmp_path / "cache"), steps=2, batch_size=8, pretrained=False,
                  num_workers=0, seed=1, lr=1e-2)
    cytotune.train(shots=2, **common)  # 2 per class from train and from val, and all of test
    (bank,) = [d for d in (tmp_path / "cache" / "features").iterdir() if d.is_dir()]
    before = set(bank.glob("*.safetensors"))
    assert len(before) == 3
    cytotune.train(**common)  # all of train and val: the few-shot run's images are held
    after = set(bank.glob("*.safetensors"))
    assert len(after - before) == 2  # the rest of train, the rest of val; test was held
    rows = sum(load_file(str(chunk))["keys"].shape[0] for chunk in after)
    assert rows == 48  # every image of the data set extracted exactly once over both runs


def test_many_chunks_are_merged_into_one_and_every_image_stays_held(tmp_path, monkeypatch):
    from cytotune.training.feature_bank import FeatureBank

    monkeypatch.setattr(FeatureBank, "MAX_CHUNKS", 3)
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(5)
    expected = []
    for i in range(5):  # one new image per call: one chunk each, until the merge
        feats, _, _ = cache.features(backbone, "w", pixels[i:i + 1], str(i), CPU,
                                     image_keys=[str(i)])
        expected.append(feats[0])
    (bank,) = list((tmp_path / "features").iterdir())
    assert len(list(bank.glob("*.safetensors"))) <= 3
    everything, _, hit = cache.features(backbone, "w", pixels, "all", CPU,
                                        image_keys=[str(i) for i in range(5)])
    assert hit and backbone.seen == 5
    torch.testing.assert_close(everything, torch.stack(expected), rtol=0, atol=0)


# --------------------------------------------------------------------------- content checks


def _poison_tensor(path, name: str = "features", seed: int = 0, plausible: bool = False) -> None:
    """Random bytes over one tensor's data in a safetensors file; its header stays valid.
    ``plausible``: random normal float32 values instead, which a reader cannot tell by range."""
    import json
    import struct

    import numpy as np

    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + length])[name]["data_offsets"]
    base = 8 + length
    rng = np.random.default_rng(seed)
    data[base + start:base + end] = (
        rng.normal(size=(end - start) // 4).astype(np.float32).tobytes() if plausible
        else rng.integers(0, 256, end - start, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))


def test_a_chunk_whose_features_changed_under_a_valid_header_is_removed_and_extracted_again(
        tmp_path, caplog):
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(3)
    expected, _, _ = cache.features(backbone, "w", pixels, "abc", CPU, image_keys=["a", "b", "c"])
    (chunk,) = list((tmp_path / "features").glob("*/*.safetensors"))
    _poison_tensor(chunk)
    with caplog.at_level(logging.WARNING):
        feats, _, hit = cache.features(backbone, "w", pixels, "abc", CPU,
                                       image_keys=["a", "b", "c"])
    assert not hit and backbone.seen == 6
    assert str(chunk) in caplog.text and "does not match the digest" in caplog.text
    assert not chunk.exists()  # removed, so the damage is met once
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)


def test_a_per_set_entry_whose_features_changed_is_computed_again(tmp_path, caplog):
    cache, calls = FeatureCache(tmp_path), []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(12, dtype=torch.float32).view(3, 4)

    first, _, _ = cache.get_or_compute("k", compute)
    (entry,) = list((tmp_path / "features").glob("*.safetensors"))
    _poison_tensor(entry)
    with caplog.at_level(logging.WARNING):
        again, _, hit = cache.get_or_compute("k", compute)
    assert not hit and len(calls) == 2 and str(entry) in caplog.text
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert cache.get_or_compute("k", compute)[2]  # rewritten: a hit again


def test_a_feature_cache_that_cannot_be_written_is_one_warning_and_the_features_are_kept(
        tmp_path, caplog, monkeypatch):
    import errno

    from cytotune.data import cachefiles

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cachefiles, "write_atomic", no_space)
    monkeypatch.setattr(cachefiles, "_warned", set())
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            feats, _, _ = cache.features(backbone, "w", _images(2), "ab", CPU,
                                         image_keys=["a", "b"])
    assert feats.shape == (2, 3) and backbone.seen == 4
    assert caplog.text.count("No space left on device") == 1  # once per folder, not per write
    assert not list((tmp_path / "features").rglob("*.tmp"))


def _linear_run(synthetic_data, tiny_model_names, cache_dir):
    return cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"],
                          method="linear", cache_dir=str(cache_dir), batch_size=8,
                          pretrained=False, num_workers=0, seed=1, lr=1e-2, linear_epochs=20)


def _assert_same_test_metrics(run, clean) -> None:
    for name, value in clean.metrics["test"].items():
        if isinstance(value, float):
            assert run.metrics["test"][name] == pytest.approx(value, abs=1e-6), name


def test_a_poisoned_feature_cache_gives_the_clean_runs_numbers(synthetic_data, tiny_model_names,
                                                               tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    clean = _linear_run(synthetic_data, tiny_model_names, cache_dir)
    chunks = sorted((cache_dir / "features").rglob("*.safetensors"))
    for seed, chunk in enumerate(chunks):
        _poison_tensor(chunk, seed=seed, plausible=True)
    with caplog.at_level(logging.WARNING):
        again = _linear_run(synthetic_data, tiny_model_names, cache_dir)
    _assert_same_test_metrics(again, clean)
    for chunk in chunks:
        assert str(chunk) in caplog.text


def test_a_poisoned_pixel_cache_gives_the_clean_runs_numbers(synthetic_data, tiny_model_names,
                                                             tmp_path, caplog):
    import numpy as np

    cache_dir = tmp_path / "cache"
    clean = _linear_run(synthetic_data, tiny_model_names, cache_dir)
    import shutil

    shutil.rmtree(cache_dir / "features")  # features come from the (poisoned) pixels again
    entries = sorted((cache_dir / "images").glob("*.npy"))
    for seed, npy in enumerate(entries):
        with open(npy, "rb") as file:
            np.lib.format.read_magic(file)
            np.lib.format.read_array_header_1_0(file)
            offset = file.tell()
        size = npy.stat().st_size - offset
        with open(npy, "r+b") as file:
            file.seek(offset)
            file.write(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    with caplog.at_level(logging.WARNING):
        again = _linear_run(synthetic_data, tiny_model_names, cache_dir)
    _assert_same_test_metrics(again, clean)
    for npy in entries:
        assert str(npy) in caplog.text


# --------------------------------------------------------------------------- streamed reads


def test_a_merged_chunk_is_a_valid_safetensors_file_that_passes_its_check(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from cytotune.training.feature_bank import FeatureBank, chunk_problem

    monkeypatch.setattr(FeatureBank, "MAX_CHUNKS", 2)
    cache, backbone = FeatureCache(tmp_path), CountingBackbone()
    pixels = _images(4)
    for i in range(3):  # the third write merges: "0" is asked twice, held once
        cache.features(backbone, "w", pixels[[0, i + 1]], str(i), CPU,
                       image_keys=["0", str(i + 1)])
    (bank,) = list((tmp_path / "features").iterdir())
    (merged,) = list(bank.glob("*.safetensors"))
    assert chunk_problem(merged) is None
    tensors = load_file(str(merged))
    assert tensors["features"].shape == (4, 3) and tensors["keys"].shape == (4, 16)
    assert len({bytes(k) for k in tensors["keys"].numpy()}) == 4
    _poison_tensor(merged)
    assert "does not match the digest" in chunk_problem(merged)


def test_rows_are_read_without_loading_the_chunk(tmp_path, monkeypatch):
    """With checks off, only the blocks holding wanted rows are read; with checks on, the
    whole file is hashed through one small buffer, and the rows equal safetensors' own load."""
    from safetensors.torch import load_file

    from cytotune.data import cachefiles
    from cytotune.training import feature_bank
    from cytotune.training.feature_bank import ChunkFile, FeatureBank

    monkeypatch.setattr(feature_bank, "BLOCK_BYTES", 4 * 8 * 4)  # 4 rows of 8 floats a block
    bank = FeatureBank(tmp_path / "bank")
    feats = torch.randn(40, 8)
    assert bank._write_chunk(feats, [bank.key_bytes(str(i)) for i in range(40)])
    (path,) = list(bank.folder.glob("*.safetensors"))
    read_bytes = []

    class CountingFile:
        def __init__(self, file):
            self.file = file

        def readinto(self, view):
            read_bytes.append(self.file.readinto(view))
            return read_bytes[-1]

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(feature_bank, "open", lambda *a, **k: CountingFile(open(*a, **k)),
                        raising=False)
    rows = [37, 2, 2, 9]
    out = torch.zeros(4, 8)
    with cachefiles.verification("off"):
        ChunkFile(path).read_rows(rows, lambda i, row: out[i].copy_(row))
    torch.testing.assert_close(out, load_file(str(path))["features"][rows], rtol=0, atol=0)
    assert read_bytes == [128, 128, 128]  # the blocks of rows 0-3, 8-11 and 36-39 only
    read_bytes.clear()
    got, _, hit = bank.features([str(r) for r in rows], torch.empty(4, 0), None)
    assert hit and sum(read_bytes) == 40 * 8 * 4  # checked: every block hashed, once
    torch.testing.assert_close(got, feats[rows], rtol=0, atol=0)


def test_a_lookup_holds_its_result_not_the_bank(tmp_path):
    """Peak memory of reading 1 % of a 100 MB bank (in a fresh process): the old reader loaded
    whole chunk files (twice while parsing); a streamed one holds the result and one buffer."""
    import subprocess
    import sys

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak resident set")
    script = f"""
import numpy as np, torch
from pathlib import Path
from cytotune.training.feature_bank import FeatureBank
bank = FeatureBank(Path({str(tmp_path / 'bank')!r}))
keys = [str(i) for i in range(25600)]
bank._write_chunk(torch.randn(25600, 1024), [bank.key_bytes(k) for k in keys])
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")
def rss(field):
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)][0]
before = rss("VmRSS:")
got, _, hit = bank.features(keys[::100], torch.empty(256, 0), None)
assert hit and got.shape == (256, 1024)
print((rss("VmHWM:") - before) // 1024)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth_mib = int(proc.stdout.split()[-1])
    assert growth_mib < 40, f"a 1 % lookup of a 100 MB bank grew the process by {growth_mib} MiB"


def test_progress_counts_held_features_as_done_before_and_extracted_ones_as_work(tmp_path):
    """A features phase reaches its total: images read from the bank are reported as
    ``reused``, extracted ones through ``advance`` (by extraction, batch by batch)."""
    from cytotune.training.progress import TrainingObserver, observing

    class Counts(TrainingObserver):
        def __init__(self):
            self.advanced, self.reused_n = 0, 0

        def advance(self, done: int) -> None:
            self.advanced += done

        def reused(self, done: int) -> None:
            self.reused_n += done

    cache, backbone, pixels = FeatureCache(tmp_path), CountingBackbone(), _images(4)
    counts = []
    for rows, keys in (([0, 1, 2], "abc"), ([1, 2, 3], "bcd"), ([3, 0], "da")):
        with observing(Counts()) as seen:
            cache.features(backbone, "w", pixels[rows], keys, CPU, image_keys=list(keys))
        counts.append((seen.advanced, seen.reused_n))
    assert counts == [(3, 0), (1, 2), (0, 2)]
    # the cache of whole sets (no per-image keys): a hit is reused as a whole
    for expected in ((2, 0), (0, 2)):
        with observing(Counts()) as seen:
            cache.features(backbone, "w", pixels[:2], "set-ab", CPU)
        assert (seen.advanced, seen.reused_n) == expected
