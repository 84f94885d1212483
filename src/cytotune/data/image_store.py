"""The decoded-image cache on disk: :class:`ImageStore` keeps :func:`decode_images` results keyed by
the files' *contents*, so a changed file can never be served from a stale cache; entries are
memory-mapped ``.npy`` files with a JSON sidecar (see the class), built resumably
(:mod:`cytotune.data.pixel_files`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import PIL
import torch

from cytotune.data import cachefiles
from cytotune.data.cachefiles import CacheError
from cytotune.data.images import (SKIP_BAD_HINT, DecodedImages, ImageDecodeError, PixelTransform,
                                  _check_settings, _decode_in_memory, _decode_into, _ordered_map,
                                  _read_bytes)
from cytotune.data.pixel_files import NpyFile, ResumableBuild, map_npy

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 2
_CACHE_WHAT = "image cache entry"

@dataclass(frozen=True)
class _FileDigest:
    """One file's content hash, or why it could not be read."""

    digest: bytes
    error: Optional[str] = None


class ImageStore:
    """Decode-once cache of :func:`decode_images` results, keyed by file contents.

    The key is a blake2b hash of the decode settings, the PIL version and every file's content
    hash, in order, so editing, replacing or re-exporting any image yields a new key and stale
    pixels are never served (a cache keyed on folder paths would). Each entry is ``<key>.npy``
    (the pixels, written atomically and memory-mapped on load, so 40k images need not fit in RAM)
    and ``<key>.json`` (which inputs were skipped and why, and the ``.npy``'s digest, checked on
    load: a changed or damaged file is reported, removed and decoded again). Only file contents
    are keyed, never paths, so entries are stored by position: ``bad`` is reported with the
    caller's paths. A cache folder that cannot be written (full disk, read-only) is a warning
    and the images are decoded in memory instead.

    ``cache_dir=None`` disables the disk cache (every call decodes, and still reports ``key``).
    Files are read once: bytes read for hashing are kept (up to ``max_retained_bytes``) and reused
    when a miss decodes.

    ``transform`` (stain normalisation, :class:`~cytotune.data.images.PixelTransform`) runs on
    every resized image before it is stored; its ``fingerprint`` is part of every key (the set's
    and each image's), so pixels, and the features keyed on them, of another method or target
    are never reused. Images it could not be applied to are recorded in the sidecar and returned
    as ``unnormalised`` on every later hit too.
    """

    def __init__(self, cache_dir: Path | str | None, num_workers: int = 0,
                 max_retained_bytes: int = 512 * 2**20,
                 transform: Optional[PixelTransform] = None) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.transform = transform
        self.num_workers = num_workers
        self.max_retained_bytes = max_retained_bytes
        self.hits = 0
        self.misses = 0
        self._progress: Optional[Callable[[int], None]] = None
        self._reused: Optional[Callable[[int], None]] = None

    def _on_image(self, done: int, kept: list[int], bad: list[tuple[int, str]]) -> None:
        self._advance(1)

    def get(self, paths: Sequence[Path | str], resize_size: int, crop_size: int,
            interpolation: str, skip_bad: bool = False,
            progress: Optional[Callable[[int], None]] = None,
            reused: Optional[Callable[[int], None]] = None) -> DecodedImages:
        """The decoded images for ``paths``, from the cache when their contents are unchanged.

        The returned tensor is memory-mapped copy-on-write: writing to it never touches the file.
        ``progress(n)``: ``n`` more of ``paths`` were decoded now, so a display can follow a build
        of many thousand images; ``reused(n)`` (default: ``progress``): ``n`` were done before
        (found in the cache, or decoded by a stopped build this one resumes).
        """
        self._progress, self._reused = progress, reused or progress
        try:
            return self._get([Path(p) for p in paths], resize_size, crop_size, interpolation,
                             skip_bad)
        finally:
            self._progress = self._reused = None

    def _advance(self, n: int) -> None:
        if self._progress is not None and n:
            self._progress(n)

    def _advance_reused(self, n: int) -> None:
        if self._reused is not None and n:
            self._reused(n)

    def _get(self, paths: list[Path], resize_size: int, crop_size: int, interpolation: str,
             skip_bad: bool) -> DecodedImages:
        _check_settings(resize_size, crop_size, interpolation)
        digests, retained = self._hash_files(paths, skip_bad)
        key = self._key(digests, resize_size, crop_size, interpolation, self._transform_id)
        read = self._reader(paths, digests, retained)
        decoded = None if self.cache_dir is None else self._load(key, paths, crop_size)
        if decoded is not None:
            self.hits += 1
            self._advance_reused(len(paths))
        elif self.cache_dir is None:
            self.misses += 1
            decoded = _decode_in_memory(paths, read, resize_size, crop_size, interpolation,
                                        skip_bad, self.num_workers, on_image=self._on_image,
                                        transform=self.transform)
        else:
            self.misses += 1
            decoded = self._decode_and_store(key, paths, read, resize_size, crop_size,
                                             interpolation, skip_bad)
        if decoded.bad and not skip_bad:  # a cached entry may record files skipped earlier
            path, reason = decoded.bad[0]
            raise ImageDecodeError(path, reason, SKIP_BAD_HINT)
        decoded.key = key
        decoded.image_keys = [self._key([digests[i]], resize_size, crop_size, interpolation,
                                        self._transform_id) for i in decoded.kept.tolist()]
        return decoded

    def cache_key(self, paths: Sequence[Path | str], resize_size: int, crop_size: int,
                  interpolation: str) -> str:
        """The cache key ``get`` would use for these files and settings (reads every file)."""
        _check_settings(resize_size, crop_size, interpolation)
        digests, _ = self._hash_files([Path(p) for p in paths], skip_bad=True, retain=False)
        return self._key(digests, resize_size, crop_size, interpolation, self._transform_id)

    @property
    def _transform_id(self) -> str:
        return "" if self.transform is None else self.transform.fingerprint

    # -- hashing

    def _hash_files(self, paths: list[Path], skip_bad: bool,
                    retain: bool = True) -> tuple[list[_FileDigest], dict[int, bytes]]:
        def digest(index: int) -> tuple[_FileDigest, Optional[bytes]]:
            try:
                data = _read_bytes(paths[index])
            except ImageDecodeError as err:
                marker = hashlib.blake2b(f"unreadable:{err.reason}".encode(), digest_size=16)
                return _FileDigest(marker.digest(), err.reason), None
            return _FileDigest(hashlib.blake2b(data, digest_size=16).digest()), data

        digests: list[_FileDigest] = []
        retained: dict[int, bytes] = {}
        budget = self.max_retained_bytes if retain else 0
        for index, (file_digest, data) in enumerate(
                _ordered_map(digest, range(len(paths)), self.num_workers)):
            if file_digest.error is not None and not skip_bad:
                raise ImageDecodeError(paths[index], file_digest.error, SKIP_BAD_HINT)
            digests.append(file_digest)
            if data is not None and len(data) <= budget:
                retained[index] = data
                budget -= len(data)
        return digests, retained

    @staticmethod
    def _reader(paths: list[Path], digests: list[_FileDigest],
                retained: dict[int, bytes]) -> Callable[[int], bytes]:
        """Bytes of ``paths[i]``: the copy kept from hashing (handed over once), else re-read."""

        def read(index: int) -> bytes:
            error = digests[index].error
            if error is not None:
                raise ImageDecodeError(paths[index], error)
            data = retained.pop(index, None)
            return data if data is not None else _read_bytes(paths[index])

        return read

    @staticmethod
    def _key(digests: Iterable[_FileDigest], resize_size: int, crop_size: int,
             interpolation: str, transform: str = "") -> str:
        """``transform``: the fingerprint of the per-image transform ("" without one, so keys of
        plain decodes are those of earlier versions and their cache entries stay valid)."""
        key = hashlib.blake2b(digest_size=20)
        settings = (f"cytotune-images-v{_CACHE_FORMAT}|pillow-{PIL.__version__}|"
                    f"resize={resize_size}|crop={crop_size}|interp={interpolation}|"
                    + (f"transform={transform}|" if transform else ""))
        key.update(settings.encode())
        for file_digest in digests:
            key.update(file_digest.digest)
        return key.hexdigest()

    # -- cache files

    def _entry(self, key: str) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        return self.cache_dir / f"{key}.npy", self.cache_dir / f"{key}.json"

    def _load(self, key: str, paths: list[Path], crop_size: int,
              checked: bool = False) -> Optional[DecodedImages]:
        """The cached entry for ``key``, or None when absent or unusable (then it is rebuilt).

        Its pixels file is checked against the digest recorded when it was written (see
        :func:`cytotune.data.cachefiles.verify_mode`; ``checked``: just written by this process);
        a mismatch is a warning naming the file, which is removed and decoded again."""
        pixels_path, sidecar_path = self._entry(key)
        if not sidecar_path.is_file():  # written last, so it marks a complete entry
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
            bad = [(int(i), str(reason)) for i, reason in sidecar["bad"]]
            unnormalised = [int(i) for i in sidecar.get("unnormalised", [])]
            n_kept = len(paths) - len(bad)
            expected = (n_kept, 3, crop_size, crop_size)
            if sidecar["n_paths"] != len(paths):
                raise ValueError(f"lists {sidecar['n_paths']} images, expected {len(paths)}")
            problem = None if checked else check_image_entry(pixels_path, sidecar_path, sidecar)
            if problem is None:
                # Copy-on-write map: still lazily paged from disk, but an in-place edit of the
                # tensor stays private instead of faulting on read-only memory or altering the
                # cache.
                pixels = map_npy(pixels_path, expected)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("ignoring unusable image cache entry %s (%s); decoding again",
                           pixels_path, err)
            return None
        if problem is not None:
            cachefiles.discard([pixels_path, sidecar_path], _CACHE_WHAT, problem)
            return None
        return self._decoded(pixels, paths, bad, unnormalised)

    @staticmethod
    def _decoded(pixels: np.ndarray, paths: list[Path], bad: list[tuple[int, str]],
                 unnormalised: Sequence[int] = ()) -> DecodedImages:
        bad_indices = {i for i, _ in bad}
        kept = np.asarray([i for i in range(len(paths)) if i not in bad_indices], dtype=np.int64)
        return DecodedImages(pixels=torch.from_numpy(pixels), kept=kept,
                             bad=[(paths[i], reason) for i, reason in bad],
                             unnormalised=[paths[i] for i in unnormalised])

    def _decode_and_store(self, key: str, paths: list[Path], read: Callable[[int], bytes],
                          resize_size: int, crop_size: int, interpolation: str,
                          skip_bad: bool) -> DecodedImages:
        """Decode into a ``.npy`` whose space is reserved first, move it into place, then write
        the sidecar with the file's digest. The build is resumable (see
        :mod:`cytotune.data.pixel_files`): a build of the same images stopped before resumes
        where it stopped; while another live process builds them, this one builds privately.
        A cache folder that cannot be written (full, read-only) is a warning, and the images
        are decoded without caching."""
        assert self.cache_dir is not None
        pixels_path, sidecar_path = self._entry(key)
        shape = (len(paths), 3, crop_size, crop_size)
        build: Optional[ResumableBuild] = None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            cachefiles.remove_leftover_temp_files(self.cache_dir)
            build = ResumableBuild.claim(self.cache_dir, key, shape, len(paths))
            target = build.target if build is not None else NpyFile(self.cache_dir, shape)
            assert target is not None
        except OSError as err:
            if build is not None:
                build.release()
            self._check_memory(err, shape)
            cachefiles.warn_unwritable(self.cache_dir, err)
            return _decode_in_memory(paths, read, resize_size, crop_size, interpolation,
                                     skip_bad, self.num_workers, on_image=self._on_image,
                                     transform=self.transform)
        start = build.start if build is not None else 0
        unnormalised = build.unnormalised if build is not None else []
        self._advance_reused(start)

        def on_image(done: int, kept: list[int], bad: list[tuple[int, str]]) -> None:
            self._advance(1)
            if build is not None:
                build.record(done, kept, bad)

        try:
            kept, bad = _decode_into(paths, read, target.rows, resize_size, crop_size,
                                     interpolation, skip_bad, self.num_workers, start=start,
                                     kept=build.kept if build else None,
                                     bad=build.bad if build else None, on_image=on_image,
                                     transform=self.transform, unnormalised=unnormalised)
            digest = target.finish(len(kept))
            sidecar = {"format": _CACHE_FORMAT, "n_paths": len(paths), "resize_size": resize_size,
                       "crop_size": crop_size, "interpolation": interpolation,
                       "bad": [[i, reason] for i, reason in bad], "digest": digest,
                       "stamp": None, "transform": self._transform_id,
                       "unnormalised": sorted(unnormalised)}
            try:
                os.replace(target.path, pixels_path)
                cachefiles.write_atomic(sidecar_path, json.dumps(sidecar, indent=1).encode())
            except OSError as err:  # e.g. no room for the sidecar: keep the decoded pixels
                cachefiles.warn_unwritable(self.cache_dir, err)
                source = pixels_path if not target.path.exists() else target.path
                pixels = map_npy(source, (len(kept),) + shape[1:])
                source.unlink(missing_ok=True)  # the map keeps the data until it is dropped
                return self._decoded(pixels, paths, bad, unnormalised)
            if build is not None:
                build.complete()
        finally:
            if build is None:
                target.discard()
            else:  # a stopped build keeps its files to resume from
                build.release()
        loaded = self._load(key, paths, crop_size, checked=True)
        if loaded is None:
            raise CacheError(f"image cache entry {pixels_path} could not be read back after "
                             f"writing (removed meanwhile by another process?); run again")
        return loaded

    def _check_memory(self, err: OSError, shape: tuple[int, ...]) -> None:
        """Refuse, in one line, to decode in memory what clearly does not fit there."""
        needed, available = int(np.prod(shape)), cachefiles.available_memory()
        if available is not None and needed > 0.8 * available:
            raise CacheError(
                f"cannot write the image cache at {self.cache_dir} ({err.strerror or err}), and "
                f"decoding {shape[0]} images in memory instead needs {needed / 2**30:.1f} GiB of "
                f"the {available / 2**30:.1f} GiB available. "
                f"{cachefiles.unwritable_hint(err)}") from err


