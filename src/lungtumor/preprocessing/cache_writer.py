"""Writing the 2D cache's cases: the per-case writer and the forked processes that share its work.

:class:`Writer` reads a case once (seg file, its share of the statistics, the input voxels held in memory or
spilled to disk), then writes the model input when the statistics are known; :class:`Team` runs it in forked
helper processes. :func:`lungtumor.preprocessing.prepare.prepare_dataset` drives both. Also the small atomic .npy helpers
that the 3D cache (``prepare3d``) shares.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.core.config import PrepConfig
from lungtumor.core.config_io import to_dict
from lungtumor.core.errors import InputError, atomic_path
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.imaging.orientation import canonical_pair
from lungtumor.preprocessing.frame import (
    CHUNK,
    PrepGeometry,
    Slices,
    geometry,
    mask_into,
    normalise,
    prepared_blob,
)

_STATE_VERSION = 3  # per-case state format (2: the spill file holds the input voxels; 3: canonical LPS order)
_PARALLEL_MIN_BYTES = 16 << 20  # source files (as stored) below which one process beats forking helpers
_MAX_WORKERS = 4


# ----------------------------------------------------------------------------- files


def fingerprint(p: Path) -> list[Any]:
    """Cheap identity of a source file or DICOM folder: path, total size, newest mtime."""
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        st = [q.stat() for q in files]
        return [str(p), sum(s.st_size for s in st), max((s.st_mtime_ns for s in st), default=0), len(files)]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def npy_ok(path: Path, shape: tuple[int, ...], dtype: str) -> bool:
    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return tuple(a.shape) == tuple(shape) and a.dtype == np.dtype(dtype)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save atomically (temp name, then rename)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    except OSError as e:
        raise InputError(path, f"cannot write ({e.strerror or e})") from None


def _save_npy_chunks(path: Path, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray]) -> None:
    """Write an .npy file from C-ordered chunks along its first axis, atomically (the bytes of np.save)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(v) for v in shape),
    }
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for c in chunks:
                f.write(memoryview(np.ascontiguousarray(c)).cast("B"))
    except OSError as e:
        raise InputError(path, f"cannot write ({e.strerror or e})") from None


def to_float16(a: np.ndarray) -> np.ndarray:
    """float32 → float16 (round to nearest even, like numpy's astype, but vectorised in torch)."""

    return torch.from_numpy(a).to(torch.float16).numpy()


# ----------------------------------------------------------------------------- the writer


def _fixed_stats(prep: PrepConfig) -> dict[str, float] | None:
    """The normalisation when it does not depend on the data (``divide``), else None."""
    return {"mean": 0.0, "std": float(prep.hu_divisor)} if prep.norm == "divide" else None


