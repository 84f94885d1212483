"""Safe writing and content checks of cytotune's cache files (decoded pixels, features).

A cache is only worth having if what it serves is exactly what was stored. Every entry records a
digest of its bytes when written; a read checks it (see :func:`verify_mode`) and an entry that no
longer matches is reported by name, removed and computed again. Writes never memory-map a sparse
file (a full disk then kills the process with SIGBUS): space is reserved first, and a cache
folder that is full, read-only or otherwise unwritable is one warning, after which the run goes
on without caching (results are identical; the cache only saves time).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from cytotune._process import pid_alive
from cytotune.data.dataset import DataError

logger = logging.getLogger(__name__)

# sha256: OpenSSL's SHA extensions make it about 2x blake2b's speed on current x86 and ARM CPUs
# (1.6 vs 0.7 GB/s measured here); the name is stored with each digest, so it can change later.
DIGEST_NAME = "sha256"
VERIFY_MODES = ("changed", "always", "off")
VERIFY_ENV = "CYTOTUNE_CACHE_VERIFY"
# A file whose status changed less than this long ago is hashed again on its next read: file
# timestamps tick coarsely, so a write in the same tick would otherwise keep its stamp.
STAMP_SETTLE_NS = 2_000_000_000
_CHUNK = 8 * 2**20
_TMP_PREFIX = "tmp-"

_verify_override: Optional[str] = None
_warned: set[tuple[int, int]] = set()
_check_seconds = [0.0]  # time spent checking entries in this process (the bench reads it)


class CacheError(DataError):
    """A cache problem the run cannot work around; the message names the path and what to do."""


# --------------------------------------------------------------------------- verification policy


def verify_mode() -> str:
    """How reads check an entry's digest: "changed" (default) hashes a file whenever its status
    (size, mtime, ctime, inode) differs from the one recorded at its last successful check, which
    any write to it changes, so a rewritten or damaged file is always hashed and an untouched one
    costs one ``stat``; "always" hashes on every read (also catches silent disk corruption, which
    ``cytotune cache verify`` checks in full); "off" trusts the files. Set by the environment
    variable CYTOTUNE_CACHE_VERIFY or :func:`verification`."""
    mode = _verify_override or os.environ.get(VERIFY_ENV, "changed").strip().lower() or "changed"
    if mode not in VERIFY_MODES:
        raise DataError(f"{VERIFY_ENV}={mode!r} is not one of {', '.join(VERIFY_MODES)}")
    return mode


@contextmanager
def verification(mode: str) -> Iterator[None]:
    """Use ``mode`` (see :func:`verify_mode`) inside the block: the bench compares them."""
    global _verify_override
    if mode not in VERIFY_MODES:
        raise ValueError(f"verification mode {mode!r} is not one of {', '.join(VERIFY_MODES)}")
    previous, _verify_override = _verify_override, mode
    try:
        yield
    finally:
        _verify_override = previous


@contextmanager
def timed_check() -> Iterator[None]:
    """Count the block's time as time spent checking cache entries (see :func:`check_seconds`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _check_seconds[0] += time.perf_counter() - start


def check_seconds() -> float:
    """Seconds this process has spent checking cache entries against their digests: the bench
    reports it next to a run's time, a figure that the run-to-run noise does not swamp."""
    return _check_seconds[0]


# --------------------------------------------------------------------------- digests and stamps


def file_digest(path: Path, name: str = DIGEST_NAME) -> str:
    """``"<algorithm>:<hex>"`` of the whole file at ``path`` (read in chunks) with hashlib's
    algorithm ``name`` (that of a recorded digest, to compare with it)."""
    try:
        digest = hashlib.new(name)
    except ValueError as err:
        raise ValueError(f"unknown digest algorithm {name!r}") from err
    with open(path, "rb") as file:
        while block := file.read(_CHUNK):
            digest.update(block)
    return format_digest(digest)


def format_digest(digest: "hashlib._Hash") -> str:
    return f"{digest.name}:{digest.hexdigest()}"


def file_stamp(path: Path) -> Optional[list[int]]:
    """The file's (size, mtime, ctime, inode) as a list, or None while it is too fresh to trust
    (changed less than :data:`STAMP_SETTLE_NS` ago: a write within the same timestamp tick
    would leave the stamp unchanged)."""
    st = os.stat(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < STAMP_SETTLE_NS:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def stamp_matches(path: Path, stamp: object) -> bool:
    """Whether ``path`` is unchanged since ``stamp`` (from :func:`file_stamp`) was taken.

    ctime cannot be set by user programs, so writing into the file (or replacing it) always
    breaks the match."""
    if not isinstance(stamp, list) or len(stamp) != 4:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] == stamp


