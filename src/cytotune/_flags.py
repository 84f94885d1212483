"""One spelling for on/off options on every command: ``--flag`` / ``--no-flag``.

Older releases spelled some as ``--flag true|false``; :class:`OnOffParser` still takes that form
(rewriting it before parsing) and prints a one-line deprecation note on stderr, so existing
scripts keep working. A leaf module (argparse only), usable by every layer's command parser.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def add_on_off(parser: argparse.ArgumentParser, flag: str, help: str, **kwargs: Any) -> None:
    """Add ``--flag`` / ``--no-flag`` (``flag`` given as ``--name``)."""
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help, **kwargs)


def on_off_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The positive spellings (``--name``) of the parser's own on/off options."""
    return {s for a in parser._actions if isinstance(a, argparse.BooleanOptionalAction)
            for s in a.option_strings if not s.startswith("--no-")}


def rewrite_legacy(argv: Sequence[str], flags: set[str], prog: str = "cytotune") -> list[str]:
    """``--flag true|false`` (and ``--flag=false``) -> ``--flag`` / ``--no-flag``, with a note on
    stderr for each; every other token is kept as it is."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, eq, value = token.partition("=")
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


class OnOffParser(argparse.ArgumentParser):
    """An ArgumentParser (its sub-command parsers too) that still accepts ``--flag true|false``
    for its ``--flag/--no-flag`` options."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None):
        argv = list(sys.argv[1:] if args is None else args)
        flags = on_off_flags(self)
        if flags:
            argv = rewrite_legacy(argv, flags, self.prog.split()[0])
        return super().parse_known_args(argv, namespace)


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
