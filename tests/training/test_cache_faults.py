"""A full or read-only cache folder never kills a run, and `cytotune cache verify` finds damage.

The full-disk cases mount a small tmpfs (root only) and run cytotune in a subprocess, so a
SIGBUS ("Bus error", what a memory-mapped sparse file on a full disk used to give) cannot take
pytest down with it. Where mounting is not permitted they skip and say why.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import cytotune
from cytotune.cli import main
from cytotune.data import ImageStore
from cytotune.training.features import FeatureCache

SRC = Path(cytotune.__file__).resolve().parents[1]


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block; skips where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (the full-disk case) needs root; not run")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    f"the full-disk case is not run")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _make_read_only(path: Path) -> None:
    """Remount the tmpfs at ``path`` read-only (root), or take write permission away."""
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount {path} read-only ({done.stderr.strip()})")
    else:
        for folder in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
            folder.chmod(0o555)


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    with open(folder / "filler", "wb") as file:
        try:
            while True:
                file.write(bytes(64 * 1024))
                file.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


STORE_ON_A_FULL_DISK = """
import sys
from pathlib import Path
import torch
from cytotune.data import ImageStore, decode_images
paths = sorted(Path(sys.argv[1]).glob("*.png"))
decoded = ImageStore(sys.argv[2]).get(paths, 112, 112, "bilinear")
assert torch.equal(decoded.pixels, decode_images(paths, 112, 112, "bilinear").pixels)
print("decoded", len(decoded))
"""


def test_a_full_disk_at_the_image_cache_is_a_warning_not_a_bus_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # 40 x 3 x 112 x 112 bytes = 1.5 MB of pixels, on a 1 MiB disk
        Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        done = _run_python(STORE_ON_A_FULL_DISK, str(images), str(disk / "cache"))
        assert done.returncode == 0, f"exit {done.returncode} (-7: Bus error)\n{done.stderr}"
        assert "decoded 40" in done.stdout
        assert f"cache folder {disk / 'cache'}: No space left on device" in done.stderr
        assert "--cache-dir" in done.stderr and "Traceback" not in done.stderr
        assert _leftovers(disk) == []


def test_a_cli_run_with_a_full_cache_disk_finishes_with_one_warning(synthetic_data,
                                                                     tiny_model_names, tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        _fill(disk)
        done = _run_python(
            "import sys; from cytotune.cli import main; sys.exit(main(sys.argv[1:]))",
            "train", "--data", str(synthetic_data), "--model", tiny_model_names["uni"],
            "--pretrained", "false", "--method", "linear", "--linear-epochs", "3",
            "--cache-dir", str(disk / "cache"))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "No space left on device" in done.stderr and str(disk / "cache") in done.stderr
        assert "test metrics" in done.stdout
        assert _leftovers(disk) == []


def _train(data, model, cache_dir):
    return cytotune.train(data=str(data), model=model, method="linear", cache_dir=str(cache_dir),
                          pretrained=False, num_workers=0, seed=1, lr=1e-2, linear_epochs=5)


def test_a_read_only_cache_is_still_used(synthetic_data, tiny_model_names, tmp_path):
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        clean = _train(synthetic_data, tiny_model_names["uni"], disk / "cache")
        _make_read_only(disk)
        again = _train(synthetic_data, tiny_model_names["uni"], disk / "cache")
        assert again.metrics["test"]["accuracy"] == clean.metrics["test"]["accuracy"]
        assert clean.timings["feature_extraction_s"] > 0
        assert again.timings["feature_extraction_s"] == 0.0  # the features came from the cache


def test_an_empty_read_only_cache_folder_is_one_warning_and_the_run_goes_on(
        synthetic_data, tiny_model_names, tmp_path, capsys, caplog):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        _make_read_only(disk)
        code = main(["train", "--data", str(synthetic_data), "--model", tiny_model_names["uni"],
                     "--pretrained", "false", "--method", "linear", "--linear-epochs", "3",
                     "--cache-dir", str(disk / "cache")])
        assert code == 0
        assert "test metrics" in capsys.readouterr().out
        assert f"cache folder {disk / 'cache'}" in caplog.text or str(disk) in caplog.text
        assert "Read-only file system" in caplog.text or "Permission denied" in caplog.text


# --------------------------------------------------------------------------- cache verify


def _small_cache(root: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / "img" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (i * 60, 90, 30)).save(paths[-1])
    ImageStore(root / "images").get(paths, 16, 16, "bilinear")
    FeatureCache(root).get_or_compute("entry", lambda: torch.ones(3, 4))


def test_cache_verify_counts_good_and_bad_entries_and_fails_on_bad_ones(tmp_path, capsys):
    root = tmp_path / "cache"
    _small_cache(root, tmp_path)
    assert main(["cache", "verify", "--cache", str(root)]) == 0
    assert "2 entries checked: 2 good, 0 bad" in capsys.readouterr().out

    (npy,) = (root / "images").glob("*.npy")
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF  # one byte of pixels, header untouched
    npy.write_bytes(bytes(data))
    import socket

    dead = root / "images" / f"tmp-999999999@{socket.gethostname()}-x1.npy.tmp"
    dead.write_bytes(b"left by a dead process")
    live = root / "images" / f"tmp-{os.getpid()}@{socket.gethostname()}-x2.npy.tmp"
    live.write_bytes(b"being written")
    assert main(["cache", "verify", "--cache", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 good, 1 bad" in out and str(npy) in out and "does not match the digest" in out
    assert "1 temporary files" in out and "--remove-bad" in out
    assert npy.exists()  # reported, not removed, unless asked

    assert main(["cache", "verify", "--cache", str(root), "--remove-bad"]) == 1
    assert not npy.exists() and not npy.with_suffix(".json").exists()
    assert _leftovers(root) == [live]  # a running process's file is kept
    assert main(["cache", "verify", "--cache", str(root)]) == 0
    assert "1 entries checked: 1 good, 0 bad" in capsys.readouterr().out


def test_cache_verify_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["cache", "verify", "--cache", str(tmp_path / "nowhere")]) == 2
    out = capsys.readouterr().out
    assert "no cache folder at" in out and "Traceback" not in out
