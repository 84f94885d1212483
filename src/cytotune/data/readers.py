"""Generic readers: a folder of class folders into :class:`LabelledImages` (a CSV table:
:mod:`cytotune.data.tables`, which shares the path checks here).

Readers only list files and labels; they never decode pixels (that is :mod:`.images`), so
reading even a large data set is cheap, and bad images are reported where they are decoded.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from cytotune._gc import without_cyclic_gc
from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
# Folder (or CSV value) spellings accepted for each split.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
# Archive debris that is never data: macOS resource forks and metadata folders.
_IGNORED_NAMES = frozenset({"__MACOSX"})
_SHOWN_PROBLEMS = 10  # problems named in one message; the rest are counted

logger = logging.getLogger(__name__)


def is_ignored(path: Path) -> bool:
    """Hidden files/folders (``.DS_Store``, ``._x.jpg`` from macOS zips) and ``__MACOSX``."""
    return path.name.startswith(".") or path.name in _IGNORED_NAMES


def link_problem(path: Path) -> Optional[str]:
    """Why the symbolic link ``path`` cannot be followed (broken, or a loop); None otherwise.

    Such links are easy to miss (``ls`` shows them like files), so listings name them instead of
    dropping them.
    """
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return f"symbolic link cannot be followed: {err.strerror or err}"
    return None


def scan_images(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (recursive, following folder links) and the problems met.

    Returns ``(images, problems)``. ``problems`` lists ``(path, reason)`` for broken symbolic
    links, link loops and folders that cannot be listed. A broken or looping link with an image
    extension is also kept in ``images``: decoding then reports it like any unreadable image
    (an error, or with ``--skip-bad-images`` a logged skip), so it never vanishes silently.
    Hidden files and archive debris are skipped; images are sorted by relative path.
    """
    images: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def walk(directory: Path, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            problems.append((directory, f"folder cannot be listed: {err.strerror or err}"))
            return
        for entry in entries:
            path = Path(entry.path)
            if is_ignored(path):
                continue
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS
            problem = link_problem(path) if entry.is_symlink() else None
            if problem is not None:
                problems.append((path, problem))
                if is_image:
                    images.append(path)
            elif entry.is_dir():
                real = os.path.realpath(path)
                if real in ancestors:
                    problems.append((path, f"symbolic link loop (leads back to {real}); not "
                                           f"followed"))
                else:
                    walk(path, ancestors | {real})
            elif is_image and entry.is_file():
                images.append(path)

    walk(folder, frozenset({os.path.realpath(folder)}))
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), problems


def report_link_problems(problems: Sequence[tuple[Path, str]], where: str) -> None:
    """One warning naming and counting every broken link / link loop found under ``where``."""
    if not problems:
        return
    shown = "; ".join(f"{path}: {reason}" for path, reason in problems[:_SHOWN_PROBLEMS])
    more = (f"; ... and {len(problems) - _SHOWN_PROBLEMS} more"
            if len(problems) > _SHOWN_PROBLEMS else "")
    logger.warning("%s: %d broken symbolic link(s), link loop(s) or unlistable folder(s) (image "
                   "links among them are reported as unreadable images): %s%s",
                   where, len(problems), shown, more)