def check_image_entry(pixels_path: Path, sidecar_path: Path, sidecar: dict) -> Optional[str]:
    """Why the pixels file of an image cache entry cannot be trusted, or None when it matches
    the digest recorded at write. Hashes the file only when :func:`cachefiles.needs_hashing`
    says so; after a successful hash the file's stamp is recorded (best effort), so unchanged
    files are not hashed again."""
    with cachefiles.timed_check():
        return _check_image_entry(pixels_path, sidecar_path, sidecar)


def _check_image_entry(pixels_path: Path, sidecar_path: Path, sidecar: dict) -> Optional[str]:
    recorded = sidecar.get("digest")
    if not isinstance(recorded, str) or ":" not in recorded:
        return "has no content digest (written by an older cytotune)"
    if not cachefiles.needs_hashing(pixels_path, sidecar.get("stamp")):
        return None
    actual = cachefiles.file_digest(pixels_path, recorded.split(":", 1)[0])
    if actual != recorded:
        return ("does not match the digest recorded when it was written (changed or damaged "
                "on disk)")
    stamp = cachefiles.file_stamp(pixels_path)
    if stamp is not None and stamp != sidecar.get("stamp"):
        try:  # a read-only cache is simply hashed again next time
            cachefiles.write_atomic(sidecar_path,
                                    json.dumps({**sidecar, "stamp": stamp}, indent=1).encode())
        except OSError as err:
            logger.debug("could not record the stamp of %s (%s)", pixels_path, err)
    return None
