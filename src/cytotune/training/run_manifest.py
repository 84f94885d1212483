"""A run's own list of its files: ``manifest.json``, with the sha256 digest of each.

Why: a weight file damaged after training (a bad copy, a disk error, 32 bytes overwritten with
the header intact) still parses, so the shape checks of :mod:`cytotune.inference.run` pass and
``predict`` would answer with a broken model. The manifest is written into the staging folder as
the last file of a run (:meth:`cytotune.training.rundir.RunWriter.commit`), so it is published by
the same rename as the run and can never describe a half-written one. It serves two readers:

* loading (``read_run``) checks every file it depends on against its recorded digest and refuses
  a mismatch with one line naming the file;
* ``--overwrite`` knows exactly which files are the run's own (:func:`foreign_entries`): anything
  else found in the folder (a user's notes, a sub-folder) belongs to the user.

Runs written before the manifest existed have none; they still load (with a warning) and are
recognised by the fixed set of names a run writes (:data:`RUN_OUTPUT_FILES`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DIGEST = "sha256"
# every name a run directory can hold (RunWriter, runner._write_run_files): --overwrite deletes
# these and nothing else
RUN_OUTPUT_FILES = frozenset({
    "config.yaml", "metrics.json", "predictions.csv", "train.log", "head.safetensors",
    "adapter.safetensors", "backbone.safetensors", MANIFEST_FILE})


class ManifestError(ValueError):
    """manifest.json is unreadable, or a file differs from what it records; names the file."""


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes (read in chunks: backbones are hundreds of MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, DIGEST).hexdigest()


def build_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of every plain file in ``folder`` (the manifest itself left out)."""
    folder = Path(folder)
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name == MANIFEST_FILE or not entry.is_file(follow_symlinks=False):
            continue
        files[entry.name] = {DIGEST: file_digest(entry.path),
                             "bytes": entry.stat(follow_symlinks=False).st_size}
    return {"format": MANIFEST_FORMAT, "digest": DIGEST, "files": files}


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write ``folder``'s manifest.json (called on the staging folder, just before publishing)."""
    path = Path(folder) / MANIFEST_FILE
    path.write_text(json.dumps(build_manifest(folder), indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: str | os.PathLike) -> Optional[dict[str, dict[str, Any]]]:
    """``{file name: {"sha256": ..., "bytes": ...}}`` from ``folder``'s manifest.json; None when
    there is none (a run written before manifests); :class:`ManifestError` when it is unreadable."""
    path = Path(folder) / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not readable JSON ({' '.join(str(err).split())}); the "
                            f"run's files cannot be checked: train the run again") from None
    files = value.get("files") if isinstance(value, dict) else None
    if (not isinstance(files, dict) or value.get("digest") != DIGEST
            or not all(isinstance(name, str) and "/" not in name and "\\" not in name
                       and isinstance(entry, dict) and isinstance(entry.get(DIGEST), str)
                       for name, entry in files.items())):
        raise ManifestError(f"{path} is not a cytotune run manifest (expected format "
                            f"{MANIFEST_FORMAT}: a 'files' object of {DIGEST} digests); the run's "
                            f"files cannot be checked: train the run again")
    return files


def verify_files(folder: str | os.PathLike, names: Iterable[str],
                 files: dict[str, dict[str, Any]]) -> None:
    """Check each of ``names`` that is present in ``folder`` or recorded in ``files`` (a read
    manifest): present, recorded, and of the recorded size and digest. The first problem is one
    :class:`ManifestError` naming the file."""
    folder = Path(folder)
    for name in names:
        path = folder / name
        entry = files.get(name)
        present = path.is_file()
        if entry is None:
            if present:
                raise ManifestError(f"{path} is not listed in {folder / MANIFEST_FILE}: it was "
                                    f"not written with this run (the folder mixes files of "
                                    f"different runs)")
            continue
        if not present:
            raise ManifestError(f"{path} is missing ({MANIFEST_FILE} lists it as written with "
                                f"the run)")
        try:
            size = path.stat().st_size
            changed = (("bytes" in entry and entry["bytes"] != size)
                       or file_digest(path) != entry[DIGEST])
        except OSError as err:
            raise ManifestError(f"cannot read {path} to check it against {MANIFEST_FILE}: "
                                f"{err.strerror or err}") from None
        if changed:
            raise ManifestError(f"{path} was changed or damaged after the run was written "
                                f"({DIGEST} differs from {MANIFEST_FILE}): restore it or train "
                                f"again")


def owned_names(folder: str | os.PathLike) -> set[str]:
    """The names of the files a run in ``folder`` may hold: :data:`RUN_OUTPUT_FILES` and what its
    manifest lists (an unreadable manifest adds nothing)."""
    owned = set(RUN_OUTPUT_FILES)
    try:
        owned.update(read_manifest(folder) or {})
    except ManifestError:
        pass
    return owned


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """What in ``folder`` cytotune did not write: entries other than plain files with a run
    file's name (:func:`owned_names`). Sub-folders end in "/"."""
    folder = Path(folder)
    owned = owned_names(folder)
    foreign = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in owned and entry.is_file(follow_symlinks=False):
            continue
        foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return foreign