class Writer:
    """Writes the cases of one cache folder; per-case state lives in ``OUT/.state/<name>.json``.

    A case is read once (:meth:`first_pass`: seg file, statistics, the input voxels held in memory or
    spilled to ``.state``), then written as model input when the statistics are known (:meth:`finish`).
    When the normalisation does not depend on the data (``divide``) the first pass finishes the case.
    """

    def __init__(self, out: Path, prep: PrepConfig, memory_budget: int) -> None:
        self.out, self.prep = out, prep
        self.prep_dict = to_dict(prep)
        self.fixed = _fixed_stats(prep)
        self.cases_dir = out / "cases"
        self.state_dir = out / ".state"
        self.memory: dict[str, np.ndarray] = {}
        self.memory_left = memory_budget
        self.n_read = 0
        self.seg_buf = np.empty(0, np.uint8)

    def img(self, name: str) -> Path:
        return self.cases_dir / f"{name}_img.npy"

    def blob(self, name: str) -> Path:
        return self.cases_dir / f"{name}_blob.npy"

    def seg(self, name: str) -> Path:
        return self.cases_dir / f"{name}_seg.npy"

    def spill(self, name: str) -> Path:
        return self.state_dir / f"{name}_raw.npy"

    def state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def load_state(self, case) -> dict[str, Any] | None:
        """The saved state of ``case`` when it matches the sources, the recipe and the seg file."""
        try:
            st = json.loads(self.state_path(case.name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        fp = [fingerprint(case.image), fingerprint(case.label)]
        if (
            not isinstance(st, dict)
            or st.get("v") != _STATE_VERSION
            or st.get("fingerprint") != json.loads(json.dumps(fp))
            or st.get("prep") != self.prep_dict
        ):
            return None
        if not npy_ok(self.seg(case.name), st["entry"]["prepared_shape"], "uint8"):
            return None
        return st

    def save_state(self, name: str, st: dict[str, Any]) -> None:
        try:
            with atomic_path(self.state_path(name)) as tmp:
                tmp.write_text(json.dumps(st), encoding="utf-8")  # no fsync: cheap, still atomic
        except OSError as e:
            raise InputError(self.state_path(name), f"cannot write ({e.strerror or e})") from None

    def read_case(self, case, stats_pass: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """Read one case; write its seg; return (input voxels (z, y, x), state)."""
        vol = read_volume(case.image)
        vol, mask = canonical_pair(vol, read_mask(case.label, reference=vol))  # axial slices, LPS order
        self.n_read += 1
        geom = geometry(vol, self.prep)
        acc = [0, 0.0, 0.0]
        if stats_pass and self.fixed is None:
            Slices(vol.array, self.prep, geom).accumulate(acc)
        # into a buffer reused across cases: writing freshly allocated pages costs more than the write
        n = int(np.prod((geom.orig_shape[0], *geom.size)))
        if self.seg_buf.size < n:
            self.seg_buf = np.empty(n, np.uint8)
        seg = self.seg_buf[:n].reshape(geom.orig_shape[0], *geom.size)
        seg.fill(0)
        mask_into(mask.array, geom, seg)
        self.seg(case.name).parent.mkdir(exist_ok=True)
        save_npy(self.seg(case.name), seg)
        entry = {
            "name": case.name,
            "n_slices": int(geom.orig_shape[0]),
            "prepared_shape": [int(geom.orig_shape[0]), *(int(v) for v in geom.size)],
            "orig_shape": [int(v) for v in vol.shape],
            "orig_spacing": [float(v) for v in vol.spacing],
            "tumour_slices": [int(i) for i in np.flatnonzero(seg.reshape(seg.shape[0], -1).any(axis=1))],
            "tumour_ml": float(np.count_nonzero(mask.array)) * vol.voxel_volume_mm3 / 1000.0,
        }
        st = {
            "v": _STATE_VERSION,
            "fingerprint": [fingerprint(case.image), fingerprint(case.label)],
            "prep": self.prep_dict,
            "geometry": geom.to_dict(),
            "entry": entry,
            "partial": acc,
            "final": None,
        }
        return vol.array, st

    def first_pass(self, case) -> dict[str, Any]:
        """Read ``case``, write its seg and state; hold its voxels (or, with fixed statistics, finish it)."""
        raw, st = self.read_case(case)
        if self.fixed is not None:
            self.write_img(case.name, raw, st, self.fixed)
            st["final"] = self.fixed
        else:
            self.keep(case.name, raw)
        self.save_state(case.name, st)
        return st

    def finish(self, case, st: dict[str, Any], stats: dict[str, float]) -> dict[str, Any]:
        """Write the model input of ``case`` with ``stats``; returns the updated state."""
        self.write_img(case.name, self.take(case), st, stats)
        st["final"] = stats
        self.save_state(case.name, st)
        with contextlib.suppress(FileNotFoundError):
            self.spill(case.name).unlink()
        return st

    def write_img(self, name: str, raw: np.ndarray, st: dict[str, Any], stats: Mapping[str, float]) -> None:
        """Preprocess ``raw`` chunk by chunk (the steps and values of :func:`preprocess_volume`) into
        ``<name>_img.npy`` as float16, with reused buffers and without holding the whole result."""

        geom = PrepGeometry.from_dict(st["geometry"])
        z = geom.orig_shape[0]
        if tuple(raw.shape) != tuple(geom.orig_shape):
            raise ValueError(f"{name}: held voxels {raw.shape} differ from {geom.orig_shape}")
        s = Slices(raw, self.prep, geom)
        if self.prep.blob:  # written before the image, so a complete image implies a complete blob map
            save_npy(self.blob(name), prepared_blob(s.whole(), geom, st["entry"]["orig_spacing"]))
        f32 = np.empty((min(CHUNK, z), *geom.size), np.float32)
        f16 = np.empty(f32.shape, np.float16)

        def chunks():
            for _, part in s.chunks():
                n = part.shape[0]
                x = normalise(np.copyto(f32[:n], part) or f32[:n], self.prep, stats)
                torch.from_numpy(f16[:n]).copy_(torch.from_numpy(x))  # as to_float16
                yield f16[:n]

        _save_npy_chunks(self.img(name), (z, *geom.size), np.float16, chunks())

    def keep(self, name: str, raw: np.ndarray) -> None:
        """Hold the input voxels until the statistics are known: in memory, or spilled to disk."""
        if raw.nbytes <= self.memory_left:
            self.memory[name] = raw
            self.memory_left -= raw.nbytes
        else:
            save_npy(self.spill(name), raw)

    def take(self, case) -> np.ndarray:
        """The input voxels of ``case`` (from memory, the spill file, or by reading the case again)."""
        if case.name in self.memory:
            raw = self.memory.pop(case.name)
            self.memory_left += raw.nbytes
            return raw
        if self.spill(case.name).exists():
            try:
                return np.load(self.spill(case.name))
            except (OSError, ValueError):
                pass
        return self.read_case(case, stats_pass=False)[0]


# ----------------------------------------------------------------------------- parallel helpers


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def n_workers(workers: int | None, todo: list) -> int:
    """Processes for the read pass: ``workers``, or (None) one per CPU up to 4 when there is enough to read.

    Extra processes are forked (Linux only): a fork costs milliseconds, a fresh interpreter seconds.
    """
    if workers is None:
        size = sum(fingerprint(p)[1] for c in todo for p in (c.image, c.label))
        workers = 1 if size < _PARALLEL_MIN_BYTES else min(_cpus(), _MAX_WORKERS)
    n = max(1, min(int(workers), len(todo)))
    if n > 1 and not (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()):
        return 1
    return n


class Counter:
    """Hands out case indices 0..n-1 once each, across forked processes."""

    def __init__(self, n: int, shared: bool) -> None:
        self.n = n
        self.value = mp.get_context("fork").Value("q", 0) if shared else None
        self.local = 0

    def next(self) -> int | None:
        if self.value is None:
            k, self.local = self.local, self.local + 1
        else:
            with self.value.get_lock():
                k = self.value.value
                self.value.value = k + 1
        return k if k < self.n else None


def _helper(w: Writer, todo: list, counter: Counter, conn) -> None:
    """A forked worker: the read pass on the cases it claims, then :meth:`Writer.finish` on those and on
    the cases it is sent. Reports every state, and any error, through ``conn``; never raises."""

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds, so temporary files are removed
    signal.signal(signal.SIGINT, lambda *_: sys.exit(1))  # Ctrl-C: the parent reports it
    try:
        torch.set_num_threads(1)  # one thread per process; keeps OpenMP out of the forked child
        held = []
        while (k := counter.next()) is not None:
            st = w.first_pass(todo[k])
            if st["final"] is None:
                held.append((todo[k], st))
            conn.send(("state", todo[k].name, st))
        conn.send(("read", None))
        msg = conn.recv()
        if msg[0] == "finish":
            for case, st in held + msg[2]:
                conn.send(("state", case.name, w.finish(case, st, msg[1])))
        conn.send(("done", w.n_read))
    except InputError as e:
        _send_quietly(conn, ("error", e.where, e.problem))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        _send_quietly(conn, ("crash", traceback.format_exc()))


def _send_quietly(conn, msg: tuple) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.send(msg)


class Team:
    """``n - 1`` forked helper processes that share the read pass, then the writing, with this one."""

    def __init__(self, w: Writer, todo: list, n: int) -> None:
        ctx = mp.get_context("fork")
        self.w, self.counter = w, Counter(len(todo), shared=True)
        self.procs: list = []
        self.conns: list = []
        self.seen: list[set[str]] = []  # kinds of message received from each helper
        self.n_read = 0
        try:
            for _ in range(n - 1):
                a, b = ctx.Pipe()
                p = ctx.Process(target=_helper, args=(w, todo, self.counter, b), daemon=True)
                p.start()
                b.close()
                self.procs.append(p)
                self.conns.append(a)
                self.seen.append(set())
        except BaseException:
            self.close(abort=True)
            raise

    def _recv(self, i: int) -> tuple:
        try:
            msg = self.conns[i].recv()
        except (EOFError, OSError):
            self.procs[i].join(timeout=5)
            code = self.procs[i].exitcode
            raise RuntimeError(f"prepare: a worker process ended unexpectedly (exit code {code})") from None
        if msg[0] == "error":
            raise InputError(msg[1], msg[2])
        if msg[0] == "crash":
            raise RuntimeError(f"prepare: a worker process failed:\n{msg[1]}")
        if msg[0] == "done":
            self.n_read += msg[1]
        self.seen[i].add(msg[0])
        return msg

    def poll(self, states: dict[str, Any], on_state) -> None:
        """Take the states that have arrived, without waiting."""
        for i, c in enumerate(self.conns):
            while "done" not in self.seen[i] and c.poll():
                msg = self._recv(i)
                if msg[0] == "state":
                    states[msg[1]] = msg[2]
                    on_state()

    def wait(self, until: str, states: dict[str, Any], on_state) -> None:
        """Take states until every helper has sent ``until`` ("read": read pass over, or "done")."""
        for i in range(len(self.conns)):
            while until not in self.seen[i]:
                msg = self._recv(i)
                if msg[0] == "state":
                    states[msg[1]] = msg[2]
                    on_state()

    def finish(self, stats: dict[str, float], extra: list[list]) -> None:
        """Start the writing pass: each helper writes the cases it holds, and those in its ``extra``."""
        for c, e in zip(self.conns, extra, strict=True):
            c.send(("finish", stats, e))

    def close(self, abort: bool) -> None:
        """Wait for the helpers (``abort``: stop them first) and remove anything they left half-written."""
        for p in self.procs:
            if abort and p.is_alive():
                p.terminate()
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
            for d in (self.w.cases_dir, self.w.state_dir):
                for f in d.glob(f".tmp-{p.pid}-*"):
                    with contextlib.suppress(OSError):
                        f.unlink()
        for c in self.conns:
            c.close()
