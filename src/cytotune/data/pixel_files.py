"""The decoded-pixel cache's files: ``.npy`` entries, written so that a full disk is an error
rather than a crash, and built so that a killed build resumes where it stopped.

Decoding 50,000 images takes minutes on a laptop; a build killed at 90 % used to start over. A
build now writes into ``<key>.npy.partial`` (space reserved up front) and records, every few
seconds, how far it got in ``<key>.partial.json``: the inputs consumed, the rows written, the
images skipped, and a digest of each block of rows since the previous record. The next build of
the same entry checks those digests, keeps the rows that match and decodes only the rest. One
process builds an entry at a time (``<key>.partial.lock`` names it); a second one, while the
first runs, builds privately as before.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import Optional

import numpy as np

from cytotune._process import pid_alive
from cytotune.data import cachefiles

logger = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0  # how often a build records its progress (and hashes the new rows)
_PROGRESS_FORMAT = 1


def map_npy(path: Path, expected: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of shape ``expected`` in the ``.npy`` at ``path``, memory-mapped
    copy-on-write (numpy cannot map an empty array: that one is read)."""
    if int(np.prod(expected)) == 0:
        pixels = np.load(path)
    else:
        pixels = np.load(path, mmap_mode="c")
    if pixels.shape != expected or pixels.dtype != np.uint8:
        raise ValueError(f"holds {pixels.dtype} {pixels.shape}, expected uint8 {expected}")
    return pixels


def npy_header(shape: tuple[int, ...], length: Optional[int] = None) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-ordered uint8 array; padded to ``length`` bytes
    when given, so a shrunk array's header can overwrite the original one in place."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    header = buffer.getvalue()
    if length is not None and len(header) != length:
        if len(header) > length or length - 10 > 0xFFFF:
            raise ValueError(f"npy header of {shape} does not fit in {length} bytes")
        header = header[:-1] + b" " * (length - len(header)) + b"\n"
        header = header[:8] + struct.pack("<H", length - 10) + header[10:]
    return header


class NpyFile:
    """A ``.npy`` of uint8 rows being written, its whole size allocated before it is
    memory-mapped: writing a map of a sparse file on a full disk kills the process with SIGBUS
    ("Bus error"); a reservation fails with a plain OSError instead, before any work.

    ``path=None``: a new private temporary file in ``directory``; else that file, reopened
    when it already holds an array of ``shape`` (a resumed build)."""

    def __init__(self, directory: Path, shape: tuple[int, ...],
                 path: Optional[Path] = None) -> None:
        self.shape = shape
        self.header = npy_header(shape)
        reopen = path is not None and path.is_file() and \
            path.stat().st_size == len(self.header) + int(np.prod(shape))
        self.path = path if path is not None else cachefiles.temp_path(directory, ".npy.tmp")
        try:
            if not reopen:
                with open(self.path, "wb" if path is not None else "r+b") as file:
                    file.write(self.header)
                    file.flush()
                    cachefiles.reserve(file.fileno(), len(self.header) + int(np.prod(shape)))
            self.rows: Optional[np.ndarray] = (
                np.memmap(self.path, dtype=np.uint8, mode="r+", offset=len(self.header),
                          shape=shape) if int(np.prod(shape)) else np.empty(shape, np.uint8))
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def flush(self) -> None:
        if isinstance(self.rows, np.memmap):
            self.rows.flush()

    def finish(self, n_rows: int) -> str:
        """Write the pixels out, keep only the first ``n_rows`` rows (header rewritten in place,
        file truncated: no second copy, so no extra space needed) and return the file's digest."""
        assert self.rows is not None
        self.flush()
        self.rows = None  # unmap before truncating
        header = npy_header((n_rows,) + self.shape[1:], length=len(self.header))
        row_bytes = int(np.prod(self.shape[1:]))
        with open(self.path, "r+b") as file:
            file.write(header)
            file.truncate(len(header) + n_rows * row_bytes)
            file.flush()
        return cachefiles.file_digest(self.path)

    def discard(self) -> None:
        """Remove the file unless it was moved into place."""
        self.rows = None
        self.path.unlink(missing_ok=True)


