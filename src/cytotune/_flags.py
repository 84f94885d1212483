"""One spelling for on/off options on every command: ``--flag`` / ``--no-flag``.

Older releases spelled some as ``--flag true|false``; :class:`OnOffParser` still takes that form
(rewriting it before parsing) and prints a one-line deprecation note on stderr, so existing
scripts keep working. A leaf module (argparse only), usable by every layer's command parser.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Optional, Sequence

TRUE_WORDS = ("1", "true", "yes", "on")
# a help text that states its option's default itself: "(default: X)", "(default X)", "default:
# X", "X (default)", "...; default X", "no default"
SAYS_DEFAULT = re.compile(r"\(default[ :)]|default: |[;,] default |no default")
FALSE_WORDS = ("0", "false", "no", "off")


def add_on_off(parser: argparse.ArgumentParser, flag: str, help: str, **kwargs: Any) -> None:
    """Add ``--flag`` / ``--no-flag`` (``flag`` given as ``--name``); a True/False default is
    shown in --help as the spelling that is in force (``default: --flag``)."""
    action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help, **kwargs)
    default = kwargs.get("default")
    if isinstance(default, bool) and not SAYS_DEFAULT.search(help):
        # argparse would add "(default: True)"; say which spelling is in force instead
        action.help = f"{help} (default: {flag if default else '--no-' + flag[2:]})"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help: ``(default: VALUE)`` appended unless the help text
    already says its default; a switch reads ``(default: off)``. A default of None is not
    printed as "None": such options say in their own help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings and "required" not in text:
            return f"{text} (required)"
        if SAYS_DEFAULT.search(text) or action.default in (None, argparse.SUPPRESS) or \
                not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if isinstance(action.default, (list, tuple)) and not action.default:
            return f"{text} (default: none)"
        return text + " (default: %(default)s)"


def on_off_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The positive spellings (``--name``) of the parser's own on/off options."""
    return {s for a in parser._actions if isinstance(a, argparse.BooleanOptionalAction)
            for s in a.option_strings if not s.startswith("--no-")}


def value_error(flag: str, value: str) -> str:
    """The message for a value given to an on/off option (``flag``: either spelling)."""
    name = flag[len("--no-"):] if flag.startswith("--no-") else flag[2:]
    return (f"--{name} takes no value (use --{name} or --no-{name}), got {value!r}")


def rewrite_legacy(argv: Sequence[str], flags: set[str], prog: str = "cytotune") -> list[str]:
    """``--flag true|false`` (and ``--flag=false``) -> ``--flag`` / ``--no-flag``, with a note on
    stderr for each; every other token is kept as it is. ``--flag=WORD`` with any other word
    raises :class:`OnOffValueError` (argparse would only say "ignored explicit argument")."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # everything after it is positional
            out.extend(argv[i:])
            break
        flag, eq, value = token.partition("=")
        negative = flag.startswith("--no-") and "--" + flag[len("--no-"):] in flags
        if eq and (negative or (flag in flags and value.strip().lower() not in
                                TRUE_WORDS + FALSE_WORDS)):
            raise OnOffValueError(value_error(flag, value))
        if flag in flags and not eq and i + 1 < len(argv):
            value = argv[i + 1]
        word = value.strip().lower()
        if flag in flags and word in TRUE_WORDS + FALSE_WORDS and (eq or i + 1 < len(argv)):
            new = flag if word in TRUE_WORDS else "--no-" + flag[2:]
            old = token if eq else f"{token} {value}"
            print(f"{prog}: note: '{old}' is deprecated, write '{new}' (or "
                  f"'{'--no-' + flag[2:] if new == flag else flag}')", file=sys.stderr)
            out.append(new)
            i += 1 if eq else 2
            continue
        out.append(token)
        i += 1
    return out


class OnOffValueError(ValueError):
    """A value given to an on/off option that is not one of the deprecated true/false words."""


def stray_value(argv: Sequence[str], extras: Sequence[str], flags: set[str]) -> Optional[str]:
    """The message for the first left-over token that directly follows an on/off option (both
    spellings) in ``argv``: ``--retry-failed maybe`` is a value given to the option, not an
    unrecognised argument; None when no left-over token is one."""
    left = set(extras)
    spellings = flags | {"--no-" + f[2:] for f in flags}
    for before, token in zip(argv, argv[1:]):
        if before == "--":
            return None
        if before in spellings and token in left and not token.startswith("-"):
            return value_error(before, token)
    return None


class OnOffParser(argparse.ArgumentParser):
    """An ArgumentParser (its sub-command parsers too) that still accepts ``--flag true|false``
    for its ``--flag/--no-flag`` options, and that names the option when another value follows
    one (``error: --retry-failed takes no value ...``) instead of "unrecognized arguments"."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None):
        argv = list(sys.argv[1:] if args is None else args)
        flags = on_off_flags(self)
        if flags:
            try:
                argv = rewrite_legacy(argv, flags, self.prog.split()[0])
            except OnOffValueError as err:
                self.error(str(err))
        parsed, extras = super().parse_known_args(argv, namespace)
        message = stray_value(argv, extras, flags) if flags and extras else None
        if message:
            self.error(message)
        return parsed, extras


