"""Labelled images from a table: a CSV (or DataFrame) with a path column and a label column (or
several label columns for multi-label data), optional split, group and domain columns. Paths are
checked like a folder's (:mod:`cytotune.data.readers`): missing files, links, duplicates.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from cytotune._gc import without_cyclic_gc
from cytotune.data.dataset import DataError, LabelledImages, rarest_label_strata
from cytotune.data.readers import (SPLIT_ALIASES, check_spellings, duplicate_positions,
                                   groups_from_pattern, link_problem, report_duplicates,
                                   require_directory)

logger = logging.getLogger(__name__)

def _column_values(frame: pd.DataFrame, column: str, origin: str, *,
                   strip: bool = True) -> list[str]:
    if column not in frame.columns:
        raise DataError(f"{origin}: no column {column!r}; columns are {list(frame.columns)}")
    if not strip:  # as written (label spellings are compared before their spaces go)
        return [str(v) for v in frame[column].tolist()]
    return [str(v).strip() for v in frame[column].tolist()]


def _check_label_spellings(frame: pd.DataFrame, column: str, origin: str,
                           rows: Sequence[str]) -> None:
    """One class spelled two ways in a column (``HSIL``, `` HSIL``, ``hsil``) is an error
    naming both rows, checked on the values as written: stripping the spaces first would merge
    ``' HSIL'`` into ``HSIL`` without a word, and such a pair in one file is usually a
    data-entry slip worth a look. A label spelled the same way on every row keeps working
    with its spaces dropped."""
    check_spellings(((v, rows[i]) for i, v in
                     enumerate(_column_values(frame, column, origin, strip=False)) if v.strip()),
                    f"{origin}, column {column!r}", "labels")


def _filled_column(frame: pd.DataFrame, column: str, origin: str, rows: Sequence[str],
                   if_empty: str) -> np.ndarray:
    """A column every row must fill (group ids, domains); an empty cell names its row."""
    values = _column_values(frame, column, origin)
    for i, value in enumerate(values):
        if not value:
            raise DataError(f"{rows[i]}, column {column!r}: {if_empty}")
    return np.asarray(values, dtype=object)


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
        _check_label_spellings(frame, label_column, origin, rows)
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
        groups = _filled_column(frame, group_column, origin, rows, "empty group id (fill it, "
                                "or drop the column if images have no known source)")
        if group_pattern is not None:
            raise DataError(f"{origin}: has a {group_column!r} column and option group_pattern="
                            f"{group_pattern!r}; give groups one way")
    elif group_pattern is not None:
        groups = groups_from_pattern(paths, group_pattern, origin=origin)

    domains = None
    if domain_column and domain_column in frame.columns:
        domains = _filled_column(frame, domain_column, origin, rows, "missing domain (every "
                                 "image needs its centre, scanner or tumour type, or drop the "
                                 "column)")

    for column in level_columns:
        _check_label_spellings(frame, column, origin, rows)
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


def read_csv_frame(csv_path: Path, *, as_written: bool = False) -> pd.DataFrame:
    """All cells as strings; empty cells are "" (never NaN, and "NA" stays a label). Spaces
    right after a comma are dropped, unless ``as_written``: then every space inside a cell is
    kept (:func:`read_table` strips them after comparing label spellings, so `` HSIL`` beside
    ``HSIL`` is an error, not one class), while spaces around a quoted cell
    (``a.png, "HSIL"``) and around header names are formatting and are dropped."""
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False,
                            skipinitialspace=not as_written)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse CSV file {csv_path}: {err}") from err
    if not as_written:
        return frame
    columns = [_unpad(str(c)).strip() for c in frame.columns]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"CSV file {csv_path}: column(s) {', '.join(map(repr, repeated))} appear "
                        f"twice in the header")
    frame.columns = columns
    for column in columns:
        values = frame[column]
        padded = values.str.match(r'^\s+".*"\s*$|^".*"\s+$', na=False)
        if padded.any():
            frame.loc[padded, column] = [_unpad(v) for v in values[padded]]
    return frame


def _unpad(value: str) -> str:
    """A quoted CSV cell with spaces outside its quotes (read as written, since the parser
    treats a quote after a space as text): its content, as the parser gives an unpadded one."""
    inner = value.strip()
    if len(inner) >= 2 and inner[0] == inner[-1] == '"' and inner != value:
        return inner[1:-1].replace('""', '"')
    return value


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
    frame = read_csv_frame(csv_path, as_written=True)
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
