"""Predicting many CTs: parts for cluster array jobs (``--num-parts K --part-id I``) and ``--continue``.

Parts: the cases are sorted by their output stem (``core.paths.unique_stems`` over *all* inputs, so every part
names a case alike) and part I takes every K-th, starting at the I-th (as nnU-Net's ``part_id::num_parts``):
the parts are disjoint, together they are all cases, and their sizes differ by at most one. Each part writes
its own manifest, ``predict_manifest.part-I-of-K.json``, so parts sharing one output folder never write the
same file; one part (K = 1) writes ``predict_manifest.json`` and keeps the input order.

Continue: a case counts as finished when the manifest this run writes (the same part's) lists it, by output
stem and input file name, with every output this run would write (``workflows.outputs.expected_outputs``), and
every output it lists exists. Its entry is carried over to the new manifest; the other cases are predicted.
The manifest must come from the same models (sha256) and the same settings that shape the masks (threshold,
TTA, lung gate, postprocessing, detector), or ``--continue`` is refused: a folder never mixes two recipes.

Processes (``--devices N``, ``workflows.distributed``): within a part, rank R of N takes every N-th case by stem
from the R-th, as parts do (:class:`Shard`), and writes ``<manifest>.rank-R-of-N.json``; rank 0 merges them.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lungtumor.core.errors import InputError
from lungtumor.workflows.manifest import MANIFEST_NAME

T = TypeVar("T")

#: The settings (``manifest.settings_record`` keys) a continued run must share with the manifest's.
RECIPE_KEYS = ("threshold", "tta", "lung_gate", "postprocess", "detector")


def check_part(num_parts: int, part_id: int) -> None:
    """Raises InputError unless ``num_parts >= 1`` and ``0 <= part_id < num_parts``."""
    if num_parts < 1:
        raise InputError("--num-parts", f"must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(
            "--part-id", f"must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}"
        )


def check_processes(devices: int, num_nodes: int) -> None:
    """Raises InputError unless ``devices >= 1`` and ``num_nodes >= 1``."""
    for flag, n in (("--devices", devices), ("--num-nodes", num_nodes)):
        if n < 1:
            raise InputError(flag, f"must be at least 1, got {n}")


def manifest_name(num_parts: int = 1, part_id: int = 0) -> str:
    """``predict_manifest.json``, or ``predict_manifest.part-I-of-K.json`` for part I of K > 1."""
    if num_parts <= 1:
        return MANIFEST_NAME
    return f"predict_manifest.part-{part_id}-of-{num_parts}.json"


def select_part(items: Sequence[T], stems: Sequence[str], num_parts: int, part_id: int) -> list[T]:
    """Part ``part_id`` of ``num_parts`` of ``items`` (one per stem): sorted by stem, every K-th from I.
    With one part, all items in their own order."""
    check_part(num_parts, part_id)
    if num_parts == 1:
        return list(items)
    order = sorted(range(len(items)), key=lambda i: stems[i])
    return [items[i] for i in order[part_id::num_parts]]


def _recipe_difference(
    old: dict[str, Any], models: list[dict[str, Any]], settings: dict[str, Any]
) -> str | None:
    """What differs between a manifest's models and settings and this run's, in words; None when nothing."""
    was = [m.get("sha256") for m in old.get("models", []) if isinstance(m, dict)]
    now = [m["sha256"] for m in models]
    if was != now:
        return f"other model(s) (sha256 {', '.join(str(w)[:12] for w in was)}; now {', '.join(n[:12] for n in now)})"
    old_settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    for key in RECIPE_KEYS:
        if old_settings.get(key) != settings.get(key):
            return f"{key} {json.dumps(old_settings.get(key))} (now {json.dumps(settings.get(key))})"
    return None


def finished_cases(
    manifest_path: Path,
    cases: Sequence[tuple[str, Path, str]],
    expected: Callable[[str], list[str]],
    models: list[dict[str, Any]],
    settings: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The manifest entries (by stem) of ``cases`` ((case, source, stem)) that an earlier run finished, and that
    run's manifest (None when there is none). ``expected(stem)``: the output names this run would write.

    Raises:
        InputError: the manifest is unreadable, or from other models or settings.
    """
    if not manifest_path.is_file():
        return {}, None
    try:
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise InputError(
            manifest_path, "--continue: not a readable manifest; rerun without --continue"
        ) from None
    if not isinstance(old, dict):
        raise InputError(manifest_path, "--continue: not a predict manifest; rerun without --continue")
    diff = _recipe_difference(old, models, settings)
    if diff:
        raise InputError(
            manifest_path,
            f"--continue: its cases were predicted with {diff}; rerun without --continue to redo them, or "
            "choose another --out",
        )
    out = manifest_path.parent
    by_stem = {
        e["stem"]: e for e in old.get("cases", []) if isinstance(e, dict) and isinstance(e.get("stem"), str)
    }
    done = {}
    for _, src, stem in cases:
        entry = by_stem.get(stem)
        if entry is None or Path(str(entry.get("input", ""))).name != Path(src).name:
            continue
        listed = [str(o.get("path", "")) for o in entry.get("outputs", []) if isinstance(o, dict)]
        complete = all((out / p).is_file() for p in listed) and set(expected(stem)) <= set(listed)
        if complete and listed:
            done[stem] = entry
    return done, old