def list_images(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, skipping hidden/archive debris, in a fixed order.

    Broken links and link loops are logged (named and counted); image-named ones stay in the
    list so decoding reports them as unreadable (see :func:`scan_images`).
    """
    images, problems = scan_images(folder)
    report_link_problems(problems, str(folder))
    return images


def subfolders(folder: Path) -> list[Path]:
    """Direct subfolders of ``folder`` that are not hidden/archive debris, sorted by name.

    Broken links and link loops among them are logged (named and counted), not dropped silently.
    """
    children = [p for p in folder.iterdir() if not is_ignored(p)]
    report_link_problems([(p, problem) for p in children
                          if (problem := link_problem(p)) is not None
                          and p.suffix.lower() not in IMAGE_EXTENSIONS], str(folder))
    return sorted((p for p in children if p.is_dir()), key=lambda p: p.name)


def require_directory(root: Path | str, what: str = "data root") -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a directory")
    return root


# --------------------------------------------------------------------------- checks


def check_spellings(values: Iterable[tuple[str, str]], origin: str, what: str) -> None:
    """Error when two values differ only in case or surrounding spaces (``HSIL`` / ``hsil``).

    ``values`` are ``(value, where it was seen)`` pairs. Such spellings would silently become
    two classes, each with part of the images.
    """
    seen: dict[str, tuple[str, str]] = {}
    for value, where in values:
        first, first_where = seen.setdefault(value.strip().casefold(), (value, where))
        if first != value:
            raise DataError(f"{origin}: {what} {first!r} ({first_where}) and {value!r} ({where}) "
                            f"differ only in case or surrounding spaces, so they would be two "
                            f"classes; spell each class one way")


def same_file_key(path: Path, resolved_folders: Optional[dict[str, str]] = None) -> str:
    """What makes two listed paths the same image: the normalised path, links resolved.

    ``resolved_folders`` memoises each folder's resolved path: ``realpath`` costs an ``lstat``
    per path component, which made it most of a 50,000-row CSV's indexing time; with the folder
    resolved once, a file costs one ``lstat`` (is it a link?)."""
    if resolved_folders is None:
        return os.path.normcase(os.path.realpath(path))
    folder, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        return os.path.normcase(os.path.realpath(path))
    if folder not in resolved_folders:
        resolved_folders[folder] = os.path.realpath(folder or ".")
    full = os.path.join(resolved_folders[folder], name)
    return os.path.normcase(os.path.realpath(full) if os.path.islink(full) else full)


def duplicate_positions(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """``(first, later)`` position pairs of paths naming the same file (see same_file_key)."""
    first: dict[str, int] = {}
    folders: dict[str, str] = {}
    pairs = []
    for position, path in enumerate(paths):
        earlier = first.setdefault(same_file_key(path, folders), position)
        if earlier != position:
            pairs.append((earlier, position))
    return pairs


def report_duplicates(dropped: Sequence[str], origin: str) -> None:
    """One warning naming and counting identical duplicates that were dropped."""
    if dropped:
        more = (f"; ... and {len(dropped) - _SHOWN_PROBLEMS} more"
                if len(dropped) > _SHOWN_PROBLEMS else "")
        logger.warning("%s: %d identical duplicate(s) dropped, one copy kept: %s%s", origin,
                       len(dropped), "; ".join(dropped[:_SHOWN_PROBLEMS]), more)


def groups_from_pattern(paths: Sequence[Path], pattern: str, *, origin: str,
                        option: str = "group_pattern",
                        required: bool = True) -> Optional[np.ndarray]:
    r"""Group ids from file names: the first capture group of ``pattern`` (``re.search``).

    Near-duplicates (augmented copies ``HSIL_10_1.jpg`` ... ``HSIL_10_19.jpg`` of one source
    image, cells cut from one slide) must stay in one split; ``pattern=r"^(.+)_\d+\.\w+$"``
    groups those by ``HSIL_10``. A file name it does not match is a group of its own (with a
    warning). When no name matches: an error if ``required``, else None (no groups).
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DataError(f"{origin}: option {option}={pattern!r} is not a valid regular "
                        f"expression ({err})") from err
    if regex.groups != 1:
        raise DataError(f"{origin}: option {option}={pattern!r} must have exactly one capture "
                        f"group (the source id), it has {regex.groups}")
    matches = [regex.search(path.name) for path in paths]
    unmatched = [path for path, match in zip(paths, matches) if match is None or not match.group(1)]
    if paths and len(unmatched) == len(paths):
        if not required:
            return None
        raise DataError(f"{origin}: option {option}={pattern!r} matches none of the {len(paths)} "
                        f"file names (e.g. {paths[0].name!r}); its capture group must catch the "
                        f"source id in the file name")
    if unmatched:
        logger.warning("%s: %d of %d file names do not match %s=%r, so each is a group of its "
                       "own: %s", origin, len(unmatched), len(paths), option, pattern,
                       ", ".join(p.name for p in unmatched[:_SHOWN_PROBLEMS]))
    return np.asarray([match.group(1) if match is not None and match.group(1) else
                       f"{path.as_posix()}" for path, match in zip(paths, matches)], dtype=object)


# --------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class ClassFolder:
    """A folder whose images (found recursively) all belong to ``class_name`` (and ``split``)."""

    class_name: str
    folder: Path
    split: Optional[str] = None


def read_class_folders(entries: Sequence[ClassFolder], *, name: str, root: Path,
                       group_pattern: Optional[str] = None,
                       pattern_required: bool = True) -> LabelledImages:
    """Build a data set from class folders; every folder must contain at least one image.

    A class may have several folders (one per split, or several source folders). Images are
    ordered by class, then split, then path. ``splits`` is filled when the entries carry splits.
    Class folders differing only in case or spaces are an error; one file reached twice (through
    links) is kept once if both places agree on class and split, else an error naming both.
    ``group_pattern`` derives groups from file names (see :func:`groups_from_pattern`).
    """
    has_splits = any(entry.split is not None for entry in entries)
    if has_splits and any(entry.split is None for entry in entries):
        raise DataError(f"{name}: some class folders have a split and some do not")
    check_spellings(((e.class_name, f"folder {e.folder}") for e in entries), name,
                    "class folders")
    class_names = sorted({entry.class_name for entry in entries})
    split_rank = {split: i for i, split in enumerate(SPLIT_NAMES)}
    ordered = sorted(entries, key=lambda e: (e.class_name, split_rank.get(e.split or "", 0),
                                              e.folder.as_posix()))
    paths: list[Path] = []
    labels: list[int] = []
    splits: list[Optional[str]] = []
    for entry in ordered:
        images = list_images(entry.folder)
        if not images:
            raise DataError(f"{name}: class folder {entry.folder} (class {entry.class_name!r}) "
                            f"contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths.extend(images)
        labels.extend([class_names.index(entry.class_name)] * len(images))
        splits.extend([entry.split] * len(images))
    dropped: set[int] = set()
    for first, later in duplicate_positions(paths):
        if (labels[first], splits[first]) != (labels[later], splits[later]):
            where = [f"{paths[i]} (class {class_names[labels[i]]!r}"
                     + (f", {splits[i]})" if has_splits else ")") for i in (first, later)]
            raise DataError(f"{name}: one image file is listed twice with different "
                            f"{'class or split' if has_splits else 'classes'}: {where[0]} and "
                            f"{where[1]}; remove one (a link to the same file counts)")
        dropped.add(later)
    if dropped:
        report_duplicates([f"{paths[i]}" for i in sorted(dropped)], name)
        keep = [i for i in range(len(paths)) if i not in dropped]
        paths, labels, splits = ([paths[i] for i in keep], [labels[i] for i in keep],
                                 [splits[i] for i in keep])
    groups = (None if group_pattern is None else
              groups_from_pattern(paths, group_pattern, origin=name, required=pattern_required))
    return LabelledImages(paths=paths, labels=np.asarray(labels, dtype=np.int64),
                          class_names=class_names,
                          splits=np.asarray(splits, dtype=object) if has_splits else None,
                          groups=groups, name=name, root=root)


def _split_folders(root: Path) -> Optional[dict[str, Path]]:
    """Split name -> folder when ``root`` holds a train/val/test layout, else None."""
    children = subfolders(root)
    by_split = {SPLIT_ALIASES[p.name.lower()]: p for p in children
                if p.name.lower() in SPLIT_ALIASES}
    if "train" not in by_split:
        return None
    others = [p.name for p in children if p.name.lower() not in SPLIT_ALIASES]
    if others:
        raise DataError(f"{root} has a train folder, so it is read as root/{{train,val,test}}/"
                        f"<class>/, but it also has folders {others} that are not splits")
    return {split: by_split[split] for split in SPLIT_NAMES if split in by_split}


@without_cyclic_gc
def read_folder(root: Path | str, name: Optional[str] = None,
                group_pattern: Optional[str] = None) -> LabelledImages:
    """Read ``root/<class>/<images>`` or ``root/{train,val,test}/<class>/<images>``.

    Images are found recursively inside each class folder (extensions in ``IMAGE_EXTENSIONS``,
    any case) and sorted by relative path; class names are the sorted folder names. In the split
    layout ``val`` is optional and every val/test class must also be a train class.
    ``group_pattern``: a regular expression with one capture group that takes the source id
    from each file name, so near-duplicates of one source never straddle splits.
    """
    root = require_directory(root)
    name = name or root.name
    split_dirs = _split_folders(root)
    if split_dirs is None:
        classes = subfolders(root)
        if not classes:
            loose = " (its images must be inside class folders)" if list_images(root) else ""
            raise DataError(f"{name}: no class folders in {root}{loose}")
        return read_class_folders([ClassFolder(p.name, p) for p in classes], name=name, root=root,
                                  group_pattern=group_pattern)

    train_classes = {p.name for p in subfolders(split_dirs["train"])}
    if not train_classes:
        raise DataError(f"{name}: no class folders in {split_dirs['train']}")
    entries = [ClassFolder(class_dir.name, class_dir, split)
               for split, split_dir in split_dirs.items() for class_dir in subfolders(split_dir)]
    check_spellings(((e.class_name, f"folder {e.folder}") for e in entries), name,
                    "class folders")
    for entry in entries:
        if entry.class_name not in train_classes:
            raise DataError(f"{name}: class {entry.class_name!r} appears in {entry.split} "
                            f"({entry.folder}) but not in train, so no model can learn it")
    return read_class_folders(entries, name=name, root=root, group_pattern=group_pattern)