class DeprecatedAlias(argparse.Action):
    """An old spelling kept working: sets ``dest`` to ``const`` and prints a one-line note on
    stderr naming the new spelling (``--quiet`` -> ``--no-progress``)."""

    def __init__(self, option_strings, dest, const=None, new: str = "", **kwargs: Any):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=0, const=const, default=argparse.SUPPRESS,
                         **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog.split()[0]}: note: '{option_string}' is deprecated, write "
              f"'{self.new}'", file=sys.stderr)
        setattr(namespace, self.dest, self.const)


def add_progress(parser: argparse.ArgumentParser, quiet_alias: bool = False) -> None:
    """``--progress`` / ``--no-progress``: the one spelling of "show progress" on every command;
    ``quiet_alias`` keeps the older ``--quiet`` working (deprecated, with a note)."""
    add_on_off(parser, "--progress", default=True,
               help="show progress (phase, step, ETA) on stderr; --no-progress: only the "
                    "results")
    if quiet_alias:
        parser.add_argument("--quiet", action=DeprecatedAlias, dest="progress", const=False,
                            new="--no-progress")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--data`` and ``--layout`` of a command that reads a labelled data set (``embed``,
    ``audit``), spelt as ``train`` spells them."""
    parser.add_argument("--data", required=True,
                        help="data set: folder of class folders, CSV manifest, or a named "
                             "layout's root")
    parser.add_argument("--layout", default=None,
                        help="named layout: bcfc, mlcc, sipakmed, hicervix, folder, csv "
                             "(default: told from the path)")


def add_feature_options(parser: argparse.ArgumentParser, pretrained_help: str) -> None:
    """The options that say which features a command reads from (or adds to) the feature cache:
    model, weights, input size, cache, device, precision, batch size. One declaration for
    ``embed``, ``select`` and ``audit``, so their spellings, defaults and help agree."""
    parser.add_argument("--model", required=True,
                        help="model card name (see `cytotune models`), timm:<name> or "
                             "open_clip:<arch>[:<tag>]")
    parser.add_argument("--weights", default=None,
                        help="local checkpoint file or directory (default: the card's published "
                             "weights)")
    add_on_off(parser, "--pretrained", default=True, help=pretrained_help)
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the card's)")
    parser.add_argument("--cache-dir", default=".cytotune_cache",
                        help="decoded images and features, shared with `train`, `embed`, "
                             "`select` and `audit`")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto is bf16 on CUDA, fp32 on a CPU")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def _level(value: str) -> float:
    try:
        level = float(value)
    except ValueError:
        level = float("nan")
    if not 0.5 <= level < 1.0:
        raise argparse.ArgumentTypeError(f"--level takes a number in [0.5, 1), e.g. 0.95, got "
                                         f"{value!r}")
    return level


def _whole(flag: str, minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= {minimum}, got "
                                             f"{value!r}")
        return number
    return parse


def add_bootstrap_options(parser: argparse.ArgumentParser, default_resamples: int = 2000) -> None:
    """``--level``, ``--resamples`` and ``--boot-seed``: how the intervals of ``report`` and
    ``compare`` are drawn (one spelling, checked here so a bad value names its option)."""
    parser.add_argument("--level", type=_level, default=0.95,
                        help="interval level (default: 0.95)")
    parser.add_argument("--resamples", type=_whole("--resamples", 100), default=default_resamples,
                        help=f"bootstrap resamples (default: {default_resamples})")
    parser.add_argument("--boot-seed", type=_whole("--boot-seed", 0), default=0,
                        help="random seed of the bootstrap (default: 0)")
