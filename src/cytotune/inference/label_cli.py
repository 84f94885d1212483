"""``cytotune select`` and ``cytotune audit``: sub-commands for ``cytotune.cli`` (``register``).

Cheap to import (argparse and rich only): the implementation, in
:mod:`cytotune.inference.labelling`, is imported when a command runs, so their --help stays
torch-free. Errors propagate to ``cytotune.cli.main``, which prints one ``error:`` line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from functools import partial
from typing import Callable, Optional

from rich.markup import escape

from cytotune._flags import add_data_options, add_feature_options, add_progress
from cytotune.inference.cli import output_console

# the registry's names (cytotune.data.selection.strategy_names(), which imports numpy):
# only for --help; the handler checks the name against the registry itself
STRATEGIES_HELP = "random | kmeans | typiclust | probcover"


def _backbone_options(p: argparse.ArgumentParser) -> None:
    """The options that say which features (shared with ``embed``), and progress."""
    add_feature_options(p, pretrained_help="published weights; --no-pretrained: random "
                                           "initialisation (tests)")
    add_progress(p)


def register(subparsers, display: Optional[Callable[[], object]] = None
             ) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``select`` and ``audit``; returns {name: handler(args) -> exit code}. ``display``
    makes the progress observer ``--progress`` shows (the CLI's rich display, which sits a
    layer above this one); without it progress is not shown."""
    s = subparsers.add_parser(
        "select", help="choose which unlabelled images to label first",
        description="Choose --budget images of an unlabelled pool for an expert to label, from "
                    "the backbone's cached features, without reading any label. Writes the "
                    "picks CSV (order, path, cluster, an empty label column to fill in) and "
                    "picks.html beside it (thumbnails in labelling order).")
    s.add_argument("--data", required=True,
                   help="the pool: a folder of images (flat or not; folder names are ignored) "
                        "or a CSV with a path column")
    s.add_argument("--budget", type=int, required=True, help="how many images to choose")
    s.add_argument("--strategy", required=True, help=STRATEGIES_HELP)
    s.add_argument("--out", required=True, metavar="CSV", help="picks CSV to write")
    s.add_argument("--labelled", default=None, metavar="CSV",
                   help="an earlier selection (path column): its images are not chosen again "
                        "and count as covered (default: none)")
    s.add_argument("--seed", type=int, default=0, help="selection seed (k-means, random)")
    _backbone_options(s)

    a = subparsers.add_parser(
        "audit", help="find probable label errors, duplicates and outliers in labelled data",
        description="Audit a labelled data set on the backbone's cached features: probable "
                    "label errors (cleanlab confident learning on out-of-fold probabilities of "
                    "a logistic-regression probe), near-duplicate and exact-duplicate groups, "
                    "and outliers far from every class. Writes label_issues.csv, "
                    "near_duplicates.csv, exact_duplicates.csv, outliers.csv and audit.html "
                    "(thumbnails) into --out.")
    add_data_options(a)
    a.add_argument("--out", required=True, metavar="DIR", help="folder to write the findings to")
    a.add_argument("--folds", type=int, default=5, help="cross-validation folds of the probe")
    a.add_argument("--duplicate-threshold", type=float, default=0.98,
                   help="cosine similarity at or above which images are near-duplicates")
    a.add_argument("--top", type=int, default=50, help="findings of each kind shown in audit.html")
    a.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    _backbone_options(a)
    return {"select": partial(cmd_select, display=display),
            "audit": partial(cmd_audit, display=display)}


def _config(args: argparse.Namespace, **extra):
    from cytotune.inference.labelling import make_config

    return make_config(data=str(args.data), model=args.model, weights=args.weights,
                       pretrained=args.pretrained, image_size=args.image_size,
                       cache_dir=args.cache_dir, device=args.device, precision=args.precision,
                       **extra)


def _observing(args: argparse.Namespace, display: Optional[Callable[[], object]]):
    from cytotune.training.progress import TrainingObserver, observing

    return observing(display() if args.progress and display else TrainingObserver())


