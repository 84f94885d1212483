"""Generic readers: a folder of class folders, or a CSV table, into :class:`LabelledImages`.

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
import pandas as pd

from cytotune._gc import without_cyclic_gc
from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages, rarest_label_strata

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


# --------------------------------------------------------------------------- tables


def _column_values(frame: pd.DataFrame, column: str, origin: str) -> list[str]:
    if column not in frame.columns:
        raise DataError(f"{origin}: no column {column!r}; columns are {list(frame.columns)}")
    return [str(v).strip() for v in frame[column].tolist()]


def _encode(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Sorted class names and integer labels; empty values become -1 (label unknown)."""
    names = sorted({v for v in values if v})
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index.get(v, -1) for v in values], dtype=np.int64), names


def _resolved(root: Path, values: Sequence[str]) -> list[Path]:
    """Each listed path, relative ones under ``root`` (``os.path.join`` keeps an absolute one
    as it is; one Path per row: building three per row was a third of a 50k CSV's indexing)."""
    base = os.fspath(root)
    return [Path(os.path.join(base, value)) for value in values]


def _drop_duplicate_rows(frame: pd.DataFrame, rows: list[str], root: Path, path_column: str,
                         origin: str) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` and ``rows`` without identical repeats of an image (warned); a repeat that
    differs in any other column (label, split, group, ...) is an error naming both rows, since
    one image in train and test, or with two labels, corrupts every score."""
    paths = _resolved(root, _column_values(frame, path_column, origin))
    pairs = duplicate_positions(paths)
    if not pairs:
        return frame, rows
    values = frame.astype(str).apply(lambda column: column.str.strip())
    others = [c for c in frame.columns if c != path_column]
    dropped: list[int] = []
    for first, later in pairs:
        differ = [c for c in others if values.iat[first, frame.columns.get_loc(c)]
                  != values.iat[later, frame.columns.get_loc(c)]]
        if differ:
            shown = ", ".join(f"{c!r}: {values.iat[first, frame.columns.get_loc(c)]!r} vs "
                              f"{values.iat[later, frame.columns.get_loc(c)]!r}" for c in differ)
            raise DataError(f"{rows[first]} and {rows[later]} both list image {paths[later]} "
                            f"but differ in {shown}; list each image once (one image in two "
                            f"splits or with two labels corrupts the results)")
        dropped.append(later)
    report_duplicates([f"{rows[i]} repeats {rows[first]} ({paths[i]})"
                       for first, i in pairs], origin)
    keep = [i for i in range(len(rows)) if i not in set(dropped)]
    return frame.iloc[keep].reset_index(drop=True), [rows[i] for i in keep]


def read_table(frame: pd.DataFrame, *, rows: Sequence[str], root: Path, name: str,
               path_column: str = "path", label_column: str = "label",
               split_column: Optional[str] = "split", group_column: Optional[str] = "group",
               level_columns: Sequence[str] = (), origin: str = "table",
               domain_column: Optional[str] = "domain",
               label_columns: Sequence[str] = (), multi_label: bool = False,
               label_names: Sequence[str] = (),
               group_pattern: Optional[str] = None) -> LabelledImages:
    """Build a data set from a table already in memory (one row per image).

    ``rows[i]`` names row ``i`` in messages (e.g. ``"train.csv row 7"``); ``origin`` names the
    table. Relative paths are resolved against ``root``. ``split_column``/``group_column``/
    ``domain_column`` are used when present. Each level column becomes
    ``label_levels[column]``, -1 where empty. Multi-label tables (see :func:`multilabel_targets`)
    give ``label_columns`` (one 0/1 column per label) or ``multi_label`` (label names joined by
    ``|`` in ``label_column``, checked against ``label_names`` when given).

    One image listed twice (paths compared after resolving against ``root`` and normalising) is
    an error naming both rows, unless the rows are identical: then a warning, and one row is
    kept. Labels differing only in case or surrounding spaces are an error naming both. With no
    group column, ``group_pattern`` derives groups from file names (:func:`groups_from_pattern`).
    """
    paths_raw = _column_values(frame, path_column, origin)
    for i, path_value in enumerate(paths_raw):
        if not path_value:
            raise DataError(f"{rows[i]}, column {path_column!r}: empty image path")
    frame, rows = _drop_duplicate_rows(frame, list(rows), root, path_column, origin)
    paths_raw = _column_values(frame, path_column, origin)
    targets = None
    if label_columns or multi_label:
        targets, class_names = multilabel_targets(
            frame, rows=rows, origin=origin, label_columns=label_columns,
            label_column=label_column, label_names=label_names)
    else:
        label_values = _column_values(frame, label_column, origin)
        for i, label_value in enumerate(label_values):
            if not label_value:
                raise DataError(f"{rows[i]}, column {label_column!r}: empty label")
        check_spellings(((v, rows[i]) for i, v in enumerate(label_values)),
                        f"{origin}, column {label_column!r}", "labels")
    paths = _resolved(root, paths_raw)
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        first = missing[0]
        problem = link_problem(paths[first])
        raise DataError(f"{rows[first]}, column {path_column!r}: image file {paths[first]} "
                        f"{'is a ' + problem if problem else 'not found'} ({len(missing)} of "
                        f"{len(paths)} rows name missing files or broken links; relative paths "
                        f"are resolved against {root})")
    if targets is None:
        labels, class_names = _encode(label_values)
    else:
        labels = rarest_label_strata(targets)

    splits = None
    if split_column and split_column in frame.columns:
        raw = _column_values(frame, split_column, origin)
        for i, value in enumerate(raw):
            if value.lower() not in SPLIT_ALIASES:
                raise DataError(f"{rows[i]}, column {split_column!r}: split {value!r} is not one "
                                f"of train/val/test")
        splits = np.asarray([SPLIT_ALIASES[v.lower()] for v in raw], dtype=object)

    groups = None
    if group_column and group_column in frame.columns:
        raw = _column_values(frame, group_column, origin)
        for i, value in enumerate(raw):
            if not value:
                raise DataError(f"{rows[i]}, column {group_column!r}: empty group id (fill it, "
                                f"or drop the column if images have no known source)")
        groups = np.asarray(raw, dtype=object)
        if group_pattern is not None:
            raise DataError(f"{origin}: has a {group_column!r} column and option group_pattern="
                            f"{group_pattern!r}; give groups one way")
    elif group_pattern is not None:
        groups = groups_from_pattern(paths, group_pattern, origin=origin)

    domains = None
    if domain_column and domain_column in frame.columns:
        raw = _column_values(frame, domain_column, origin)
        for i, value in enumerate(raw):
            if not value:
                raise DataError(f"{rows[i]}, column {domain_column!r}: missing domain (every "
                                f"image needs its centre, scanner or tumour type, or drop the "
                                f"column)")
        domains = np.asarray(raw, dtype=object)

    for column in level_columns:
        check_spellings(((v, rows[i]) for i, v in enumerate(_column_values(frame, column, origin))
                         if v), f"{origin}, column {column!r}", "labels")
    label_levels = {column: _encode(_column_values(frame, column, origin))
                    for column in level_columns}
    return LabelledImages(paths=paths, labels=labels, class_names=class_names, splits=splits,
                          groups=groups, label_levels=label_levels, name=name, root=root,
                          domains=domains, targets=targets)


LABEL_SEPARATOR = "|"
_POSITIVE, _NEGATIVE = {"1", "1.0", "true"}, {"0", "0.0", "false"}


def _as_names(value: Sequence[str] | str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def multilabel_targets(frame: pd.DataFrame, *, rows: Sequence[str], origin: str,
                       label_columns: Sequence[str] | str = (), label_column: str = "label",
                       label_names: Sequence[str] | str = ()) -> tuple[np.ndarray, list[str]]:
    """The 0/1 target matrix (N, L) and the label names of a multi-label table.

    Either one column per label holding 0 or 1 (``label_columns``, in that order), or one column
    of label names joined by ``|`` (an empty cell: no label) whose names are the sorted set seen,
    or ``label_names`` when given (then any other name is an error). A label no image carries is
    an error too: no AUROC or positive-based sample could be defined for it.
    """
    columns = _as_names(label_columns)
    declared = _as_names(label_names)
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{origin}: no label column(s) {missing}; columns are "
                            f"{list(frame.columns)}")
        targets = np.zeros((len(frame), len(columns)), dtype=np.uint8)
        for j, column in enumerate(columns):
            for i, value in enumerate(_column_values(frame, column, origin)):
                if value.lower() in _POSITIVE:
                    targets[i, j] = 1
                elif value.lower() not in _NEGATIVE:
                    raise DataError(f"{rows[i]}, column {column!r}: {value!r} is not 0 or 1 (one "
                                    f"0/1 column per label)")
        names = columns
        where = {name: f"column {name!r}" for name in names}
    else:
        cells = _column_values(frame, label_column, origin)
        per_row = [[v.strip() for v in cell.split(LABEL_SEPARATOR) if v.strip()] for cell in cells]
        names = declared or sorted({v for row in per_row for v in row})
        index = {n: j for j, n in enumerate(names)}
        targets = np.zeros((len(frame), len(names)), dtype=np.uint8)
        for i, row in enumerate(per_row):
            for value in row:
                if value not in index:
                    raise DataError(f"{rows[i]}, column {label_column!r}: unknown label {value!r}; "
                                    f"known labels: {', '.join(names)}")
                targets[i, index[value]] = 1
        where = {name: f"label {name!r} (column {label_column!r})" for name in names}
    if not names:
        raise DataError(f"{origin}: no labels at all in column {label_column!r}")
    check_spellings(((n, where[n]) for n in names), origin, "labels")
    if len(set(names)) != len(names):
        raise DataError(f"{origin}: a label is listed twice in {names}")
    empty = [n for n, count in zip(names, targets.sum(0)) if count == 0]
    if empty:
        raise DataError(f"{origin}, {where[empty[0]]}: all-negative, no image carries this label "
                        f"(drop it or add positive images)")
    return targets, list(names)


def read_csv_frame(csv_path: Path) -> pd.DataFrame:
    """All cells as stripped strings; empty cells are "" (never NaN, and "NA" stays a label)."""
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist")
    try:
        return pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse CSV file {csv_path}: {err}") from err


def csv_row_names(csv_path: Path, n_rows: int) -> list[str]:
    """Row labels as a spreadsheet shows them: the header is row 1, data starts at row 2."""
    return [f"{csv_path} row {i + 2}" for i in range(n_rows)]


@without_cyclic_gc
def read_csv(csv_path: Path | str, root: Path | str | None = None, path_column: str = "path",
             label_column: str = "label", split_column: Optional[str] = "split",
             group_column: Optional[str] = "group", name: Optional[str] = None,
             level_columns: Sequence[str] = (), domain_column: Optional[str] = "domain",
             label_columns: Sequence[str] | str = (), multi_label: bool = False,
             label_names: Sequence[str] | str = (),
             group_pattern: Optional[str] = None) -> LabelledImages:
    """Read a CSV with one row per image: a path column and a label column.

    Relative paths are resolved against ``root`` (default: the CSV's folder). The split column
    (train/val/test) and group column (patient/slide id) are optional and used when present;
    ``level_columns`` keeps extra label columns as ``label_levels``; a ``domain`` column
    (centre, scanner, tumour type) is kept for out-of-domain evaluation. Multi-label manifests:
    ``label_columns`` names one 0/1 column per label, or ``multi_label=True`` reads label names
    joined by ``|`` from the label column (``label_names`` declares the allowed ones).
    ``group_pattern`` derives groups from file names when there is no group column. An image
    listed twice is an error (identical rows: a warning, one kept). Errors name the CSV row
    (header = row 1) and column.
    """
    csv_path = Path(csv_path).expanduser()
    frame = read_csv_frame(csv_path)
    if frame.empty:
        raise DataError(f"CSV file {csv_path} has no data rows")
    base = csv_path.parent if root is None else require_directory(root, "image root")
    return read_table(frame, rows=csv_row_names(csv_path, len(frame)), root=Path(base),
                      name=name or csv_path.stem, path_column=path_column,
                      label_column=label_column, split_column=split_column,
                      group_column=group_column, level_columns=level_columns,
                      origin=f"CSV file {csv_path}", domain_column=domain_column,
                      label_columns=label_columns, multi_label=multi_label,
                      label_names=label_names, group_pattern=group_pattern)
