"""The ``lungtumor`` command: one entry point, one subcommand per stage.

The command line stays thin: each subcommand parses its options, calls one library function and prints
what it returns. Errors caused by input become ``error: <file>: <problem>`` and exit code 2; anything else
is an internal error with exit code 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from lungtumor import __version__
from lungtumor.cli.options import HelpFormatter, finish_args
from lungtumor.cli.parsers import COMMANDS
from lungtumor.core.errors import InputError


class _UsageError(Exception):
    """A command-line usage error (unknown option, missing argument, a value of the wrong type)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``error: lungtumor predict: ...``), not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """Parse, then fill the positional-or-option slots (``OUT`` or ``-o/--out``; parsers.finish_args)."""
        ns, extras = super().parse_known_args(args, namespace)
        problem = finish_args(ns)
        if problem:
            self.error(problem)
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(
        prog="lungtumor",
        description="Segment lung tumours in chest CT and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"lungtumor {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output (bars or lines)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    orig = sub.add_parser

    def add_parser(name, **kw):
        kw.setdefault("parents", [common])
        kw.setdefault("formatter_class", HelpFormatter)
        return orig(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lungtumor`` console script. Returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "cmd", None):
        parser.print_help()
        return 2
    out = getattr(args, "out", None)
    new_out = isinstance(out, Path) and not out.exists() and not out.is_symlink()
    rc = 1
    try:
        # the one import inside a function here: a subcommand's libraries (torch, Lightning) load only when it runs
        commands = importlib.import_module("lungtumor.cli.commands")
        rc = int(getattr(commands, f"cmd_{args.cmd}")(args) or 0)
        return rc
    except InputError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"error: internal error: {type(e).__name__}: {msg} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
    finally:
        if rc != 0 and new_out:
            _remove_empty_dirs(out)


def _remove_empty_dirs(root: Path) -> None:
    """Remove ``root`` and its sub-folders where they hold no files (a failed command's empty output folder)."""

    try:
        for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)  # only succeeds when empty
            except OSError:
                pass
    except OSError:
        pass