def cmd_select(args: argparse.Namespace,
               display: Optional[Callable[[], object]] = None) -> int:
    from cytotune.data.selection import get_strategy
    from cytotune.inference import labelling

    console = output_console()
    try:
        get_strategy(args.strategy)
    except ValueError as err:
        raise ValueError(f"--strategy: {err}") from None
    if args.budget < 1:
        raise ValueError(f"--budget must be at least 1, got {args.budget}")
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the picks CSV to write")
    paths = labelling.read_pool(args.data)
    known = 0
    if args.labelled:  # checked before any extraction: every listed file must be in the pool
        known = len(labelling.labelled_indices(args.labelled, [str(p) for p in paths]))
    if args.budget > len(paths) - known:
        raise ValueError(f"--budget {args.budget} is larger than the pool: {args.data} holds "
                         f"{len(paths)} images" + (f", {known} of them in --labelled "
                                                   f"{args.labelled}" if known else ""))
    config = _config(args)
    with _observing(args, display):
        features, kept, from_cache = labelling.pool_features(config, paths, args.batch_size)
    labelled = labelling.labelled_indices(args.labelled, kept) if args.labelled else None
    table = labelling.choose(features, kept, args.strategy, args.budget, args.seed, labelled)
    csv_path, html_path = labelling.write_picks(
        table, out, f"cytotune select: {args.budget} images by {args.strategy} ({args.model})")
    source = "all from the feature cache" if from_cache else f"cached in {args.cache_dir}"
    console.print(f"{len(table)} of {len(kept)} pool images chosen by {args.strategy}"
                  + (f" ({len(labelled)} already labelled, not chosen again)"
                     if labelled is not None else "")
                  + f"; features of {escape(args.model)} {escape(source)}", highlight=False,
                  soft_wrap=True)
    console.print(f"fill in the label column of [bold]{escape(str(csv_path))}[/bold]; "
                  f"thumbnails in {escape(str(html_path))}", highlight=False, soft_wrap=True)
    return 0


def cmd_audit(args: argparse.Namespace,
              display: Optional[Callable[[], object]] = None) -> int:
    from cytotune.inference import labelling
    from cytotune.training.embed import embed

    console = output_console()
    for flag, value in (("--folds", args.folds), ("--top", args.top)):
        if value < 1 or (flag == "--folds" and value < 2):
            raise ValueError(f"{flag} must be at least {2 if flag == '--folds' else 1}, "
                             f"got {value}")
    if not -1 <= args.duplicate_threshold <= 1:
        raise ValueError(f"--duplicate-threshold is a cosine similarity in [-1, 1], got "
                         f"{args.duplicate_threshold}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    config = _config(args, layout=args.layout)
    with _observing(args, display):
        emb = embed(config, split="all", batch_size=args.batch_size)
    if emb.multi_label:
        raise ValueError(f"--data {args.data}: multi-label data is not supported by the audit")
    labels = emb.label_names()
    if len(set(labels)) < 2:
        raise ValueError(f"--data {args.data}: a label audit needs at least 2 classes, found "
                         f"{len(set(labels))} ({', '.join(sorted(set(labels)))})")
    try:
        result = labelling.audit_tables(emb.features.numpy(), labels, emb.paths, args.seed,
                                        args.folds, args.duplicate_threshold)
    except ValueError as err:
        raise ValueError(f"--data {args.data}: {err}") from None
    labelling.write_audit(result, out, args.top, f"cytotune audit: {args.data} ({args.model})")
    near_groups = result.near_duplicates["group"].nunique() if len(result.near_duplicates) else 0
    exact_groups = (result.exact_duplicates["group"].nunique()
                    if len(result.exact_duplicates) else 0)
    console.print(f"{result.images} images audited with {escape(args.model)} features"
                  + (f" ({escape(result.note)})" if result.note else ""), highlight=False,
                  soft_wrap=True)
    console.print(f"  probable label errors: {len(result.label_issues)}\n"
                  f"  near-duplicate groups: {near_groups} ({len(result.near_duplicates)} images)"
                  f"\n  exact-duplicate groups: {exact_groups} "
                  f"({len(result.exact_duplicates)} images)\n"
                  f"  outliers ranked: {len(result.outliers)}", highlight=False)
    if near_groups or exact_groups:
        console.print("duplicate groups found: add a 'group' column to your manifest (the group "
                      "ids of near_duplicates.csv) so that a split keeps each group in one "
                      "split", highlight=False, soft_wrap=True)
    console.print(f"written to [bold]{escape(str(out))}[/bold]: "
                  f"{', '.join(labelling.AUDIT_FILES)}", highlight=False, soft_wrap=True)
    return 0
