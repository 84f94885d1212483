"""Fixtures shared by all test folders."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

import pytest

# The real data sets live in shared/ beside the repository (not inside it), so a fresh clone
# placed next to shared/ finds them too; CYTOTUNE_MLCC points elsewhere, as for `cytotune bench`.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MLCC_ENV = "CYTOTUNE_MLCC"


@pytest.fixture(autouse=True)
def _calibration_cache_in_tmp(tmp_path_factory, monkeypatch):
    """`sweep --dry-run` caches a timing calibration per machine (~/.cache/cytotune): tests
    keep it in a temporary folder of the session, never in the home directory."""
    monkeypatch.setenv("CYTOTUNE_CALIBRATION_DIR",
                       str(tmp_path_factory.getbasetemp() / "calibration"))


def real_data_root() -> tuple[Optional[Path], str]:
    """The real MLCC folder ($CYTOTUNE_MLCC, else shared/data/mlcc beside the repository) or
    None, and a sentence naming both places (the skip reason when it is None)."""
    places = f"${MLCC_ENV}" + (f" ({os.environ[MLCC_ENV]})" if os.environ.get(MLCC_ENV) else
                               " (not set)")
    where = f"looked in {places} and {SHARED_DATA / 'mlcc'}"
    for candidate in (os.environ.get(MLCC_ENV), SHARED_DATA / "mlcc"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate), where
    return None, f"real MLCC data not found: {where}"


@pytest.fixture(scope="session")
def mlcc_root() -> Path:
    """The real MLCC folder (950 JPEGs in HSIL/LSIL/NL/SCC), or skip when it is not there."""
    root, reason = real_data_root()
    if root is None:
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small generated cytology-like data set (4 classes x 12 images, 32 px)."""
    from cytotune.data import generate_cytology_dataset

    return generate_cytology_dataset(tmp_path_factory.mktemp("synthetic") / "data",
                                     n_per_class=12, image_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_model_names() -> dict[str, str]:
    """Built-in card name -> name of its tiny random-init variant (``<card>-tiny``, which the
    model registry resolves on demand in any process)."""
    return {name: f"{name}-tiny" for name in ("clip-vit-b16", "biomedclip", "uni", "vit-b16")}


# ---- file systems that fail: a read-only folder, a full disk (root runs CI: chmod does not stop
# root, so these are mounts, skipped with the reason where mounting is not allowed) -------------
def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only bind mount."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if not _mount("--bind", "-o", "ro", str(src), str(ro)):
        pytest.skip("cannot make a read-only bind mount here (needs mount privileges)")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KB tmpfs filled up but for three 4 KB blocks: room for a staging folder, not for a
    run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)):
        pytest.skip("cannot mount a small tmpfs here (needs mount privileges)")
    try:
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, filler.stat().st_size - 3 * 4096)
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)
