"""Run directories written atomically: a killed run leaves either nothing or a whole run.

Everything goes into a hidden sibling folder first (``.NAME.partial-HOST-PID-TAG``); the final
rename makes it appear under its real name in one step. The rules that keep data safe:

* ``--overwrite`` only ever replaces a finished cytotune run directory (recognised by its
  ``metrics.json`` + ``config.yaml``, the files every run writes); a plain file, a folder of
  images or any other folder is refused.
* ``--overwrite`` replaces only what cytotune wrote, and refuses a run folder that holds
  anything else (a user's ``notes.txt``, a sub-folder), naming those entries. The alternative,
  carrying the foreign files over into the new run, was rejected: between moving them into the
  staging folder and the final rename they would live in a folder that a kill leaves to
  :func:`clean_stale`, i.e. a kill at the wrong moment would delete them. Refusing keeps the
  publish a pair of renames of folders that hold only cytotune's files: the old run is renamed
  aside (checked again there, in case something was added meanwhile), the new one renamed into
  place, and the old one's files deleted by name (never ``rmtree``): a file that appears in it
  even then is kept in a visible ``NAME.kept-*`` folder. A killed overwrite leaves either the
  old run, the new run, or (between the two renames) nothing under the name, never a mix.
  What cytotune wrote is read from the run's ``manifest.json`` (every file with its sha256, see
  :mod:`cytotune.training.run_manifest`, written into the staging folder at commit so it is
  published with the run) or, for older runs, the fixed set of names a run writes.
* Publishing is race-free: without overwrite the staging folder is renamed with ``rename(2)``,
  which fails on Linux when the target is a non-empty directory (a committed run is never empty:
  it must hold those two files), so of two runs aimed at one ``--out`` the second fails
  clearly instead of replacing the first. Commits into one parent folder also hold an exclusive
  ``flock`` on that folder, so the check-move-rename sequence of an overwrite is never
  interleaved with another cytotune process's commit.
* Staging and trash folders (and ``*.tmp`` files named by :func:`owned_tmp_path`) carry the
  host name and process id of their writer; the next run in the same folder deletes those
  whose process is gone (kill -9, power loss), and leaves those of live processes and of other
  hosts alone.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from cytotune._process import pid_alive
from cytotune.training.run_log import RunLogHandler, close_run_log, open_run_log
from cytotune.training.run_manifest import foreign_entries, owned_names, write_manifest

COMPLETE_MARKER = "metrics.json"
# what identifies a finished cytotune run directory (and may therefore be overwritten)
RUN_FILES = ("metrics.json", "config.yaml")

log = logging.getLogger("cytotune")


class RunDirError(OSError):
    """``--out`` cannot be used or written; the message names the path and what to do."""


class RunExistsError(RunDirError, FileExistsError):
    """The output folder already holds a finished run, or something that is not a run."""


# ---- ownership of temporary files and folders ------------------------------------------------
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``HOST-PID-RANDOM``: who wrote a temporary file or folder, so a later process can tell a
    live writer's leftovers from a dead one's (see :func:`clean_stale`)."""
    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def owned_tmp_path(path: str | os.PathLike) -> Path:
    """A temporary sibling of ``path`` (``NAME.HOST-PID-RANDOM.tmp``) that :func:`clean_stale`
    removes once its writer is dead; write there, then ``os.replace`` onto ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{owner_tag()}.tmp")


_OWNER = r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})"
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-" + _OWNER + r"$")
_TMP = re.compile(r"^(?P<name>.+)\." + _OWNER + r"\.tmp$")


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete the staging / trash folders and owned ``*.tmp`` files in ``folder`` whose writer
    (a process on this host) is dead; returns what was removed. Never raises."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = _STAGED.match(entry.name) or _TMP.match(entry.name)
        if match is None or match["host"] != host or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        except OSError as err:
            log.warning("could not remove %s, left by a finished process: %s", path, err)
            continue
        log.info("removed %s, left by process %s that is gone", path, match["pid"])
        removed.append(path)
    return removed


# ---- what may be replaced ----------------------------------------------------------------------
def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished cytotune run directory (a real folder, not a link)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    return all((path / name).is_file() for name in RUN_FILES)


def _empty_folder(path: Path) -> bool:
    try:
        return not path.is_symlink() and path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out_vs_data(out: str | os.PathLike, source: str | os.PathLike) -> None:
    """Refuse an ``--out`` equal to, inside, or around the data set: a run written into a folder
    of class folders would be read back as data, and an overwrite could delete images."""
    out_path = Path(out).expanduser().resolve()
    data_path = Path(source).expanduser().resolve()
    if _within(data_path, out_path):
        raise RunDirError(f"--out {out_path} holds the data set {data_path}; choose an --out "
                          f"outside the data")
    if data_path.is_dir() and _within(out_path, data_path):
        raise RunDirError(f"--out {out_path} is inside the data folder {data_path}; a run "
                          f"written there would be read as data: choose an --out outside it")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _describe(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "it is not writable"
    return err.strerror or str(err)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is, or lies under, something other than a folder, and any
    non-empty folder that is not a finished run; a finished run only with ``overwrite``."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise RunExistsError(f"--out {out} is a file, not a folder; choose another --out "
                                 f"(--overwrite only replaces a cytotune run directory)")
        if is_run_dir(out):
            if not overwrite:
                raise RunExistsError(f"{out} already holds a finished run; choose another --out "
                                     f"or pass --overwrite")
            _refuse_foreign(out, out)
            return
        try:
            empty = not any(out.iterdir())
        except OSError as err:
            raise RunDirError(f"cannot read --out {out}: {_describe(err)}") from None
        if not empty:
            raise RunExistsError(
                f"{out} exists and is not a cytotune run directory (no "
                f"{' + '.join(RUN_FILES)}); " + (
                    "--overwrite only replaces a finished run and never deletes other folders: "
                    if overwrite else "") + "choose another --out")
        return
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"--out {out} cannot be created: {parent} is a file")
            break


def _refuse_foreign(folder: Path, out: Path) -> None:
    """Refuse to overwrite the run in ``folder`` (``out`` or its trash) when it holds anything
    cytotune did not write; the message names those entries."""
    try:
        foreign = foreign_entries(folder)
    except OSError as err:
        raise RunDirError(f"cannot read --out {out}: {_describe(err)}") from None
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more"
                                          if len(foreign) > 8 else "")
        raise RunExistsError(
            f"{out} holds files cytotune did not write ({shown}); --overwrite never deletes "
            f"them: move them out or choose another --out")


def _discard_old_run(trash: Path, out: Path) -> None:
    """Delete a replaced run's own files by name, then its folder. Anything else that appeared
    in it after it was checked is kept: the folder is renamed to a visible ``NAME.kept-*``
    (a hidden ``.old-`` name would be deleted by :func:`clean_stale` once this process is gone)."""
    for name in owned_names(trash):  # read from its manifest before any file is deleted
        path = trash / name
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    try:
        trash.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        kept = out.parent / f"{out.name}.kept-{owner_tag()}"
        try:
            os.rename(trash, kept)
        except OSError as err:
            log.warning("files added to %s while it was replaced are left in %s (%s)", out,
                        trash, _describe(err))
            return
        log.warning("files added to %s while it was replaced were kept in %s", out, kept)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file to leave behind); commits into
    one folder are short, so waiting is brief. Without flock (another OS, some network file
    systems) the rename rules alone still refuse to replace a published run."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None and keys as text, for strict JSON (also the
    robustness outputs and the result store's robustness rows)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunWriter:
    """Collects a run's files in a staging folder; ``commit()`` publishes them atomically."""

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False):
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.overwrite = overwrite
        _check_out(self.out_dir, overwrite)
        parent = self.out_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the folder {parent} for --out {self.out_dir}: "
                              f"{_describe(err)}; choose another --out") from None
        clean_stale(parent)
        self.staging = parent / f".{self.out_dir.name}.partial-{owner_tag()}"
        try:
            self.staging.mkdir()
        except OSError as err:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RunDirError(f"cannot write in {parent} (for --out {self.out_dir}): "
                              f"{_describe(err)}; choose another --out") from None
        self._log_handler: Optional[RunLogHandler] = None
        self._logger: Optional[logging.Logger] = None

    def path(self, name: str) -> Path:
        return self.staging / name

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8")

    def write_json(self, name: str, value: Any) -> None:
        self.write_text(name, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn a failed write into the staging folder (full disk, read-only) into one
        :class:`RunDirError` naming ``--out``."""
        try:
            yield
        except RunDirError:
            raise
        except OSError as err:
            raise RunDirError(f"could not write the run to {self.out_dir}: {_describe(err)} "
                              f"({err.filename or 'write failed'}); nothing was written: free "
                              f"space or choose another --out") from err
        except Exception as err:
            # safetensors reports I/O failures as its own error, not OSError
            if type(err).__name__ != "SafetensorError" or "I/O error" not in str(err):
                raise
            problem = ("the disk is full" if "os error 28" in str(err) else _one_line(err))
            raise RunDirError(f"could not write the run to {self.out_dir}: {problem}; nothing "
                              f"was written: free space or choose another --out") from err

    def attach_log(self, logger: logging.Logger,
                   filters: Sequence[logging.Filter] = ()) -> None:
        """Write ``logger``'s lines (INFO and up, passing ``filters``) to the run's train.log
        until commit or abort (see :mod:`cytotune.training.run_log`)."""
        self._log_handler = open_run_log(self.path("train.log"), logger, filters)
        self._logger = logger

    def detach_log(self) -> Optional[BaseException]:
        """Close train.log now (a group closes each run's before renaming its folder);
        returns its first write error. Commit and abort call it too."""
        handler, self._log_handler = self._log_handler, None
        if handler is None:
            return None
        assert self._logger is not None
        return close_run_log(handler, self._logger)

    def commit(self) -> Path:
        """Publish the staged run under ``out_dir``; fails (the staged run stays for ``abort``)
        when something appeared there meanwhile that this writer may not replace."""
        log_error = self.detach_log()
        if isinstance(log_error, OSError):
            with self.writing():
                raise log_error
        missing = [name for name in RUN_FILES if not (self.staging / name).is_file()]
        if missing:  # it could never be recognised (or overwritten) as a run, and might be empty
            raise RunDirError(f"the run for {self.out_dir} lacks {', '.join(missing)}; not "
                              f"published")
        with self.writing():  # the last file, published by the same rename as the others
            write_manifest(self.staging)
        parent = self.out_dir.parent
        with _folder_lock(parent):
            if self.overwrite and (self.out_dir.exists() or self.out_dir.is_symlink()):
                self._replace()
            else:
                self._publish()
        return self.out_dir

    def _publish(self) -> None:
        try:
            # rename(2) replaces only an empty directory; a published run is never empty
            os.rename(self.staging, self.out_dir)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise RunExistsError(
                    f"{self.out_dir} appeared while this run was training (another run or other "
                    f"files were written there); nothing was replaced and this run was not "
                    f"written: choose another --out, or pass --overwrite to replace a finished "
                    f"run") from None
            with self.writing():
                raise

    def _replace(self) -> None:
        """Move the old run aside, check it really is a run, publish, then delete it."""
        trash = self.out_dir.parent / f".{self.out_dir.name}.old-{owner_tag()}"
        try:
            os.rename(self.out_dir, trash)
        except FileNotFoundError:
            self._publish()  # gone meanwhile: nothing to replace
            return
        except OSError as err:
            with self.writing():
                raise err
        if not (is_run_dir(trash) or _empty_folder(trash)):  # changed since this writer checked
            os.rename(trash, self.out_dir)
            raise RunExistsError(f"{self.out_dir} is no longer a cytotune run directory; "
                                 f"--overwrite only replaces a finished run: choose another "
                                 f"--out")
        try:
            _refuse_foreign(trash, self.out_dir)  # files added while this run trained
        except RunDirError:
            os.rename(trash, self.out_dir)
            raise
        try:
            self._publish()
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(trash, self.out_dir)  # put the old run back where possible
            raise
        _discard_old_run(trash, self.out_dir)

    def abort(self) -> None:
        self.detach_log()
        shutil.rmtree(self.staging, ignore_errors=True)


# ---- stopping and failing cleanly (used by the CLI commands) ---------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, ``kill PID``), raised where Ctrl-C would be, so a run's
    staging folder is removed and a sweep stops cleanly the same way."""


def _raise_terminated(signum: int, frame: Any) -> None:
    # a second SIGTERM must not interrupt the cleanup the first one started (kill -9 still works)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def handle_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous handler
    (None when this is not the main thread, where Python cannot set handlers)."""
    if not hasattr(signal, "SIGTERM"):
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


def restore_sigterm(previous: Any) -> None:
    """Put back the handler :func:`handle_sigterm` replaced (None: nothing was replaced)."""
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def os_error_message(err: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and what to do."""
    if isinstance(err, RunDirError) or not (err.strerror and err.filename):
        return " ".join(str(err).split())
    path = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
    hint = {errno.ENOSPC: "the disk is full: free space or choose another folder",
            errno.EDQUOT: "the disk quota is exceeded: free space or choose another folder",
            errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder "
            "you can write to", errno.EROFS: "the file system is read-only: choose another "
            "folder", errno.ENOTDIR: "a file is where a folder is expected",
            errno.EISDIR: "a folder is where a file is expected",
            errno.EEXIST: "something is already there"}.get(err.errno or 0, "")
    return f"{err.strerror}: {path}" + (f" ({hint})" if hint else "")
