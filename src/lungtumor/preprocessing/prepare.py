"""``lungtumor prepare``: the 2D training cache (format in ``docs/architecture.md``) and the patient split.

The preprocessing itself (shared with ``predict``) is :mod:`lungtumor.preprocessing.frame`; the per-case writing and
its worker processes are :mod:`lungtumor.preprocessing.cache_writer`. This module splits the patients, drives the two passes
(read every case once and gather the statistics; then write the model input) and writes ``cache.json`` last.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.core.config import PrepConfig
from lungtumor.core.errors import InputError, atomic_write_text, check_subdirs, ensure_writable_dir
from lungtumor.core.progress import tqdm
from lungtumor.data.msd import dataset_source, load_dataset
from lungtumor.preprocessing.cache_writer import Counter, Team, Writer, n_workers, npy_ok

# public names (and the helpers ``prepare3d`` uses) importable from here, as before the split

CACHE_VERSION = 1
_MEMORY_BUDGET = 2 << 30  # bytes of input voxels kept in memory (all processes) before spilling to disk


# ----------------------------------------------------------------------------- splits


def default_val_cases(n: int) -> int:
    """About 10 % of ``n`` patients (64 → 6, the seed's 58/6), at least 1, leaving at least 1 for training."""
    return min(max(1, round(0.1 * n)), n - 1)


def make_splits(
    names: list[str],
    val_cases: int | None = None,
    folds: int = 5,
    seed: int = 0,
    fixed_val: list[str] | None = None,
) -> dict[str, Any]:
    """Patient-level split and k folds (k capped at the number of patients; no folds when k < 2).

    ``fixed_val`` (dataset.json ``validation``) names the validation patients instead of drawing them; the
    folds are drawn as always.

    Returns:
        {"seed", "train", "val", "folds": [{"train", "val"}, ...]}; each name is in exactly one fold's val.
    """
    names = sorted(names)
    n = len(names)
    if n < 2:
        raise InputError(None, f"a patient-level split needs at least 2 labelled cases, the dataset has {n}")
    if fixed_val and val_cases is not None and int(val_cases) != len(fixed_val):
        raise InputError(
            "--val-cases",
            f"the dataset fixes {len(fixed_val)} validation cases (dataset.json 'validation'), got {val_cases}",
        )
    n_val = len(fixed_val) if fixed_val else default_val_cases(n) if val_cases is None else int(val_cases)
    if not 1 <= n_val < n:
        raise InputError("--val-cases", f"must be between 1 and {n - 1} for {n} cases, got {n_val}")
    if folds < 0:
        raise InputError("--folds", f"must be >= 0, got {folds}")
    rng = np.random.default_rng(seed)
    perm = [names[i] for i in rng.permutation(n)]
    val = sorted(fixed_val) if fixed_val else sorted(perm[:n_val])
    k = min(folds, n)
    fold_list = []
    if k >= 2:
        perm_f = [names[i] for i in rng.permutation(n)]
        for chunk in np.array_split(np.arange(n), k):
            fval = sorted(perm_f[j] for j in chunk)
            fold_list.append({"train": [m for m in names if m not in fval], "val": fval})
    return {"seed": seed, "train": [m for m in names if m not in val], "val": val, "folds": fold_list}


# ----------------------------------------------------------------------------- the cache


def preflight(cases: list) -> None:
    """Cheap checks of every case before anything is written: labelled, and both files exist.

    Everything else (format, 3D, grid, values) is found by the single full read of each file.
    """
    for c in cases:
        if c.label is None:
            raise InputError(c.image, "no label with the same name in labelsTr")
        for p in (c.image, c.label):
            if not p.exists():
                raise InputError(p, "no such file or folder")


def json_text(d: dict[str, Any]) -> str:
    """JSON with one top-level key per line and one list item (case, fold) per line."""

    def val(v: Any) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return "[\n" + ",\n".join("  " + json.dumps(x) for x in v) + "\n ]"
        return json.dumps(v)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {val(v)}" for k, v in d.items()) + "\n}\n"


def _stats(prep: PrepConfig, states: list[dict[str, Any]]) -> dict[str, float]:
    """The affine normalisation actually applied: model input = (HU - mean) / std."""
    if prep.norm == "divide":
        return {"mean": 0.0, "std": float(prep.hu_divisor)}
    n = sum(s["partial"][0] for s in states)
    total = math.fsum(s["partial"][1] for s in states)
    sq = math.fsum(s["partial"][2] for s in states)
    mean = total / n
    std = math.sqrt(max(sq / n - mean * mean, 0.0))
    return {"mean": mean, "std": std if std > 1e-3 else 1.0}


def _read_pass(w: Writer, todo: list, counter, team: Team | None, states: dict, progress: bool) -> list:
    """Read pass: every process claims the next unread case; returns the cases this process holds."""
    with tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress) as bar:
        mine = []
        while (k := counter.next()) is not None:
            states[todo[k].name] = st = w.first_pass(todo[k])
            if st["final"] is None:
                mine.append(todo[k])
            bar.update()
            if team:
                team.poll(states, bar.update)
        if team:
            team.wait("read", states, bar.update)
    return mine


