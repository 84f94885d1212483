"""The per-image feature bank: features image by image in chunk files, read row by row.

A sweep's runs ask the bank for the features of their images (another seed's few-shot sample, a
fraction, a resumed chunk); only images it does not hold are extracted. The bank is a folder of
safetensors chunk files, each holding ``features`` (n, D) and ``keys`` (n, 16) uint8 (the
images' content keys) and, in its metadata, the digest of both (:func:`tensors_digest`).

Why not ``safetensors.torch.load``: it reads a whole chunk into memory, and the rows a run takes
from a chunk keep all of it alive, so a probe on a few images of a 50,000-image bank held the
whole bank (twice while parsing), and a lookup over many chunks held them all. Here a chunk's
header and keys are read first; only chunks holding wanted images are opened further, and their
features are streamed through one fixed-size buffer that is hashed (the content check) and from
which the wanted rows are copied. A lookup's memory is its result plus that buffer, whatever the
bank holds; merging chunks streams the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from cytotune.data import cachefiles

log = logging.getLogger(__name__)

DIGEST_FIELD = "cytotune_digest"
KEY_BYTES = 16
BLOCK_BYTES = 8 * 2**20  # the streaming buffer
# safetensors dtype codes of what a bank holds, and torch's names (which the digest records)
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "U8": torch.uint8}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def tensors_digest(tensors: dict[str, torch.Tensor], name: str = cachefiles.DIGEST_NAME) -> str:
    """``"<algorithm>:<hex>"`` over every tensor's name, dtype, shape and bytes (by name): what a
    reader gets out of a safetensors file, whatever its header says about where it lies."""
    digest = hashlib.new(name)
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        digest.update(_digest_prefix(key, tensor.dtype, tuple(tensor.shape)))
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return cachefiles.format_digest(digest)


def _digest_prefix(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    return f"{name}|{dtype}|{shape}|".encode()


class ChunkError(ValueError):
    """A chunk file that cannot be used; the message says why (it is ignored, or removed when
    its content does not match its digest)."""

    def __init__(self, reason: str, damaged: bool = False):
        super().__init__(reason)
        self.damaged = damaged


@dataclass
class _Tensor:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


class ChunkFile:
    """One chunk file, read through its header: keys in full (16 bytes an image), features only
    as streamed rows. Raises :class:`ChunkError` for a file that is not a bank chunk."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) != 8:
                raise ChunkError("is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            size = os.fstat(file.fileno()).st_size
            if length > size - 8 or length > 100 * 2**20:
                raise ChunkError("is not a readable safetensors file (bad header length)")
            try:
                header = json.loads(file.read(length))
            except ValueError as err:
                raise ChunkError(f"is not a readable safetensors file ({err})") from err
        base = 8 + length
        self.metadata = header.pop("__metadata__", None) or {}
        try:
            self.tensors = {name: _Tensor(_DTYPES[info["dtype"]], tuple(info["shape"]),
                                          base + info["data_offsets"][0],
                                          base + info["data_offsets"][1])
                            for name, info in header.items()}
            feats, keys = self.tensors["features"], self.tensors["keys"]
        except (KeyError, TypeError, IndexError) as err:
            raise ChunkError(f"is not a feature bank chunk ({err!r} in its header)") from err
        if len(feats.shape) != 2 or keys.shape != (feats.shape[0], KEY_BYTES) or \
                keys.dtype != torch.uint8:
            raise ChunkError(f"holds features {feats.shape}, keys {keys.shape}")
        for name, t in self.tensors.items():
            expected = t.dtype.itemsize * (t.shape[0] * t.shape[1] if len(t.shape) == 2 else 0)
            if t.end - t.start != expected or t.end > size:
                raise ChunkError(f"is not a readable safetensors file ({name}: bad offsets)")
        self.rows, self.dim = feats.shape
        self.dtype = feats.dtype

    def keys(self) -> list[bytes]:
        t = self.tensors["keys"]
        with open(self.path, "rb") as file:
            file.seek(t.start)
            data = file.read(t.end - t.start)
        if len(data) != t.end - t.start:
            raise ChunkError("is shorter than its header says")
        return [data[i:i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)]

    def _recorded_digest(self) -> Optional[str]:
        recorded = self.metadata.get(DIGEST_FIELD)
        if not isinstance(recorded, str) or ":" not in recorded:
            raise ChunkError("has no content digest (written by an older cytotune)")
        if cachefiles.verify_mode() == "off":
            return None
        return recorded

    def read_rows(self, rows: list[int], into: Callable[[int, torch.Tensor], None]) -> None:
        """Call ``into(i, features of row rows[i])`` for each of ``rows``; the whole file is
        hashed on the way (unless checks are off) and a mismatch raises a damaged
        :class:`ChunkError` after the calls: the caller must then drop what it was given."""
        recorded = self._recorded_digest()
        wanted: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            wanted.setdefault(row, []).append(i)
        digest = None
        if recorded is not None:
            try:
                digest = hashlib.new(recorded.split(":", 1)[0])
            except ValueError as err:
                raise ChunkError(f"records an unusable digest ({err})") from err
        with cachefiles.timed_check() if digest is not None else _no_timing():
            self._stream(wanted, into, digest)
        if digest is not None and cachefiles.format_digest(digest) != recorded:
            raise ChunkError("does not match the digest recorded when it was written (changed "
                             "or damaged on disk)", damaged=True)

    def verify(self) -> None:
        """Hash the whole chunk against its digest (``cytotune cache verify``)."""
        self.read_rows([], lambda i, row: None)

    def _stream(self, wanted: dict[int, list[int]], into, digest) -> None:
        feats, keys = self.tensors["features"], self.tensors["keys"]
        row_bytes = self.dim * self.dtype.itemsize
        per_block = max(1, BLOCK_BYTES // max(row_bytes, 1))
        buffer = bytearray(per_block * row_bytes)
        needed = sorted(wanted)
        with open(self.path, "rb", buffering=0) as file:
            if digest is not None:
                digest.update(_digest_prefix("features", feats.dtype, feats.shape))
            next_needed = 0
            for first in range(0, self.rows, per_block):
                count = min(per_block, self.rows - first)
                if digest is None:  # no check: read only the blocks that hold wanted rows
                    if next_needed >= len(needed):
                        break
                    if needed[next_needed] >= first + count:
                        continue
                view = memoryview(buffer)[:count * row_bytes]
                file.seek(feats.start + first * row_bytes)
                if file.readinto(view) != len(view):
                    raise ChunkError("is shorter than its header says")
                if digest is not None:
                    digest.update(view)
                if next_needed < len(needed) and needed[next_needed] < first + count:
                    block = torch.frombuffer(buffer, dtype=self.dtype,
                                             count=count * self.dim).view(count, self.dim)
                    while next_needed < len(needed) and needed[next_needed] < first + count:
                        row = needed[next_needed]
                        for i in wanted[row]:
                            into(i, block[row - first])
                        next_needed += 1
            if digest is not None:
                file.seek(keys.start)
                digest.update(_digest_prefix("keys", keys.dtype, keys.shape))
                digest.update(file.read(keys.end - keys.start))


class _no_timing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FeatureBank:
    """Features image by image in one folder of chunk files. A chunk is written atomically
    under a fresh name, so concurrent runs never clash (an image extracted twice is simply held
    twice); an unreadable chunk is ignored with a warning, one that fails its content check is
    also removed, and their images are extracted again."""

    MAX_CHUNKS = 32  # beyond this many chunk files, a write merges them into one

    def __init__(self, folder: Path):
        self.folder = folder

    @staticmethod
    def key_bytes(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=KEY_BYTES).digest()

    def features(self, keys: list[str], pixels: torch.Tensor,
                 extract: Callable[[torch.Tensor], torch.Tensor],
                 reused: Optional[Callable[[int], None]] = None
                 ) -> tuple[torch.Tensor, float, bool]:
        """Features of the images with content ``keys`` (pixels ``pixels``): held ones read,
        the rest extracted once each (``extract``) and stored; ``reused(n)`` is told how many
        were read (for progress). Returns ``(features, seconds extracting, whether nothing was
        extracted)``."""
        wanted = [self.key_bytes(k) for k in keys]
        positions: dict[bytes, list[int]] = {}
        for i, key in enumerate(wanted):
            positions.setdefault(key, []).append(i)
        out, pending = self._read_held(wanted, positions)
        held = len(wanted) - sum(len(positions[k]) for k in pending)
        if reused is not None and held:
            reused(held)
        if not pending:
            assert out is not None or not wanted
            return (out if out is not None else torch.empty(0, 0)), 0.0, True
        missing = [k for k in positions if k in pending]  # first-asked order
        start = time.perf_counter()
        new = extract(pixels[torch.as_tensor([positions[k][0] for k in missing])])
        seconds = time.perf_counter() - start
        if out is None or (new.shape[1], new.dtype) != (out.shape[1], out.dtype):
            if out is not None:
                log.warning("feature cache %s holds %s features, extraction gives %s; "
                            "extracting every image", self.folder, tuple(out.shape[1:]),
                            tuple(new.shape[1:]))
                return self._extract_all(wanted, positions, pixels, extract, seconds)
            out = torch.empty(len(wanted), new.shape[1], dtype=new.dtype)
        for key, row in zip(missing, new):
            out[positions[key]] = row
        if self._write_chunk(new, missing):
            self._compact()
        log.info("features: %d of %d images extracted, %d from the cache", len(missing),
                 len(keys), held)
        return out, seconds, False

    def held(self, keys: list[str]) -> Optional[torch.Tensor]:
        """The features of ``keys`` when the bank holds every one of them, else None (nothing
        extracted): lets a caller skip preparing pixels that would not be used."""
        wanted = [self.key_bytes(k) for k in keys]
        positions: dict[bytes, list[int]] = {}
        for i, key in enumerate(wanted):
            positions.setdefault(key, []).append(i)
        out, pending = self._read_held(wanted, positions)
        return out if not pending and out is not None else None

    def _read_held(self, wanted: list[bytes], positions: dict[bytes, list[int]]
                   ) -> tuple[Optional[torch.Tensor], set[bytes]]:
        """(features of the held keys, rows of the others unset; the keys not held)."""
        out: Optional[torch.Tensor] = None
        pending = set(positions)
        for chunk, chunk_keys in self._chunks():
            if not pending:
                break
            if out is not None and (chunk.dim, chunk.dtype) != (out.shape[1], out.dtype):
                log.warning("ignoring feature cache chunk %s: %d-d %s features, not %d-d %s",
                            chunk.path, chunk.dim, chunk.dtype, out.shape[1], out.dtype)
                continue
            take = {}
            for row, key in enumerate(chunk_keys):
                if key in pending and key not in take:
                    take[key] = row
            if not take:
                continue
            if out is None:
                out = torch.empty(len(wanted), chunk.dim, dtype=chunk.dtype)
            taken = list(take)
            target = out

            def into(i: int, row: torch.Tensor) -> None:
                target[positions[taken[i]]] = row

            try:
                chunk.read_rows([take[k] for k in taken], into)
            except ChunkError as err:
                _unusable(chunk.path, err)
                continue
            except OSError as err:
                log.warning("ignoring unusable feature cache chunk %s (%s)", chunk.path,
                            err.strerror or err)
                continue
            pending.difference_update(taken)
        return out, pending

    def _extract_all(self, wanted, positions, pixels, extract, seconds):
        firsts = [positions[k][0] for k in positions]
        start = time.perf_counter()
        new = extract(pixels[torch.as_tensor(firsts)])
        out = torch.empty(len(wanted), new.shape[1], dtype=new.dtype)
        for key, row in zip(positions, new):
            out[positions[key]] = row
        return out, seconds + time.perf_counter() - start, False

    def _chunks(self) -> Iterator[tuple[ChunkFile, list[bytes]]]:
        """Every usable chunk with its keys; an unreadable one is skipped with a warning."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                chunk = ChunkFile(path)
                yield chunk, chunk.keys()
            except ChunkError as err:
                _unusable(path, err)
            except OSError as err:
                log.warning("ignoring unusable feature cache chunk %s (%s)", path,
                            err.strerror or err)

    def _compact(self) -> None:
        """Merge the chunk files into one when there are more than ``MAX_CHUNKS``: a sweep adds
        a small chunk per run, and a lookup opens every chunk's header. The merged file is
        streamed (each image once, first chunk first) and written before the merged chunks are
        removed, so every image stays held; a concurrent reader that misses a removed chunk
        extracts its images again. A chunk that fails its check on the way stops the merge."""
        if len(list(self.folder.glob("*.safetensors"))) <= self.MAX_CHUNKS:
            return
        plan: list[tuple[ChunkFile, list[int]]] = []
        order: list[bytes] = []
        seen: set[bytes] = set()
        for chunk, keys in self._chunks():
            if plan and (chunk.dim, chunk.dtype) != (plan[0][0].dim, plan[0][0].dtype):
                return
            rows = []
            for row, key in enumerate(keys):
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    order.append(key)
            plan.append((chunk, rows))
        if len(plan) < 2:
            return
        try:
            written = _write_merged(self.folder, plan, order)
        except ChunkError:
            return  # the damaged chunk was named (and removed) while merging
        except OSError as err:
            cachefiles.warn_unwritable(self.folder, err)
            return
        if written is None:
            return
        for chunk, _ in plan:
            chunk.path.unlink(missing_ok=True)
        log.info("feature cache %s: %d chunks merged into one (%d images)", self.folder,
                 len(plan), len(order))

    def _write_chunk(self, feats: torch.Tensor, keys: list[bytes]) -> bool:
        """Store a new chunk; whether it was stored (a full or read-only folder: not)."""
        key_tensor = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8)
        name = hashlib.blake2b(b"".join(keys), digest_size=12).hexdigest()
        return save_atomic({"features": feats.contiguous(),
                            "keys": key_tensor.view(len(keys), KEY_BYTES).clone()},
                           self.folder / f"{name}-{os.getpid()}-{time.time_ns()}.safetensors")


def chunk_problem(path: Path) -> Optional[str]:
    """Why the bank chunk at ``path`` fails its full content check, or None when it passes."""
    try:
        ChunkFile(path).verify()
    except ChunkError as err:
        return str(err)
    return None


def _unusable(path: Path, err: ChunkError) -> None:
    if err.damaged:
        cachefiles.discard([path], "feature cache chunk", str(err))
    else:
        log.warning("ignoring unusable feature cache chunk %s (it %s)", path, err)


def _write_merged(folder: Path, plan: list[tuple[ChunkFile, list[int]]],
                  order: list[bytes]) -> Optional[Path]:
    """Stream the rows ``plan`` names into one new chunk (keys ``order``); its header carries a
    placeholder digest of the final length, filled in once the data is hashed."""
    first = plan[0][0]
    n, dim, dtype = len(order), first.dim, first.dtype
    feat_bytes = n * dim * dtype.itemsize
    placeholder = f"{cachefiles.DIGEST_NAME}:" + "0" * (2 * hashlib.new(
        cachefiles.DIGEST_NAME).digest_size)
    header = {"__metadata__": {DIGEST_FIELD: placeholder},
              "features": {"dtype": _CODES[dtype], "shape": [n, dim],
                           "data_offsets": [0, feat_bytes]},
              "keys": {"dtype": "U8", "shape": [n, KEY_BYTES],
                       "data_offsets": [feat_bytes, feat_bytes + n * KEY_BYTES]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    digest = hashlib.new(cachefiles.DIGEST_NAME)
    digest.update(_digest_prefix("features", dtype, (n, dim)))
    name = hashlib.blake2b(b"".join(order), digest_size=12).hexdigest()
    path = folder / f"{name}-{os.getpid()}-{time.time_ns()}.safetensors"
    tmp = cachefiles.temp_path(folder, ".tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(struct.pack("<Q", len(text)) + text)
            for chunk, rows in plan:  # rows ascend, so they are streamed in this order
                def into(i: int, row: torch.Tensor) -> None:
                    data = row.contiguous().view(torch.uint8).numpy().tobytes()
                    digest.update(data)
                    file.write(data)

                try:
                    chunk.read_rows(rows, into)
                except ChunkError as err:
                    _unusable(chunk.path, err)
                    raise
            keys = b"".join(order)
            digest.update(_digest_prefix("keys", torch.uint8, (n, KEY_BYTES)))
            digest.update(keys)
            file.write(keys)
            final = cachefiles.format_digest(digest).encode()
            file.seek(8 + text.index(placeholder.encode()))
            file.write(final)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_atomic(tensors: dict[str, torch.Tensor], path: Path,
                metadata: Optional[dict[str, str]] = None) -> bool:
    """Write a safetensors file with the digest of its tensors through a temporary file in its
    folder, so a reader (or a killed run) never sees half of it. A folder that cannot be
    written (full, read-only) is a warning and nothing is stored: returns whether it was."""
    from safetensors.torch import save as save_safetensors

    data = save_safetensors(tensors, metadata={**(metadata or {}),
                                               DIGEST_FIELD: tensors_digest(tensors)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cachefiles.remove_leftover_temp_files(path.parent)
        cachefiles.write_atomic(path, data)
    except OSError as err:
        cachefiles.warn_unwritable(path.parent, err)
        return False
    return True
