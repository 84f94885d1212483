"""How `cytotune ... --help` shows every option's default: TrainConfig's defaults for `train`
(whose flags default to "not given", so a --config file can set them), and the meaning of a
default of None wherever an option's own help does not say it."""
from __future__ import annotations

import argparse
from typing import Any

from cytotune._flags import SAYS_DEFAULT, DefaultsHelpFormatter

ON_OFF = bool  # cytotune.cli.TRAIN_FLAGS' type of an on/off option


# what a train option's default of None means, for --help (TrainConfig's value otherwise)
NONE_DEFAULTS = {
    "data": "from --config; required otherwise",
    "layout": "a CSV file or a folder of class folders, told apart by the path",
    "weights": "the card's published weights",
    "image_size": "the card's",
    "targets": "the card's LoRA targets",
    "shots": "all",
    "fraction": "100, all of the training split",
    "epochs": "none: --steps sets the length",
    "val_every": "about 10 times per run",
    "tokenizer": "the card's",
    "train_blocks": "all blocks",
    "test_domains": "none",
    "label_columns": "none: one label column",
    "multi_label": "off",
    "label_names": "any name found",
    "out": "none: metrics printed, no run directory written",
    "cache_dir": "no cache",
}


def default_text(flag: str, value: Any, kind: Any) -> str:
    """How a train option's default reads in --help."""
    name = flag[2:].replace("-", "_")
    if value is None or value == "":
        return NONE_DEFAULTS.get(name, "none")
    if kind is ON_OFF or isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


# what a default of None means, for options of other modules' commands whose help does not say
NONE_HELP = {
    ("compare", "--out"): "none: the table is only printed",
    ("sweep", "--worker-setup"): "none",
    ("report", "--sweep"): "every sweep in the store",
    ("report", "--sota-label"): "the report's, naming HierSwin",
    ("report", "--methods"): "every method",
    ("report", "--backbones"): "every backbone",
    ("bench", "--layout"): "told from the data path",
    ("bench", "--image-size"): "the card's",
    ("bench", "--peak-tflops"): "none: no FLOP utilisation",
}


def explain_defaults(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
    """Every sub-command's --help shows each option's default: the formatter appends it, an
    option without help text gets one, and a default of None says what it means."""
    if path:
        parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                explain_defaults(child, (*path, name))
            continue
        if not path or not action.option_strings or action.help == argparse.SUPPRESS or \
                action.required or action.default is argparse.SUPPRESS:
            continue
        text = action.help or ""
        if action.default is None and not SAYS_DEFAULT.search(text):
            meaning = NONE_HELP.get((path[0], action.option_strings[-1]), "none")
            action.help = f"{text} (default: {meaning})".strip()
        elif not text:
            action.help = "(default: %(default)s)"