def _write_pass(
    w: Writer,
    cases: list,
    todo: list,
    mine: list,
    states: dict,
    stats: dict,
    team: Team | None,
    n: int,
    progress: bool,
) -> None:
    """Writing pass: each process writes the cases it holds; cases read before are shared out. Closes ``team``."""
    read_now = {c.name for c in todo}
    need = [
        c
        for c in cases
        if not (
            states[c.name]["final"] == stats
            and npy_ok(w.img(c.name), states[c.name]["entry"]["prepared_shape"], "float16")
        )
    ]
    again = [(c, states[c.name]) for c in need if c.name not in read_now]
    with tqdm(total=len(need), desc="normalise", unit="case", disable=not progress) as bar:
        if team:
            team.finish(stats, [again[i + 1 :: n] for i in range(n - 1)])
        for case, st in [(c, states[c.name]) for c in mine] + again[::n]:
            states[case.name] = w.finish(case, st, stats)
            bar.update()
            if team:
                team.poll(states, bar.update)
        if team:
            team.wait("done", states, bar.update)
            team.close(abort=False)
            w.n_read += team.n_read


def prepare_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    prep: PrepConfig,
    val_cases: int | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
    memory_budget: int = _MEMORY_BUDGET,
    workers: int | None = None,
) -> str:
    """Write the training cache for ``dataset`` into ``out`` (format in docs/architecture.md); returns a summary.

    Each labelled case is read once: its seg file and its share of the training statistics are written
    and its input voxels held (in memory up to ``memory_budget`` bytes in all, then spilled to
    ``out/.state``) until the statistics are known; then it is preprocessed and written as float16.
    ``workers`` processes share the work (None: one per CPU, up to 4, when the dataset is larger than
    a few MB; extra processes are forked, on Linux only). Every file is written atomically and cache.json
    last; a rerun skips cases already done; the bytes do not depend on ``workers``.

    Raises:
        InputError: bad dataset or case (nothing is left behind when ``out`` was created by this call),
            or ``out`` cannot be written.
    """

    ds = load_dataset(dataset)
    splits = make_splits([c.name for c in ds.cases], val_cases, folds, seed, ds.validation)
    preflight(ds.cases)
    out = Path(out)
    created = not out.exists()
    ensure_writable_dir(out)
    w = Writer(out, prep, memory_budget)
    check_subdirs(out, w.cases_dir.name, w.state_dir.name)  # before anything is written: no link out of OUT
    team: Team | None = None
    threads = torch.get_num_threads()
    try:
        with contextlib.suppress(FileNotFoundError):
            (out / "cache.json").unlink()
        w.cases_dir.mkdir(exist_ok=True)
        w.state_dir.mkdir(exist_ok=True)
        states: dict[str, dict[str, Any]] = {}
        todo = []
        for case in ds.cases:
            st = w.load_state(case)
            if st is None:
                todo.append(case)
            else:
                states[case.name] = st
        n = n_workers(workers, todo)
        w.memory_left = memory_budget // n
        if n > 1:
            torch.set_num_threads(1)
            team = Team(w, todo, n)
        counter = team.counter if team else Counter(len(todo), shared=False)

        mine = _read_pass(w, todo, counter, team, states, progress)
        stats = w.fixed or _stats(prep, [states[c.name] for c in ds.cases])
        _write_pass(w, ds.cases, todo, mine, states, stats, team, n, progress)
        team = None  # closed by the write pass
        entries = [states[c.name]["entry"] for c in ds.cases]
        n_slices = sum(e["n_slices"] for e in entries)
        n_tumour = sum(len(e["tumour_slices"]) for e in entries)
        cache = {
            "version": CACHE_VERSION,
            "prep": w.prep_dict,
            "stats": stats,
            "cases": entries,
            "tumour_slice_fraction": n_tumour / max(n_slices, 1),
            "source": dataset_source(ds),  # where the data came from: the model card reads it
            "complete": True,
        }
        atomic_write_text(out / "splits.json", json_text(splits))
        atomic_write_text(out / "cache.json", json_text(cache))
    except (InputError, OSError, RuntimeError) as e:
        if team:
            team.close(abort=True)
            team = None
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(
                getattr(e, "filename", None) or out, f"cannot write cache ({e.strerror or e})"
            ) from None
        raise
    finally:
        if team:
            team.close(abort=True)
        torch.set_num_threads(threads)
    return (
        f"prepared {len(entries)} cases into {out} ({w.n_read} read, {len(entries) - w.n_read} reused): "
        f"{n_slices} slices, {n_tumour} with tumour ({cache['tumour_slice_fraction']:.1%}); "
        f"split {len(splits['train'])}/{len(splits['val'])} train/val, {len(splits['folds'])} folds; "
        f"normalisation (HU - {stats['mean']:.4g}) / {stats['std']:.4g}"
    )
