"""A decoded-image cache build stopped halfway resumes where it stopped (issue 18, part 3)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from cytotune.data import images as images_module
from cytotune.data import pixel_files
from cytotune.data.image_store import ImageStore
from cytotune.data.images import decode_images


@pytest.fixture
def many(tmp_path, make_image):
    return [make_image(tmp_path / "img" / f"{i:02d}.png", color=(i * 9, 80, 200 - i * 5),
                       size=(40, 36)) for i in range(20)]


@pytest.fixture
def counted(monkeypatch):
    """Counts decodes; ``stop_after[0] = k`` makes the k-th next decode a Ctrl-C."""
    calls, stop_after = [0], [None]
    real = images_module._rgb_from_bytes

    def decode(data, path):
        if stop_after[0] is not None and calls[0] >= stop_after[0]:
            stop_after[0] = None
            raise KeyboardInterrupt
        calls[0] += 1
        return real(data, path)

    monkeypatch.setattr(images_module, "_rgb_from_bytes", decode)
    monkeypatch.setattr(pixel_files, "CHECKPOINT_SECONDS", 0.0)  # record after every image
    return calls, stop_after


def _interrupted_build(store: ImageStore, paths, stop_after, after: int) -> None:
    stop_after[0] = after
    with pytest.raises(KeyboardInterrupt):
        store.get(paths, 36, 32, "bicubic")


def test_a_stopped_build_resumes_and_gives_the_same_pixels(tmp_path, many, counted):
    calls, stop_after = counted
    store = ImageStore(tmp_path / "cache")
    _interrupted_build(store, many, stop_after, after=13)
    cache = tmp_path / "cache"
    assert len(list(cache.glob("*.npy.partial"))) == 1 and not list(cache.glob("*.npy"))
    assert not list(cache.glob("*.partial.lock"))  # released on the way out
    calls[0] = 0
    advanced, reused = [], []
    decoded = store.get(many, 36, 32, "bicubic", progress=advanced.append, reused=reused.append)
    assert calls[0] == 20 - 13  # only the images not decoded before
    assert reused == [13] and sum(advanced) == 7  # the resumed ones count as done before
    expected = decode_images(many, 36, 32, "bicubic")
    np.testing.assert_array_equal(np.asarray(decoded.pixels), np.asarray(expected.pixels))
    assert not list(cache.glob("*.partial*"))  # nothing left to resume
    calls[0], again, hits = 0, [], []
    store.get(many, 36, 32, "bicubic", progress=again.append, reused=hits.append)  # a hit
    assert calls[0] == 0 and again == [] and hits == [20]
    calls[0], again = 0, []
    store.get(many, 36, 32, "bicubic", progress=again.append)  # without reused: all progress
    assert calls[0] == 0 and sum(again) == 20


def test_a_changed_partial_is_not_trusted(tmp_path, many, counted):
    calls, stop_after = counted
    store = ImageStore(tmp_path / "cache")
    _interrupted_build(store, many, stop_after, after=10)
    (partial,) = list((tmp_path / "cache").glob("*.npy.partial"))
    with open(partial, "r+b") as file:  # damage a recorded row
        file.seek(len(pixel_files.npy_header((20, 3, 32, 32))) + 5)
        file.write(b"\xff\x00\xff")
    calls[0] = 0
    decoded = store.get(many, 36, 32, "bicubic")
    assert calls[0] == 20  # started over
    np.testing.assert_array_equal(np.asarray(decoded.pixels),
                                  np.asarray(decode_images(many, 36, 32, "bicubic").pixels))


def test_a_dead_builders_lock_is_taken_over_and_a_live_one_left_alone(tmp_path, many, counted):
    calls, stop_after = counted
    cache = tmp_path / "cache"
    store = ImageStore(cache)
    _interrupted_build(store, many, stop_after, after=8)
    (progress,) = list(cache.glob("*.partial.json"))
    lock = cache / progress.name.replace(".json", ".lock")
    host = socket.gethostname()
    lock.write_text(f"{os.getppid()}@{host}")  # a live process is building it
    calls[0] = 0
    live = store.get(many, 36, 32, "bicubic")
    assert calls[0] == 20 and lock.read_text() == f"{os.getppid()}@{host}"  # built privately
    assert progress.exists()  # the other build's files are untouched
    assert pixel_files.stale_partial_builds(cache) == []

    for npy in cache.glob("*.npy"):  # drop the finished entry: the next get must build again
        npy.unlink()
    lock.write_text(f"999999999@{host}")  # killed (SIGKILL): its lock stayed
    assert sorted(pixel_files.stale_partial_builds(cache)) == sorted(
        list(cache.glob("*.npy.partial")) + [progress])
    calls[0] = 0
    resumed = store.get(many, 36, 32, "bicubic")
    assert calls[0] == 20 - 8 and not lock.exists()
    np.testing.assert_array_equal(np.asarray(resumed.pixels), np.asarray(live.pixels))


def test_skipped_images_are_remembered_across_a_resume(tmp_path, many, counted):
    calls, stop_after = counted
    many[3].write_bytes(b"not an image")
    store = ImageStore(tmp_path / "cache")
    stop_after[0] = 12
    with pytest.raises(KeyboardInterrupt):
        store.get(many, 36, 32, "bicubic", skip_bad=True)
    decoded = store.get(many, 36, 32, "bicubic", skip_bad=True)
    assert [str(p) for p, _ in decoded.bad] == [str(many[3])]
    assert list(decoded.kept) == [i for i in range(20) if i != 3]
    expected = decode_images(many, 36, 32, "bicubic", skip_bad=True, warn_bad=False)
    np.testing.assert_array_equal(np.asarray(decoded.pixels), np.asarray(expected.pixels))


def test_a_build_killed_with_sigkill_resumes(tmp_path, many):
    """A real kill -9 in the middle of a build: the next build decodes only what is left."""
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    script = f"""
import time
from pathlib import Path
from cytotune.data import image_store, images, pixel_files
pixel_files.CHECKPOINT_SECONDS = 0.0
real = images._rgb_from_bytes
def slow(data, path):
    time.sleep(0.1)
    return real(data, path)
images._rgb_from_bytes = slow
image_store.ImageStore(Path({str(cache)!r})).get({[str(p) for p in many]!r}, 36, 32, "bicubic")
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 6:
        time.sleep(0.05)
        for progress in cache.glob("*.partial.json"):
            try:
                done = __import__("json").loads(progress.read_text())["done"]
            except ValueError:
                pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 6 <= done < 20, f"the build was not caught halfway (done={done})"
    calls = []
    real = images_module._rgb_from_bytes
    images_module._rgb_from_bytes = lambda data, path: calls.append(1) or real(data, path)
    try:
        decoded = ImageStore(cache).get(many, 36, 32, "bicubic")
    finally:
        images_module._rgb_from_bytes = real
    assert len(calls) <= 20 - done
    np.testing.assert_array_equal(np.asarray(decoded.pixels),
                                  np.asarray(decode_images(many, 36, 32, "bicubic").pixels))
