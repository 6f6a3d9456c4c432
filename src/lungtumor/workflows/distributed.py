"""Predict with several processes: ``predict --devices N [--num-nodes M] [--device cpu|gpu]`` (issue 25).

Lightning Fabric, the engine under training, starts the processes and their process group (gloo on CPUs, NCCL on
GPUs): on one machine it starts N-1 copies of the command itself; under ``srun`` or ``torchrun`` the cluster has
started them and Fabric reads each one's rank from the environment. Rank R of N runs ``predict_paths`` with a
``workflows.batch.Shard``: every N-th case of the part by output stem, from the R-th (no padding, so no case is
predicted twice; a rank may have none), one process per GPU (``fabric.device``) or ``cores / N`` torch threads on
CPUs. A rank writes the outputs of its cases atomically, and its own manifest, ``<manifest>.rank-R-of-N.json``,
after every case. At the end every rank's results and manifest are gathered; rank 0 writes the merged manifest
(the file and format of one process, plus ``processes``) and removes the rank manifests. A killed run leaves them:
``--continue`` with several processes reads them, any number of processes. An input error on any rank is raised
on every rank after the gather, so that none waits for the others.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only

from lungtumor.core.errors import InputError, atomic_write_text
from lungtumor.core.runtime import resolve_device
from lungtumor.training.trainer import quiet_lightning
from lungtumor.workflows.batch import Shard, check_processes, manifest_name, rank_manifests
from lungtumor.workflows.predict import PredictOptions, PredictResult, predict_paths

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

#: How long a rank that has finished waits for the slowest at the end (the process group's timeout).
WAIT = timedelta(hours=24)


def accelerator(device: str) -> str:
    """Lightning's accelerator for predict's ``--device`` with several processes: ``gpu`` (``cuda``), ``cpu``,
    ``mps`` or ``auto``.

    Raises:
        InputError: ``cuda:N`` (the processes take GPUs 0 to N-1), an unknown device or one this machine lacks.
    """
    name = device.strip().lower()
    if ":" in name:
        raise InputError(
            "--device",
            f"{device} names one GPU, but --devices N runs one process on each of GPUs 0 to N-1; use --device gpu "
            "(CUDA_VISIBLE_DEVICES chooses the GPUs)",
        )
    resolve_device(name)  # an unknown name, or a device this machine lacks: the usual one-line error
    return "gpu" if name in ("cuda", "gpu") else name


def launched_rank() -> int:
    """This process's global rank as Lightning reads it from the environment before and after the launch (0 when
    this process starts the others, or runs alone): the CLI prints on rank 0 only."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def predict_sharded(
    inputs: Iterable[str | os.PathLike],
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: PredictOptions | None = None,
) -> list[PredictResult]:
    """:func:`~lungtumor.workflows.predict.predict_paths` in ``opts.devices`` x ``opts.num_nodes`` processes
    (``opts.device``: ``cpu``, ``gpu`` or ``auto``). Every process returns every case's result, in the order one
    process would; the outputs and ``predict_manifest.json`` are those of one process (the masks byte for byte).

    Called from a script, Lightning starts the other processes by running the script again (``python script.py``
    with the same arguments), as in training: it cannot run in a notebook.

    Raises:
        InputError: bad ``devices``/``num_nodes``/``device``, or an input error on any rank.
    """
    opts = opts or PredictOptions()
    check_processes(opts.devices, opts.num_nodes)
    acc = accelerator(opts.device)
    with quiet_lightning():
        try:
            fabric = Fabric(
                accelerator=acc,
                devices=opts.devices,
                num_nodes=opts.num_nodes,
                strategy=DDPStrategy(timeout=WAIT),  # gloo on CPUs, NCCL on GPUs
            )
        except (MisconfigurationException, ValueError, RuntimeError) as e:
            raise InputError("--devices", _first_line(e)) from None
        return fabric.launch(_run_rank, list(inputs), model_path, Path(out_dir), opts)


