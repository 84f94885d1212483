"""Decoding any common image to RGB, resizing/cropping, bad files, and the content-keyed cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cytotune.data import (DataError, ImageDecodeError, ImageStore, decode_images, decode_resized,
                           load_rgb)


def _rgb(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


# --------------------------------------------------------------------------- modes


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = _rgb(tmp_path / "gray.png")
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_rgba_composites_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0] = (255, 0, 0, 255)  # opaque red
    rgba[1] = (255, 0, 0, 0)  # fully transparent: background shows
    rgba[2] = (0, 0, 0, 128)  # half-transparent black over white: mid gray
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    rgb = _rgb(tmp_path / "alpha.png")
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [255, 255, 255])
    assert np.all(np.abs(rgb[2, 0].astype(int) - 127) <= 1)


def test_la_composites_onto_white(tmp_path):
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "la.png"), 255)


def test_16bit_ramp_is_scaled_by_its_bit_range(tmp_path):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # a 12-bit camera's full range
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as image:
        assert image.mode == "I;16"
    gray = _rgb(tmp_path / "ramp16.png")[..., 0].ravel()
    assert gray[0] == 0 and gray[-1] == 255  # spans 0..255, not clipped at 255 early
    assert np.all(np.diff(gray.astype(int)) >= 0)  # monotonic
    assert abs(int(gray[2048]) - 128) <= 1
    assert len(np.unique(gray)) == 256


def test_16bit_big_endian_and_32bit_integer(tmp_path):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i32.tif")
    for name in ("be.tif", "i32.tif"):
        gray = _rgb(tmp_path / name)[..., 0].ravel()
        assert (gray[0], gray[-1]) == (0, 255), name


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "p.png")[0, 0], [10, 200, 30])
    palette.save(tmp_path / "p_transparent.png", transparency=1)
    np.testing.assert_array_equal(_rgb(tmp_path / "p_transparent.png")[0, 0], [255, 255, 255])


def test_cmyk_converts_to_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "cmyk.tif")[0, 0], [255, 0, 0])


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def bad_files(tmp_path, make_image):
    good = make_image(tmp_path / "good.jpg", size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return {"truncated": truncated, "garbage": garbage, "empty": empty,
            "missing": tmp_path / "missing.png"}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing"])
def test_bad_file_error_names_the_file(bad_files, kind):
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(bad_files[kind])
    assert str(bad_files[kind]) in str(info.value)
    assert info.value.path == bad_files[kind]


def test_decode_images_raises_with_hint_or_skips_and_reports(tmp_path, make_image, bad_files):
    paths = [make_image(tmp_path / "a.png"), bad_files["truncated"], make_image(tmp_path / "b.png")]
    with pytest.raises(ImageDecodeError) as info:
        decode_images(paths, 32, 32, "bilinear")
    message = str(info.value)
    assert str(bad_files["truncated"]) in message
    assert "skip_bad" in message and "--skip-bad-images" in message

    decoded = decode_images(paths, 32, 32, "bilinear", skip_bad=True)
    assert decoded.pixels.shape == (2, 3, 32, 32) and decoded.pixels.dtype == torch.uint8
    np.testing.assert_array_equal(decoded.kept, [0, 2])
    assert [path for path, _ in decoded.bad] == [bad_files["truncated"]]


# --------------------------------------------------------------------------- resize and crop


def test_decode_resized_shorter_side_and_center_crop(tmp_path):
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)  # wide: 200 x 100
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = decode_resized(tmp_path / "wide.png", 50, 40, "nearest")  # -> 100 x 50, crop 40
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :20], [[[255, 0, 0]] * 20] * 40)
    np.testing.assert_array_equal(out[:, 20:], [[[0, 0, 255]] * 20] * 40)


@pytest.mark.parametrize("options, option_name", [
    ({"interpolation": "lanczos"}, "interpolation"),
    ({"crop_size": 80}, "crop_size"),
])
def test_bad_decode_options_name_the_option(tmp_path, make_image, options, option_name):
    settings = {"resize_size": 64, "crop_size": 56, "interpolation": "bicubic", **options}
    with pytest.raises(DataError, match=option_name):
        decode_images([make_image(tmp_path / "a.png")], **settings)


def test_threads_give_the_same_pixels(tmp_path, make_image):
    paths = [make_image(tmp_path / f"{i}.png", color=(i * 20, 50, 90), size=(40 + i, 30))
             for i in range(6)]
    serial = decode_images(paths, 32, 28, "bicubic")
    threaded = decode_images(paths, 32, 28, "bicubic", num_workers=2)
    assert torch.equal(serial.pixels, threaded.pixels)


# --------------------------------------------------------------------------- ImageStore


@pytest.fixture
def images(tmp_path, make_image):
    return [make_image(tmp_path / "img" / f"{i}.png", color=(i * 40, 80, 200), size=(48, 40))
            for i in range(4)]


def test_store_miss_then_hit_matches_direct_decoding(tmp_path, images):
    store = ImageStore(tmp_path / "cache")
    first = store.get(images, 36, 32, "bicubic")
    assert (store.hits, store.misses) == (0, 1)
    second = store.get(images, 36, 32, "bicubic")
    assert (store.hits, store.misses) == (1, 1)
    direct = decode_images(images, 36, 32, "bicubic")
    assert torch.equal(first.pixels, direct.pixels) and torch.equal(second.pixels, direct.pixels)
    assert first.key == second.key == store.cache_key(images, 36, 32, "bicubic")
    np.testing.assert_array_equal(second.kept, np.arange(4))
    cache_files = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert cache_files == [".json", ".npy"]  # one entry, no temp files left behind


def test_store_key_depends_on_settings(tmp_path, images):
    store = ImageStore(tmp_path / "cache")
    key = store.cache_key(images, 36, 32, "bicubic")
    assert key == store.cache_key(images, 36, 32, "bicubic")
    assert key != store.cache_key(images, 36, 32, "bilinear")
    assert key != store.cache_key(images, 40, 32, "bicubic")


def test_changed_file_content_changes_key_and_is_never_served_stale(tmp_path, images,
                                                                    make_image):
    store = ImageStore(tmp_path / "cache")
    old_key = store.cache_key(images, 36, 32, "nearest")
    before = store.get(images, 36, 32, "nearest")
    assert int(before.pixels[2, 0, 0, 0]) == 80
    make_image(images[2], color=(7, 7, 7), size=(48, 40))  # same path, same size, new pixels
    assert store.cache_key(images, 36, 32, "nearest") != old_key
    after = store.get(images, 36, 32, "nearest")
    assert store.misses == 2
    assert int(after.pixels[2, 0, 0, 0]) == 7


def test_store_caches_bad_files_and_still_enforces_skip_bad(tmp_path, images):
    images[1].write_bytes(images[1].read_bytes()[:40])  # truncate one image
    store = ImageStore(tmp_path / "cache")
    with pytest.raises(ImageDecodeError, match="skip-bad-images"):
        store.get(images, 36, 32, "bicubic")
    skipped = store.get(images, 36, 32, "bicubic", skip_bad=True)
    np.testing.assert_array_equal(skipped.kept, [0, 2, 3])
    assert skipped.pixels.shape == (3, 3, 32, 32)
    assert all(p.suffix in (".npy", ".json") for p in (tmp_path / "cache").iterdir())
    again = store.get(images, 36, 32, "bicubic", skip_bad=True)
    assert store.hits == 1 and [p for p, _ in again.bad] == [images[1]]
    with pytest.raises(ImageDecodeError) as info:  # a cache hit does not hide the bad file
        store.get(images, 36, 32, "bicubic")
    assert str(images[1]) in str(info.value)


def test_store_tensor_edits_do_not_reach_the_cache(tmp_path, images):
    store = ImageStore(tmp_path / "cache")
    store.get(images, 36, 32, "bicubic")
    hit = store.get(images, 36, 32, "bicubic")
    original = hit.pixels.clone()
    hit.pixels.zero_()  # copy-on-write memory map: allowed, private to this tensor
    assert torch.equal(store.get(images, 36, 32, "bicubic").pixels, original)


def test_store_rebuilds_a_damaged_entry(tmp_path, images):
    store = ImageStore(tmp_path / "cache")
    store.get(images, 36, 32, "bicubic")
    (npy,) = (tmp_path / "cache").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    rebuilt = store.get(images, 36, 32, "bicubic")
    assert store.misses == 2
    assert torch.equal(rebuilt.pixels, decode_images(images, 36, 32, "bicubic").pixels)


def test_store_without_cache_dir_decodes_every_call(tmp_path, images):
    store = ImageStore(None)
    assert torch.equal(store.get(images, 36, 32, "bicubic").pixels,
                       store.get(images, 36, 32, "bicubic").pixels)
    assert (store.hits, store.misses) == (0, 2)
    assert not (tmp_path / "cache").exists()
    assert store.get(images, 36, 32, "bicubic").key == ImageStore(tmp_path / "c").cache_key(
        images, 36, 32, "bicubic")  # content key even without a disk cache


# --------------------------------------------------------------------------- cache integrity


def _payload_offset(npy: Path) -> int:
    with open(npy, "rb") as file:
        np.lib.format.read_magic(file)
        np.lib.format.read_array_header_1_0(file)
        return file.tell()


def _poison(npy: Path, seed: int = 0) -> None:
    """Random bytes over the whole pixel payload; the .npy header stays valid."""
    offset = _payload_offset(npy)
    size = npy.stat().st_size - offset
    with open(npy, "r+b") as file:
        file.seek(offset)
        file.write(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())


def test_store_poisoned_pixels_with_a_valid_header_are_found_and_decoded_again(
        tmp_path, images, caplog):
    store = ImageStore(tmp_path / "cache")
    store.get(images, 36, 32, "bicubic")
    (npy,) = (tmp_path / "cache").glob("*.npy")
    _poison(npy)
    with caplog.at_level("WARNING"):
        again = store.get(images, 36, 32, "bicubic")
    assert str(npy) in caplog.text and "does not match the digest" in caplog.text
    assert store.misses == 2  # decoded again, not served
    assert torch.equal(again.pixels, decode_images(images, 36, 32, "bicubic").pixels)
    assert store.get(images, 36, 32, "bicubic").key == again.key and store.hits == 1


def test_store_hashes_an_unchanged_entry_until_its_stamp_is_kept_and_any_write_breaks_it(
        tmp_path, images, monkeypatch, caplog):
    from cytotune.data import cachefiles

    monkeypatch.setattr(cachefiles, "STAMP_SETTLE_NS", 0)  # no wait for the timestamp tick
    hashed = []
    real_digest = cachefiles.file_digest
    monkeypatch.setattr(cachefiles, "file_digest",
                        lambda path, *a: hashed.append(Path(path)) or real_digest(path, *a))
    store = ImageStore(tmp_path / "cache")
    store.get(images, 36, 32, "bicubic")  # written: hashed once, at write
    store.get(images, 36, 32, "bicubic")  # first read: hashed, stamp recorded
    store.get(images, 36, 32, "bicubic")  # unchanged: one stat, no hashing
    assert len(hashed) == 2
    (npy,) = (tmp_path / "cache").glob("*.npy")
    with open(npy, "r+b") as file:  # one byte changed, size and header unchanged
        file.seek(_payload_offset(npy) + 5)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level("WARNING"):
        again = store.get(images, 36, 32, "bicubic")
    assert str(npy) in caplog.text
    assert torch.equal(again.pixels, decode_images(images, 36, 32, "bicubic").pixels)
    with cachefiles.verification("always"):  # hashes even a stamped entry
        before = len(hashed)
        store.get(images, 36, 32, "bicubic")
        assert len(hashed) == before + 1


def test_store_entry_without_a_digest_is_not_trusted(tmp_path, images, caplog):
    import json

    store = ImageStore(tmp_path / "cache")
    store.get(images, 36, 32, "bicubic")
    (sidecar,) = (tmp_path / "cache").glob("*.json")
    meta = json.loads(sidecar.read_text())
    del meta["digest"]
    sidecar.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        store.get(images, 36, 32, "bicubic")
    assert "no content digest" in caplog.text and store.misses == 2


@pytest.mark.parametrize("failing", ["reserve", "sidecar"])
def test_store_a_failed_cache_write_warns_keeps_the_pixels_and_leaves_no_temp_files(
        tmp_path, images, monkeypatch, caplog, failing):
    import errno

    from cytotune.data import cachefiles

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cachefiles, "reserve" if failing == "reserve" else "write_atomic",
                        no_space)
    monkeypatch.setattr(cachefiles, "_warned", set())
    store = ImageStore(tmp_path / "cache")
    with caplog.at_level("WARNING"):
        decoded = store.get(images, 36, 32, "bicubic")
    assert torch.equal(decoded.pixels, decode_images(images, 36, 32, "bicubic").pixels)
    assert f"cache folder {tmp_path / 'cache'}: No space left on device" in caplog.text
    assert "--cache-dir" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no *.tmp


def test_store_refuses_in_one_line_to_decode_in_memory_what_cannot_fit(tmp_path, images,
                                                                        monkeypatch):
    import errno

    from cytotune.data import cachefiles
    from cytotune.data.cachefiles import CacheError

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cachefiles, "temp_path", read_only)
    monkeypatch.setattr(cachefiles, "reserve", read_only)  # the resumable build's file
    monkeypatch.setattr(cachefiles, "available_memory", lambda: 1000)
    with pytest.raises(CacheError, match="Read-only file system.*in memory.*Make it writable"):
        ImageStore(tmp_path / "cache").get(images, 36, 32, "bicubic")
    assert not list((tmp_path / "cache").glob("*.partial*"))  # no lock or file left behind


def test_store_removes_temp_files_of_dead_processes_when_it_writes(tmp_path, images):
    import os
    import socket

    cache = tmp_path / "cache"
    cache.mkdir()
    host = socket.gethostname()
    dead = cache / f"tmp-999999999@{host}-ab12.npy.tmp"  # a killed run's partial entry
    alive = cache / f"tmp-{os.getpid()}@{host}-cd34.npy.tmp"  # one being written right now
    other_host = cache / f"tmp-999999999@{host}x-ef56.npy.tmp"  # maybe alive elsewhere
    for path in (dead, alive, other_host):
        path.write_bytes(b"partial")
    ImageStore(cache).get(images, 36, 32, "bicubic")
    assert not dead.exists() and alive.exists() and other_host.exists()


# ---- issue 31 item 10: tiny and huge images are named in one cytotune line each ----------------
def test_images_below_the_minimum_side_are_decoded_and_named_in_one_warning(tmp_path, make_image,
                                                                           caplog):
    from cytotune.data.images import MIN_IMAGE_SIDE

    paths = [make_image(tmp_path / "ok.png", size=(MIN_IMAGE_SIDE, 40)),
             make_image(tmp_path / "dot.png", size=(1, 1)),
             make_image(tmp_path / "strip.png", size=(64, MIN_IMAGE_SIDE - 1))]
    with caplog.at_level("WARNING", logger="cytotune.data.images"):
        decoded = decode_images(paths, 32, 32, "bilinear", num_workers=2)
    assert list(decoded.kept) == [0, 1, 2]  # accepted, as Pillow can decode them
    lines = [r.getMessage() for r in caplog.records if "smaller than" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"{paths[1]} (1x1)" in lines[0] and f"{paths[2]} (64x{MIN_IMAGE_SIDE - 1})" in lines[0]
    assert str(paths[0]) not in lines[0]


def test_a_decompression_bomb_warning_becomes_one_line_naming_the_file(tmp_path, make_image,
                                                                       caplog, monkeypatch):
    """Pillow's two raw lines (a library path, no file name) become one cytotune warning. The
    limit is lowered instead of writing a 12000x12000 file: 40x40 is above 1,000 pixels and
    below twice that (where Pillow refuses the file, reported as undecodable)."""
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big = make_image(tmp_path / "big.png", size=(40, 40))
    small = make_image(tmp_path / "small.png", size=(30, 30))
    with caplog.at_level("WARNING", logger="cytotune.data.images"), \
            warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        decoded = decode_images([big, small], 16, 16, "bilinear", num_workers=2)
        load_rgb(big)
    assert list(decoded.kept) == [0, 1]
    assert not [w for w in raw if issubclass(w.category, Image.DecompressionBombWarning)]
    lines = [r.getMessage() for r in caplog.records if "decompression-bomb" in r.getMessage()]
    assert len(lines) == 2 and all(f"{big} (40x40)" in line for line in lines), lines
    assert all(str(small) not in line for line in lines)
    huge = make_image(tmp_path / "huge.png", size=(50, 50))  # 2,500 > 2 x 1,000: refused
    with pytest.raises(ImageDecodeError, match="huge.png"):
        decode_images([huge], 16, 16, "bilinear")