def needs_hashing(path: Path, stamp: object) -> bool:
    """Whether a read of ``path`` must hash it, under the current :func:`verify_mode`."""
    mode = verify_mode()
    return mode == "always" or (mode == "changed" and not stamp_matches(path, stamp))


def discard(paths: list[Path], what: str, reason: str) -> None:
    """Warn that the cache entry ``paths[0]`` is not used (naming it and why) and remove its
    files, so the entry is computed again and the damage is not met twice."""
    logger.warning("ignoring unusable %s %s: it %s; removed, computing it again", what, paths[0],
                   reason)
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # a read-only cache: it stays unused all the same
            logger.warning("could not remove %s (%s)", path, err.strerror or err)


# --------------------------------------------------------------------------- writing


def temp_path(directory: Path, suffix: str) -> Path:
    """A new empty temporary file in ``directory``; its name carries this process's id and
    host, so leftovers of a killed process can be told from files still being written."""
    handle, name = tempfile.mkstemp(dir=directory, suffix=suffix,
                                    prefix=f"{_TMP_PREFIX}{os.getpid()}@{_host()}-")
    os.close(handle)
    return Path(name)


def leftover_temp_files(directory: Path, recursive: bool = True) -> list[Path]:
    """Temporary files under ``directory`` whose writer is gone: named by a process of this
    host that no longer runs, or (not named so: an older cytotune) untouched for a day. A file
    of a process on another host sharing the folder is never counted: it may be in use."""
    leftovers = []
    for path in (directory.rglob("*.tmp") if recursive else directory.glob("*.tmp")):
        writer = _writer(path.name)
        try:
            if writer is None:
                if time.time() - path.stat().st_mtime > 86400:
                    leftovers.append(path)
            elif writer[1] == _host() and not pid_alive(writer[0]):
                leftovers.append(path)
        except OSError:  # removed meanwhile
            continue
    return leftovers


def remove_leftover_temp_files(directory: Path) -> None:
    """Delete :func:`leftover_temp_files` of ``directory`` (not its subfolders), quietly: a
    killed run's partial cache files would otherwise stay forever."""
    try:
        for path in leftover_temp_files(directory, recursive=False):
            path.unlink(missing_ok=True)
            logger.info("removed %s, left by a process that no longer runs", path)
    except OSError as err:
        logger.debug("could not clean temporary files in %s (%s)", directory, err)


def _writer(name: str) -> Optional[tuple[int, str]]:
    """(pid, host) from a temporary file's name made by :func:`temp_path`, else None."""
    if not name.startswith(_TMP_PREFIX) or "@" not in name:
        return None
    pid, rest = name[len(_TMP_PREFIX):].split("@", 1)
    if not pid.isdigit() or "-" not in rest:
        return None
    return int(pid), rest.rsplit("-", 1)[0]


def _host() -> str:
    return socket.gethostname().replace("@", "_").replace(os.sep, "_") or "localhost"


def reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes for the file open at ``fd`` now, so a full disk is an OSError
    here rather than a SIGBUS ("Bus error") when a memory map of a sparse file is written."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # no posix_fallocate (macOS): write the zeros ourselves
        pass
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    written = os.fstat(fd).st_size  # keep what is there (a header), add zeros up to ``size``
    zeros = bytes(min(max(size - written, 0), _CHUNK))
    os.lseek(fd, written, os.SEEK_SET)
    while written < size:
        written += os.write(fd, zeros[: min(len(zeros), size - written)])


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial
    one; the temporary file is removed whatever happens."""
    tmp = temp_path(path.parent, ".tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def warn_unwritable(path: Path, err: OSError) -> None:
    """One warning per file system and cause (a full disk is one line, not one per cache
    folder on it) that the cache at ``path`` cannot be written and the run goes on without
    storing there; says what to do."""
    folder = path if path.is_dir() or not path.suffix else path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        device = os.stat(existing).st_dev
    except OSError:
        device = -1
    marker = (device, err.errno or 0)
    if marker in _warned:
        logger.debug("cache folder %s: %s", folder, err)
        return
    _warned.add(marker)
    logger.warning("cache folder %s: %s; running without storing to the cache there (results "
                   "are the same, later runs compute again). %s", folder,
                   err.strerror or err, unwritable_hint(err))


def unwritable_hint(err: OSError) -> str:
    """What a user can do about ``err`` at a cache folder."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("Free space there, or point the cache elsewhere (--cache-dir DIR, or cache_dir "
                "in the config; none disables it)")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ("Make it writable, or point the cache elsewhere (--cache-dir DIR, or cache_dir "
                "in the config; none disables it)")
    return "Point the cache elsewhere with --cache-dir DIR (or cache_dir in the config)"


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