def _run_rank(
    fabric: Fabric,
    inputs: list[str | os.PathLike],
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
    out: Path,
    opts: PredictOptions,
) -> list[PredictResult]:
    """One rank: its share of the cases, then the gather, rank 0's merged manifest and a barrier."""
    t0 = time.perf_counter()
    shard = Shard(
        fabric.global_rank, fabric.world_size, fabric.device, opts.threads or _threads(opts.devices)
    )
    results: list[PredictResult] = []
    error = None
    try:
        results = predict_paths(inputs, model_path, out, opts, shard=shard)
    except InputError as e:  # raised on every rank after the gather: no rank waits for one that has stopped
        error = str(e)
    record = rank_record(shard, results, time.perf_counter() - t0)
    gathered: list[Any] = [None] * fabric.world_size
    dist.all_gather_object(gathered, (results, shard.manifest, record, error))
    errors = [g[3] for g in gathered if g[3]]
    if errors:
        raise InputError(None, errors[0])
    pos = {stem: i for i, stem in enumerate(shard.order)}
    merged = sorted((r for g in gathered for r in g[0]), key=lambda r: pos.get(r.stem, len(pos)))
    if fabric.global_rank == 0:
        processes = {
            "world_size": fabric.world_size,
            "num_nodes": opts.num_nodes,
            "devices": opts.devices,
            "accelerator": fabric.device.type,
            "backend": str(dist.get_backend()),
            "ranks": [g[2] for g in gathered],
        }
        base = manifest_name(opts.num_parts, opts.part_id)
        write_merged(out, base, [g[1] for g in gathered], shard.order, processes)
    fabric.barrier()  # the merged manifest is there when any rank returns
    return merged


def _threads(devices: int) -> int:
    """Torch threads per process: this machine's cores over the processes on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // devices)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not say)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def rank_record(shard: Shard, results: Sequence[PredictResult], seconds: float) -> dict[str, Any]:
    """One rank in the merged manifest's ``processes.ranks``."""
    return {
        "rank": shard.rank,
        "host": socket.gethostname(),
        "device": str(shard.device),
        "threads": shard.threads,
        "predicted": sum(1 for r in results if not r.skipped and not r.error),
        "failed": sum(1 for r in results if r.error),
        "carried": sum(1 for r in results if r.skipped),
        "seconds": round(seconds, 3),
        "peak_rss_mib": peak_rss_mib(),
    }


def merge_manifests(
    parts: Sequence[dict[str, Any] | None], order: Sequence[str], processes: dict[str, Any]
) -> dict[str, Any] | None:
    """The manifest of a multi-process run from its ranks' manifests (rank order): rank 0's models, settings and
    warnings, every rank's cases in the part's order (``order``: the stems), failures, the slowest model load,
    the carried cases of ``--continue``, and ``processes``. None when no case succeeded (no manifest is written,
    as with one process)."""
    present = [p for p in parts if p]
    pos = {stem: i for i, stem in enumerate(order)}
    cases = sorted((c for p in present for c in p["cases"]), key=lambda c: pos.get(c.get("stem"), len(pos)))
    if not cases:
        return None
    merged = {k: v for k, v in present[0].items() if k != "continued"}
    merged["started"] = min(p["started"] for p in present)
    merged["updated"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    merged["cases"] = cases
    merged["failed"] = [f for p in present for f in p["failed"]]
    loads = [p["timings"]["load_models_s"] for p in present if "load_models_s" in p.get("timings", {})]
    merged["timings"] = {**present[0].get("timings", {}), **({"load_models_s": max(loads)} if loads else {})}
    continued = [p["continued"] for p in present if p.get("continued")]
    if continued:
        merged["continued"] = {
            "from_started": min(str(c.get("from_started")) for c in continued),
            "cases_carried": sum(int(c.get("cases_carried", 0)) for c in continued),
        }
    merged["processes"] = processes
    return merged


def write_merged(
    out: Path,
    base: str,
    parts: Sequence[dict[str, Any] | None],
    order: Sequence[str],
    processes: dict[str, Any],
) -> Path | None:
    """Write the merged manifest ``out/base`` atomically (:func:`merge_manifests`), then remove the rank
    manifests of ``base`` (of this run, and any a killed run left). Returns its path, None when nothing
    succeeded (then nothing is written or removed)."""
    merged = merge_manifests(parts, order, processes)
    if merged is None:
        return None
    path = out / base
    atomic_write_text(path, json.dumps(merged, indent=1) + "\n")
    for partial in rank_manifests(out, base):
        partial.unlink(missing_ok=True)
    return path