def rank_manifest_name(base: str, rank: int, world_size: int) -> str:
    """The manifest of rank R of N processes: ``predict_manifest.rank-R-of-N.json`` for ``base``
    ``predict_manifest.json`` (``predict_manifest.part-I-of-K.rank-R-of-N.json`` in a part)."""
    return f"{base.removesuffix('.json')}.rank-{rank}-of-{world_size}.json"


def rank_manifests(out: Path, base: str) -> list[Path]:
    """The rank manifests of ``base`` in ``out``, of any number of processes (a killed run leaves them)."""
    return sorted(out.glob(f"{glob.escape(base.removesuffix('.json'))}.rank-*-of-*.json"))


def continue_sources(out: Path, base: str) -> list[Path]:
    """The manifests that ``--continue`` of a multi-process run reads: ``base`` and its rank manifests, the newest
    first (a case listed twice counts as the newest run wrote it)."""
    found = [p for p in [*rank_manifests(out, base), out / base] if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def finished_in(
    manifest_paths: Sequence[Path],
    cases: Sequence[tuple[str, Path, str]],
    expected: Callable[[str], list[str]],
    models: list[dict[str, Any]],
    settings: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """:func:`finished_cases` over several manifests: a case's entry from the first that finished it, and the
    first manifest found (None when there is none).

    Raises:
        InputError: a manifest is unreadable, or from other models or settings.
    """
    done: dict[str, dict[str, Any]] = {}
    previous = None
    for path in manifest_paths:
        found, old = finished_cases(path, cases, expected, models, settings)
        for stem, entry in found.items():
            done.setdefault(stem, entry)
        previous = previous or old
    return done, previous


@dataclass
class Shard:
    """Rank ``rank`` of ``world_size`` processes of one predict (``workflows.distributed``): it predicts every
    N-th case of the part by output stem, from the R-th (:func:`select_part`: no padding, so no case runs twice and
    a rank may have none), on ``device`` with ``threads`` torch threads, into its own rank manifest."""

    rank: int
    world_size: int
    device: Any  # this process's torch.device
    threads: int | None = None
    order: list[str] = field(default_factory=list)  # the part's stems in the part's order (set by select)
    manifest: dict[str, Any] | None = None  # this rank's manifest data (set by predict_paths)

    def select(self, items: Sequence[tuple[str, Path, str]]) -> list[tuple[str, Path, str]]:
        """This rank's share of the part's (case, source, stem) items."""
        self.order = [stem for _, _, stem in items]
        return select_part(items, self.order, self.world_size, self.rank)

    def manifest_name(self, base: str) -> str:
        """This rank's manifest file name (:func:`rank_manifest_name`)."""
        return rank_manifest_name(base, self.rank, self.world_size)
