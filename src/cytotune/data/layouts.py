"""Named layouts: how each study data set looks as its official download, and how to read it.

Every layout is one :class:`Layout` entry in :data:`LAYOUTS` (a reader plus a description of the
folder structure it expects), so adding a data set is adding an entry, and code elsewhere never
branches on a data set's name. :func:`load_dataset` is the one entry point.
"""
from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages
from cytotune.data.readers import (ClassFolder, is_ignored, read_class_folders, read_folder,
                                   require_directory, subfolders)
from cytotune.data.tables import csv_row_names, read_csv, read_csv_frame, read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """A named data source: ``reader(source, **options)`` and the layout it expects on disk."""

    name: str
    reader: Callable[..., LabelledImages]
    summary: str
    expected_layout: str


# --------------------------------------------------------------------------- class folders


def _folder_key(name: str) -> str:
    """Case, spaces and punctuation do not matter: "Intra-epithelial" == "intraepithelial"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _class_dirs_in(folder: Path, aliases: dict[str, Sequence[str]]) -> dict[str, list[Path]]:
    lookup = {_folder_key(alias): canonical
              for canonical, names in aliases.items() for alias in (canonical, *names)}
    found: dict[str, list[Path]] = {}
    for child in subfolders(folder):
        canonical = lookup.get(_folder_key(child.name))
        if canonical is not None:
            found.setdefault(canonical, []).append(child)
    return found


def locate_class_folders(root: Path, aliases: dict[str, Sequence[str]],
                         layout: str) -> dict[str, Path]:
    """Canonical class -> its folder, in ``root`` or in one folder directly below it.

    ``aliases`` maps each canonical class name to the other folder names it may have (matched
    ignoring case, spaces and punctuation). All classes must be found in the same folder.
    """
    root = require_directory(root)
    complete = [folder for folder in [root, *subfolders(root)]
                if len(_class_dirs_in(folder, aliases)) == len(aliases)]
    expected = ", ".join(sorted(aliases))
    if not complete:
        seen = [p.name for p in subfolders(root)]
        raise DataError(f"{layout}: expected class folders {expected} in {root} or one level "
                        f"below it; found folders {seen}")
    if len(complete) > 1:
        raise DataError(f"{layout}: several folders under {root} hold all classes ({expected}): "
                        f"{[str(p) for p in complete]}; point to one of them")
    found = _class_dirs_in(complete[0], aliases)
    for canonical, dirs in found.items():
        if len(dirs) > 1:
            raise DataError(f"{layout}: folders {[d.name for d in dirs]} in {complete[0]} all "
                            f"mean class {canonical!r}; keep one")
    return {canonical: dirs[0] for canonical, dirs in found.items()}


def _read_aliased_folders(root: Path | str, aliases: dict[str, Sequence[str]], layout: str,
                          name: Optional[str], group_pattern: Optional[str] = None,
                          pattern_required: bool = True) -> LabelledImages:
    root = require_directory(root)
    folders = locate_class_folders(root, aliases, layout)
    entries = [ClassFolder(canonical, folder) for canonical, folder in folders.items()]
    return read_class_folders(entries, name=name or layout, root=root,
                              group_pattern=group_pattern, pattern_required=pattern_required)


BCFC_CLASSES: dict[str, Sequence[str]] = {"benign": (), "malignant": ()}


def read_bcfc(root: Path | str, name: Optional[str] = None,
              group_pattern: Optional[str] = None) -> LabelledImages:
    """Body Cavity Fluid Cytology: ``benign/`` and ``malignant/`` (any case, maybe nested once).

    ``group_pattern``: groups from file names, as for :func:`~cytotune.data.readers.read_folder`.
    """
    return _read_aliased_folders(root, BCFC_CLASSES, "bcfc", name, group_pattern)


MLCC_CLASSES: dict[str, Sequence[str]] = {
    "HSIL": ("High squamous intra-epithelial lesion",
             "High-grade squamous intraepithelial lesion"),
    "LSIL": ("Low squamous intra-epithelial lesion", "Low-grade squamous intraepithelial lesion"),
    "NL": ("Negative for Intraepithelial malignancy", "NILM",
           "Negative for intraepithelial lesion or malignancy"),
    "SCC": ("Squamous cell carcinoma",),
}


# The public MLCC mirror names files <class>_<source>_<copy>.jpg: copies 1..N of one source
# image are rotated/zoomed augmentations of it (HSIL_10_1 ... HSIL_10_19), so they are grouped.
MLCC_GROUP_PATTERN = r"^(.+?_\d+)_\d+\.[^.]+$"


def read_mlcc(root: Path | str, name: Optional[str] = None,
              group_pattern: Optional[str] = MLCC_GROUP_PATTERN) -> LabelledImages:
    """Mendeley LBC cervical: HSIL, LSIL, NL, SCC (official long folder names map to these).

    Files named ``<class>_<source>_<copy>.jpg`` are grouped by ``<class>_<source>`` (the
    mirror's augmented copies of one source image), so copies never straddle train and test.
    When no file name has that form (another copy of the data set), images are not grouped;
    ``group_pattern=None`` (or "") turns grouping off, another pattern replaces it.
    """
    is_default = group_pattern == MLCC_GROUP_PATTERN
    return _read_aliased_folders(root, MLCC_CLASSES, "mlcc", name, group_pattern or None,
                                 pattern_required=not is_default)


SIPAKMED_CLASSES: dict[str, Sequence[str]] = {
    cls: (f"im_{cls}",) for cls in ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal",
                                    "Superficial-Intermediate")
}


def _cropped_dirs(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_dir() and p.name.lower() == "cropped"
                  and not any(is_ignored(Path(part)) for part in p.relative_to(class_dir).parts))


def read_sipakmed(root: Path | str, name: Optional[str] = None,
                  group_pattern: Optional[str] = None) -> LabelledImages:
    """SIPaKMeD single cells: only ``CROPPED/`` images when a class has them, else the folder.

    The official download also holds the full cluster images (``im_<Class>/im_<Class>/*.bmp``)
    next to ``CROPPED/``; those are not single cells and are left out. ``group_pattern``:
    groups from file names, as for :func:`~cytotune.data.readers.read_folder`.
    """
    root = require_directory(root)
    folders = locate_class_folders(root, SIPAKMED_CLASSES, "sipakmed")
    entries = [ClassFolder(canonical, folder)
               for canonical, class_dir in folders.items()
               for folder in (_cropped_dirs(class_dir) or [class_dir])]
    return read_class_folders(entries, name=name or "sipakmed", root=root,
                              group_pattern=group_pattern)


# --------------------------------------------------------------------------- HiCervix

HICERVIX_LEVELS = ("level_1", "level_2", "level_3")


def read_hicervix(root: Path | str, level: int | str = 3, image_column: str = "image_name",
                  class_column: str = "class_name",
                  level_columns: Sequence[str] = HICERVIX_LEVELS,
                  name: Optional[str] = None) -> LabelledImages:
    """HiCervix: ``{train,val,test}.csv`` beside image folders ``train/``, ``val/``, ``test/``.

    ``level`` 1-3 classifies by that column of ``level_columns``; rows where it is empty (the
    class tree is shallower there) are dropped, with a logged warning giving the count. The
    coarser levels are kept in ``label_levels``. ``level="finest"`` classifies by
    ``class_column`` (the finest name each image has) and keeps every level column.
    """
    root = require_directory(root)
    name = name or "hicervix"
    if level == "finest":
        label_column, kept_levels = class_column, list(level_columns)
    elif level in range(1, len(level_columns) + 1):
        label_column, kept_levels = level_columns[level - 1], list(level_columns[: level - 1])
    else:
        raise DataError(f"{name}: option level={level!r} must be one of "
                        f"{list(range(1, len(level_columns) + 1))} or 'finest'")

    frames, rows = [], []
    for split in SPLIT_NAMES:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file():
            continue
        frame = read_csv_frame(csv_path, as_written=True)  # spellings: see read_table
        for column in (image_column, label_column, *kept_levels):
            if column not in frame.columns:
                raise DataError(f"CSV file {csv_path}: no column {column!r}; columns are "
                                f"{list(frame.columns)}")
        frame_rows = csv_row_names(csv_path, len(frame))
        keep = (frame[label_column].str.strip() != "").to_numpy()
        if not keep.all():
            logger.warning("%s: dropped %d of %d rows of %s with no %r label (their class tree "
                           "stops above that level)", name, int((~keep).sum()), len(frame),
                           csv_path.name, label_column)
        frame = frame.loc[keep, [image_column, label_column, *kept_levels]].copy()
        frame[image_column] = [_hicervix_image(root, split, value)
                               for value in frame[image_column]]
        frame["__split__"] = split
        frames.append(frame)
        rows.extend(row for row, kept in zip(frame_rows, keep) if kept)
    if not frames:
        raise DataError(f"{name}: none of {', '.join(f'{s}.csv' for s in SPLIT_NAMES)} "
                        f"found in {root}")
    table = pd.concat(frames, ignore_index=True)
    if table.empty:
        raise DataError(f"{name}: no rows with a {label_column!r} label in {root}")
    return read_table(table, rows=rows, root=root, name=name, path_column=image_column,
                      label_column=label_column, split_column="__split__", group_column=None,
                      level_columns=kept_levels, origin=f"{name} CSV files in {root}")


def _hicervix_image(root: Path, split: str, image_name: str) -> str:
    """Path of an image relative to ``root``: ``<split>/<name>``, else ``<name>`` if only that exists."""
    image_name = image_name.strip()
    if image_name and not (root / split / image_name).is_file() and (root / image_name).is_file():
        return image_name
    return f"{split}/{image_name}" if image_name else ""


# --------------------------------------------------------------------------- registry

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout(
        name="bcfc", reader=read_bcfc,
        summary="Body Cavity Fluid Cytology (Kaggle, cmacus): benign vs malignant",
        expected_layout="root/benign/*, root/malignant/* (folder names in any case); the "
                        "two folders may also sit one level down, e.g. root/<dataset>/benign/"),
    Layout(
        name="mlcc", reader=read_mlcc,
        summary="Mendeley liquid-based cytology cervical images: HSIL, LSIL, NL, SCC",
        expected_layout="root/<class>/*.jpg, one folder per class, named HSIL, LSIL, NL, SCC or "
                        "as in the official download: 'High squamous intra-epithelial lesion', "
                        "'Low squamous intra-epithelial lesion', 'Negative for Intraepithelial "
                        "malignancy', 'Squamous cell carcinoma' (possibly one level down); files "
                        "named <class>_<source>_<copy>.jpg are grouped by source (option "
                        "group_pattern)"),
    Layout(
        name="sipakmed", reader=read_sipakmed,
        summary="SIPaKMeD isolated cervical cells: 5 classes",
        expected_layout="root/im_<Class>/im_<Class>/CROPPED/*.bmp for Class in Dyskeratotic, "
                        "Koilocytotic, Metaplastic, Parabasal, Superficial-Intermediate (the "
                        "full cluster .bmp files outside CROPPED/ are ignored); plain "
                        "root/<Class>/ folders are accepted too"),
    Layout(
        name="hicervix", reader=read_hicervix,
        summary="HiCervix: three-level hierarchical cervical cell labels (level 3 by default)",
        expected_layout="root/{train,val,test}.csv with columns image_name, class_name, level_1, "
                        "level_2, level_3 (deeper levels empty where the tree is shallower), and "
                        "images in root/{train,val,test}/<image_name>"),
    Layout(
        name="folder", reader=read_folder,
        summary="any folder of class folders",
        expected_layout="root/<class>/<images> or root/{train,val,test}/<class>/<images> "
                        "(option group_pattern: a regex whose capture group is the source id "
                        "in each file name)"),
    Layout(
        name="csv", reader=read_csv,
        summary="any CSV with one row per image",
        expected_layout="a CSV with columns path and label (optional split, group; or option "
                        "group_pattern instead of a group column); relative paths are resolved "
                        "against the CSV's folder or root="),
)}


def load_dataset(source: str | Path, layout: Optional[str] = None,
                 **options: object) -> LabelledImages:
    """Read ``source`` with the named ``layout`` (see :data:`LAYOUTS`), passing ``options``.

    Without a layout a ``.csv`` file is read with :func:`read_csv` and a directory with
    :func:`read_folder`.
    """
    source = Path(source).expanduser()
    if layout is None:
        if source.is_file() and source.suffix.lower() == ".csv":
            layout = "csv"
        elif source.is_dir():
            layout = "folder"
        else:
            raise DataError(f"data source {source} is neither a directory nor a .csv file")
    entry = LAYOUTS.get(layout.lower())
    if entry is None:
        raise DataError(f"unknown layout {layout!r}; known layouts: {', '.join(sorted(LAYOUTS))}")
    signature = inspect.signature(entry.reader)
    try:
        signature.bind(source, **options)
    except TypeError as err:
        accepted = list(signature.parameters)[1:]
        raise DataError(f"layout {entry.name!r} cannot take options {sorted(options)} ({err}); "
                        f"its options are {accepted}") from err
    return entry.reader(source, **options)
