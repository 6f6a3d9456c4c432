"""Output file names: a safe stem per case, and distinct stems when two inputs share a name."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def output_stem(case: str) -> str:
    """The file-name stem for ``case``'s outputs: path separators, control characters and characters that
    are not allowed in Windows file names become ``_``, and a leading ``.`` too (no hidden files, no ``..``),
    so an output can only ever land inside the output folder."""
    s = re.sub(r'[\x00-\x1f\x7f/\\<>:"|?*]', "_", case)
    s = re.sub(r"^\.+", lambda m: "_" * len(m.group()), s)
    return s or "case"


def unique_stems(items: Sequence[tuple[str, str | os.PathLike]]) -> list[str]:
    """Distinct output stems for ``(case name, source path)`` pairs, in their order, so that no two inputs of one
    call write the same output file.

    A case whose stem is unique keeps :func:`output_stem` of its name. Inputs that share a stem (compared
    case-insensitively, as on macOS and Windows file systems) each get their parent folder's name appended
    (``a/ct.nii.gz``, ``b/ct.nii.gz`` → ``ct_a``, ``ct_b``); a stem that is still taken gets ``_2``, ``_3``, ...
    in input order. The same inputs in the same order always give the same stems.
    """
    stems = [output_stem(case) for case, _ in items]
    shared = Counter(s.casefold() for s in stems)
    wanted = []
    for (_, src), s in zip(items, stems, strict=True):
        parent = Path(os.path.abspath(src)).parent.name
        wanted.append(output_stem(f"{s}_{parent}") if shared[s.casefold()] > 1 and parent else s)
    used: set[str] = set()
    out = []
    for w in wanted:
        s, n = w, 2
        while s.casefold() in used:
            s, n = f"{w}_{n}", n + 1
        used.add(s.casefold())
        out.append(s)
    return out
