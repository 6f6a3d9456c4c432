"""Option helpers of the ``lungtumor`` command (light: no heavy imports, ``--help`` stays fast).

``-i/--input`` and ``-o/--out`` slots that may also be given as positional arguments (:func:`finish_args`
fills them after parsing), the help formatter that shows every default, and the shared option texts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: ``lungtumor.core.presets.PRESETS``, not imported here (the CLI starts fast; a test keeps them equal).
PRESET_NAMES = ("3d", "default", "demo", "seed2d")

#: Where installed models live by default (``lungtumor.inference.store.default_models_dir``, not imported here).
MODELS_DIR_HELP = "the user's data folder, platformdirs.user_data_dir('lungtumor')/models, e.g. ~/.local/share/lungtumor/models"

#: What ``--device`` accepts (``lungtumor.core.runtime.DEVICE_CHOICES``).
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda (or gpu), cuda:N or mps"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (``(default: 20)``, ``(default: off)`` for a flag), unless the
    help already says what the default is; an option without a default value says so in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.required:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


def add_slot(p: argparse.ArgumentParser, dest: str, metavar: str, flags: tuple[str, ...], text: str) -> None:
    """A required path that can be given as a positional argument (``METAVAR``) or as an option (``flags``)."""
    either = "/".join(flags)
    p.add_argument(dest, nargs="?", type=Path, metavar=metavar, help=f"{text} (or {either})")
    p.add_argument(
        *flags,
        dest=f"{dest}_opt",
        type=Path,
        metavar=metavar,
        help=f"{text}; required, as {metavar} or {either}",
    )
    p.set_defaults(_slots=[*(p.get_default("_slots") or []), (dest, metavar, either)])


def add_inputs(p: argparse.ArgumentParser, dest: str, metavar: str, text: str) -> None:
    """One or more paths, as positional arguments and/or ``-i/--input`` (repeatable)."""
    p.add_argument(dest, nargs="*", type=Path, metavar=metavar, help=f"{text} (or -i/--input)")
    p.add_argument(
        "-i",
        "--input",
        dest=f"{dest}_opt",
        nargs="+",
        action="extend",
        type=Path,
        metavar=metavar,
        help=f"{text}, as an option (repeatable; with or instead of the positional {metavar}); required, one way "
        "or the other",
    )
    p.set_defaults(_lists=[(dest, metavar, "-i/--input")])


def add_out(p: argparse.ArgumentParser, text: str = "output folder", **kw: Any) -> None:
    """``-o/--out``: the output folder, the same on every command."""
    p.add_argument("-o", "--out", type=Path, help=text, **kw)


def finish_args(ns: argparse.Namespace) -> str | None:
    """Fill the slots of :func:`add_slot` and :func:`add_inputs` from the positional and option forms; return a usage
    problem (``the following arguments are required: ...``) or None. Options take their slots first, then the
    positional values fill the remaining slots left to right (``prepare -i DATA CACHE`` works)."""
    problem = None
    for dest, metavar, either in vars(ns).pop("_lists", ()):
        merged = [*(getattr(ns, dest) or []), *(vars(ns).pop(f"{dest}_opt") or [])]
        setattr(ns, dest, merged)
        if not merged:
            problem = f"the following arguments are required: {metavar} (or {either})"
    slots = vars(ns).pop("_slots", ())
    given = [getattr(ns, dest) for dest, _, _ in slots if getattr(ns, dest) is not None]
    for dest, _, _ in slots:
        setattr(ns, dest, vars(ns).pop(f"{dest}_opt"))
    free = [(dest, metavar, either) for dest, metavar, either in slots if getattr(ns, dest) is None]
    as_options = [
        f"{metavar} as {either}" for dest, metavar, either in slots if getattr(ns, dest) is not None
    ]
    for (dest, _, _), value in zip(free, given, strict=False):
        setattr(ns, dest, value)
    if len(given) > len(free):
        extra = " ".join(str(v) for v in given[len(free) :])
        return f"unrecognized arguments: {extra} (already given: {', '.join(as_options)})"
    missing = [f"{metavar} (or {either})" for _, metavar, either in free[len(given) :]]
    if missing:
        return f"the following arguments are required: {', '.join(missing)}"
    return problem


def add_label(p: argparse.ArgumentParser, what: str = "the mask") -> None:
    p.add_argument(
        "--label",
        type=int,
        metavar="N",
        help=f"{what} is multi-label (a TotalSegmentator --ml file, an RTSTRUCT-derived label map): the voxels "
        "equal to N are the tumour (default: none, the mask must be binary, 0 and 1)",
    )


def quiet_leaf(p: argparse.ArgumentParser) -> None:
    """``--debug`` and ``-q`` on a nested subcommand (``models install``), where the command's own are not seen;
    absent unless given, so that ``lungtumor models --debug install`` keeps its ``--debug``."""
    p.formatter_class = HelpFormatter
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks (default: off)"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress output (default: off)",
    )


# ----------------------------------------------------------------------------- phantom options (synth, demo)


def add_variety(p) -> None:
    """``synth``'s variety options (lungtumor.data.variety; names spelled out here so --help stays fast)."""
    families = ("off", "in-family", "held-out")
    p.add_argument(
        "--variety",
        choices=families,
        default="off",
        help="confounders, acquisition and tumour variants of real chest CT, recorded in lesions.json: in-family "
        "(the training ranges), held-out (settings outside them) or off (the default phantoms, byte for byte); "
        "docs/phantoms.md lists both families",
    )
    p.add_argument(
        "--test-variety",
        choices=families,
        default=None,
        help="the test phantoms' family (default: as --variety), e.g. --variety in-family --test-variety held-out",
    )
    p.add_argument(
        "--without",
        default="",
        metavar="ELEMENT[,ELEMENT...]",
        help="switch these elements of the family off, e.g. metal,port,breathing (element names: docs/phantoms.md)",
    )
    p.add_argument(
        "--hard-negatives",
        type=float,
        default=None,
        metavar="FRACTION",
        help="share of tumour-free phantoms full of confounders (default: the family's, 0.15)",
    )


def add_train_lesions(p, default: str) -> None:
    p.add_argument(
        "--train-lesions",
        # phantom.LESION_PLANS, not imported here: the CLI starts fast
        choices=("standard", "rich", "rich_basal"),
        default=default,
        help=f"how the training phantoms draw tumours (default {default}): standard (like the test phantoms), "
        "rich (0-5 per case, more small ones) or rich_basal (rich, and in 30 %% of cases a 50-110 mm mass on the "
        "diaphragm); the test phantoms are always standard",
    )


def add_hilar(p, default: bool = False) -> None:
    p.add_argument(
        "--train-hilar-vessels",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="give the training phantoms central pulmonary vessels of real calibre at the hila (about 2x the "
        f"thin default trunks; default {'on' if default else 'off'}); the test phantoms are unchanged",
    )