class ResumableBuild:
    """The on-disk state of one entry's build, owned by this process (see the module doc).

    ``start`` inputs are done: ``kept`` (their input indices) are rows ``0..len(kept)`` of
    ``target``, ``bad`` the skipped ones. Call :meth:`record` as rows are written (it
    checkpoints every :data:`CHECKPOINT_SECONDS`), :meth:`complete` once the entry is in place,
    and :meth:`release` in any case (a build stopped early stays resumable)."""

    def __init__(self, directory: Path, key: str, shape: tuple[int, ...], n_paths: int):
        self.directory, self.key, self.shape, self.n_paths = directory, key, shape, n_paths
        self.pixels_path = directory / f"{key}.npy.partial"
        self.progress_path = directory / f"{key}.partial.json"
        self.lock_path = directory / f"{key}.partial.lock"
        self.start, self.kept, self.bad, self.blocks = 0, [], [], []
        # inputs a per-image transform (stain normalisation) could not be applied to
        self.unnormalised: list[int] = []
        self.target: Optional[NpyFile] = None
        self._last = time.monotonic()

    @classmethod
    def claim(cls, directory: Path, key: str, shape: tuple[int, ...],
              n_paths: int) -> Optional["ResumableBuild"]:
        """This process's build of ``key``, resumed from what a stopped build left; None when
        another live process is building it (or the lock cannot be taken)."""
        build = cls(directory, key, shape, n_paths)
        if not build._lock():
            return None
        try:
            build._resume()
            build.target = NpyFile(directory, shape, path=build.pixels_path)
        except BaseException:
            build.release()
            raise
        return build

    def _lock(self) -> bool:
        owner = f"{os.getpid()}@{cachefiles._host()}".encode()
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale_lock():
                    return False
                self.lock_path.unlink(missing_ok=True)
                continue
            except OSError:
                return False
            with os.fdopen(fd, "wb") as file:
                file.write(owner)
            return True
        return False

    def _stale_lock(self) -> bool:
        """Whether the lock was left by a process of this host that no longer runs."""
        try:
            text = self.lock_path.read_text().strip()
        except OSError:
            return False
        pid, _, host = text.partition("@")
        return pid.isdigit() and host == cachefiles._host() and not pid_alive(int(pid))

    def _resume(self) -> None:
        """Take over what a stopped build recorded, if it still matches the file; else start
        over (the reason logged)."""
        if not self.progress_path.is_file():
            return
        try:
            progress = json.loads(self.progress_path.read_text())
            if progress.get("format") != _PROGRESS_FORMAT or \
                    progress.get("shape") != list(self.shape) or \
                    progress.get("n_paths") != self.n_paths:
                raise ValueError("it was made for other settings")
            kept, blocks = [int(i) for i in progress["kept"]], progress["blocks"]
            self._check_blocks(blocks, len(kept))
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.info("not resuming the image cache build %s (%s); starting over",
                        self.pixels_path, err)
            self.progress_path.unlink(missing_ok=True)
            self.pixels_path.unlink(missing_ok=True)
            return
        self.start, self.kept, self.blocks = int(progress["done"]), kept, blocks
        self.bad = [(int(i), str(reason)) for i, reason in progress["bad"]]
        self.unnormalised = [int(i) for i in progress.get("unnormalised", [])]
        logger.info("resuming the image cache build %s: %d of %d images already decoded",
                    self.pixels_path, self.start, self.n_paths)

    def _check_blocks(self, blocks: list, rows: int) -> None:
        row_bytes = int(np.prod(self.shape[1:]))
        offset = len(npy_header(self.shape))
        if not blocks and rows:
            raise ValueError("rows recorded without digests")
        with cachefiles.timed_check(), open(self.pixels_path, "rb") as file:
            for first, last, recorded in blocks:
                file.seek(offset + first * row_bytes)
                digest = hashlib.new(recorded.split(":", 1)[0])
                remaining = (last - first) * row_bytes
                while remaining:
                    data = file.read(min(remaining, 8 * 2**20))
                    if not data:
                        raise ValueError("the file is shorter than recorded")
                    digest.update(data)
                    remaining -= len(data)
                if cachefiles.format_digest(digest) != recorded:
                    raise ValueError(f"rows {first}-{last} changed since they were recorded")
            if blocks and blocks[-1][1] != rows:
                raise ValueError("the recorded rows and digests disagree")

    def record(self, done: int, kept: list[int], bad: list[tuple[int, str]],
               force: bool = False) -> None:
        """``done`` inputs are finished; checkpoint when due (or ``force``)."""
        if not force and time.monotonic() - self._last < CHECKPOINT_SECONDS:
            return
        assert self.target is not None and self.target.rows is not None
        first = self.blocks[-1][1] if self.blocks else 0
        if len(kept) > first:
            self.target.flush()
            digest = hashlib.new(cachefiles.DIGEST_NAME)
            digest.update(np.ascontiguousarray(self.target.rows[first:len(kept)]).data)
            self.blocks.append([first, len(kept), cachefiles.format_digest(digest)])
        progress = {"format": _PROGRESS_FORMAT, "shape": list(self.shape),
                    "n_paths": self.n_paths, "done": done, "kept": kept,
                    "bad": [[i, reason] for i, reason in bad], "blocks": self.blocks,
                    "unnormalised": list(self.unnormalised)}
        try:
            cachefiles.write_atomic(self.progress_path, json.dumps(progress).encode())
        except OSError as err:  # a build that cannot record stays correct, just not resumable
            logger.debug("could not record the progress of %s (%s)", self.pixels_path, err)
        self._last = time.monotonic()

    def complete(self) -> None:
        """The entry is in place: nothing is left to resume."""
        self.progress_path.unlink(missing_ok=True)
        self.pixels_path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.target is not None:
            self.target.rows = None
        self.lock_path.unlink(missing_ok=True)


def stale_partial_builds(directory: Path) -> list[Path]:
    """Files of stopped builds under ``directory`` that no live process holds (``cytotune cache
    verify`` lists them; a later build of the same images resumes from them)."""
    out = []
    for progress in sorted(directory.rglob("*.partial.json")):
        key = progress.name[: -len(".partial.json")]
        build = ResumableBuild(progress.parent, key, (0,), 0)
        if build.lock_path.exists() and not build._stale_lock():
            continue
        out += [p for p in (build.pixels_path, progress) if p.exists()]
    return out
