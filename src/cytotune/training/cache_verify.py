"""``cytotune cache verify``: hash every entry of a cache folder against its recorded digest.

Reads check entries cheaply (image files only when changed since their last check, see
:func:`cytotune.data.cachefiles.verify_mode`); this is the full check, which also finds damage
that left a file's status untouched (a failing disk, a restored backup with old timestamps).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


DEFAULT_CACHE = ".cytotune_cache"  # TrainConfig.cache_dir's default


@dataclass
class CacheReport:
    """What :func:`verify_cache` found: entries whose digest matched, the bad ones with the
    reason, pixel files without a sidecar (interrupted writes, never used) and temporary files
    of processes that are gone; ``removed`` lists files deleted on request."""

    root: Path
    good: int = 0
    bad: list[tuple[Path, str]] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        checked = self.good + len(self.bad)
        out = [f"cache {self.root}: {checked} entries checked: {self.good} good, "
               f"{len(self.bad)} bad"]
        out += [f"  bad: {path}: {reason}" for path, reason in self.bad]
        if self.incomplete:
            out.append(f"  {len(self.incomplete)} incomplete image entries (a write was "
                       f"interrupted; never used)")
        if self.leftovers:
            out.append(f"  {len(self.leftovers)} temporary files left by processes no longer "
                       f"running")
        if self.removed:
            out.append(f"  removed {len(self.removed)} files")
        elif self.bad or self.incomplete or self.leftovers:
            out.append("  run again with --remove-bad to delete them (runs recompute bad "
                       "entries anyway)")
        return out


def verify_cache(root: Path | str, remove_bad: bool = False) -> CacheReport:
    """Hash every image and feature entry under ``root`` (a ``cache_dir``) in full."""
    from cytotune.data import cachefiles
    from cytotune.data.dataset import DataError
    from cytotune.data.pixel_files import stale_partial_builds
    from cytotune.training.feature_bank import chunk_problem  # torch: only when verifying
    from cytotune.training.features import check_features_file

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no cache folder at {root}: pass --cache DIR (the --cache-dir of your "
                        f"runs; default {DEFAULT_CACHE})")
    images, features = root / "images", root / "features"
    if not images.is_dir() and not features.is_dir():
        raise DataError(f"{root} holds no cytotune cache (no images/ or features/ folder)")
    report = CacheReport(root=root)
    doomed: list[Path] = []
    with cachefiles.verification("always"):
        for sidecar in sorted(images.glob("*.json")):
            pixels = sidecar.with_suffix(".npy")
            problem = _image_problem(pixels, sidecar)
            _count(report, pixels, problem)
            if problem is not None:
                doomed += [pixels, sidecar]
        for chunk in sorted(features.rglob("*.safetensors")):
            try:
                if chunk.parent == features:  # one entry per set of images
                    _, problem = check_features_file(chunk)
                else:  # a per-image bank's chunk: streamed, whatever its size
                    problem = chunk_problem(chunk)
            except OSError as err:
                problem = f"cannot be read ({err.strerror or err})"
            _count(report, chunk, problem)
            if problem is not None:
                doomed.append(chunk)
    report.incomplete = [p for p in sorted(images.glob("*.npy"))
                         if not p.with_suffix(".json").exists()]
    report.leftovers = cachefiles.leftover_temp_files(root) + (
        stale_partial_builds(images) if images.is_dir() else [])
    if remove_bad:
        for path in doomed + report.incomplete + report.leftovers:
            try:
                path.unlink()
                report.removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise DataError(f"cannot remove {path}: {err.strerror or err}") from err
    return report


def _image_problem(pixels: Path, sidecar: Path) -> Optional[str]:
    from cytotune.data.image_store import check_image_entry  # torch: only when verifying

    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict):
            return "has a sidecar that is not a JSON object"
        if not pixels.is_file():
            return "is missing its pixels file"
        return check_image_entry(pixels, sidecar, meta)
    except (OSError, ValueError) as err:
        return f"cannot be read ({err})"


def _count(report: CacheReport, path: Path, problem: Optional[str]) -> None:
    if problem is None:
        report.good += 1
    else:
        report.bad.append((path, problem))


def register(subparsers) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``cache verify`` to the CLI; returns its command handler."""
    cache = subparsers.add_parser("cache", help="check the decoded-image and feature cache",
                                  description="Commands on a cache folder (--cache-dir).")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    verify = actions.add_parser(
        "verify", help="hash every cache entry against the digest recorded when it was written",
        description="Hash every decoded-image and feature entry of a cache folder against the "
                    "digest recorded when it was written; list the bad ones. Exit status 1 when "
                    "any entry is bad.")
    verify.add_argument("--cache", default=DEFAULT_CACHE,
                        help=f"the cache folder (a run's --cache-dir; default {DEFAULT_CACHE})")
    verify.add_argument("--remove-bad", action="store_true",
                        help="delete bad and incomplete entries and leftover temporary files")
    return {"cache": cmd_cache}


def cmd_cache(args: argparse.Namespace) -> int:
    report = verify_cache(args.cache, remove_bad=args.remove_bad)
    for line in report.lines():
        print(line)
    return 1 if report.bad else 0
