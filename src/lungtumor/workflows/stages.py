"""The three stages of predicting one CT, and the loop that overlaps them over the cases of a run (issue 25).

Every case goes through:

1. **read** (:func:`read_case`): read the CT, reorder it to axial LPS slices (``imaging.orientation``) and,
   with the lung gate, find the lungs' air and the slices worth predicting (``imaging.lungs``);
2. **model** (:func:`model_case`): ``Predictor.predict``, the mask (and the probabilities with ``--save-prob``);
3. **write** (:func:`write_case`): postprocess, write every output in the input's own array order, measure,
   DICOM outputs, report, and the case's entry in the manifest.

:func:`run_cases` runs the model stage in the calling thread (torch's intra-op threads keep the cores busy;
the nodule detector runs beside the 2D model in a torch side thread, ``inference.workers``) and the other two
in a reader and a writer thread: while the model runs case i, case i+1 is read and case i-1 written, and
``predict`` reads its first CT while it loads the models (:class:`CaseReader`). Inside a stage, independent
steps overlap too (the input's sha256 beside the reading, measuring beside the mask's compression). NumPy,
SciPy, SimpleITK, zlib and hashlib release the GIL, so these threads run on the other core. Every step is the
serial loop's call on the same input, and torch runs with the same intra-op thread count in every thread, so
the outputs are the serial ones byte for byte (``overlap=False``; ``tests/workflows/test_stages.py``). At most
three cases are alive at once (one per stage), and a CT's voxels are freed once the model's input is made
unless the lung gate or the report reads them later: memory stays flat in the number of cases. Why:
docs/decisions/0031.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from lungtumor.core.errors import InputError
from lungtumor.core.progress import tqdm
from lungtumor.evaluation.measure import measure_lesions, write_lesions
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.imaging.lungs import lung_air_hu, lung_z_range
from lungtumor.imaging.orientation import Reorient, from_canonical, stored_order_note, to_canonical
from lungtumor.imaging.volume import Volume
from lungtumor.postprocessing.filters import postprocess_mask
from lungtumor.report.writer import write_all
from lungtumor.workflows.manifest import PredictManifest, input_digests
from lungtumor.workflows.outputs import RunInfo


@dataclass
class PredictResult:
    """What happened to one input."""

    case: str
    source: Path
    mask_path: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    n_lesions: int = 0
    tumour_ml: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (read, predict, ...)
    stem: str | None = None  # the outputs' file-name stem
    skipped: bool = False  # finished by an earlier run (--continue): outputs and numbers from its manifest

    def summary_line(self) -> str:
        """One human-readable line."""
        if self.error:
            return f"FAILED {self.case}: {self.error}"
        shown = self.mask_path or next((f for f in self.outputs if f.suffix == ".dcm"), None)
        if self.skipped:
            return (
                f"{self.case}: finished before, skipped (--continue): {self.n_lesions} lesion(s), "
                f"{self.tumour_ml:.2f} mL -> {shown}"
            )
        return (
            f"{self.case}: {self.n_lesions} lesion(s), {self.tumour_ml:.2f} mL -> {shown} "
            f"({self.seconds:.1f} s)"
        )


@dataclass
class Settings:
    """The inference settings of one predict call: the options where given, else the first checkpoint's."""

    threshold: float
    min_mm3: float
    z_ratio: float
    lung_gate: bool
    tta: bool
    precision: str


class CaseOptions(Protocol):
    """What the stages read of ``workflows.predict.PredictOptions``."""

    postprocess: bool
    save_prob: bool
    measure: bool
    report: bool


class MaskPredictor(Protocol):
    """``inference.predictor.Predictor``: its ``predict``."""

    def predict(
        self,
        vol: Volume,
        *,
        threshold: float,
        keep_prob: bool = ...,
        z_range: tuple[int, int] | None = ...,
        prepared: Callable[[], None] | None = ...,
    ) -> tuple[np.ndarray | None, np.ndarray]: ...


@dataclass
class RunContext:
    """What every case of a run shares: the predictor and settings, where outputs go, and the manifest."""

    predictor: MaskPredictor
    settings: Settings
    opts: CaseOptions
    out: Path
    run_dir: Path | None  # loss curves for reports
    info: RunInfo
    manifest: PredictManifest


@dataclass
class CaseWork:
    """One case between its stages: the stored and canonical CT, the lungs' air, the mask."""

    res: PredictResult
    stored: Volume | None = None
    vol: Volume | None = None  # canonical: axial slices in LPS order
    ro: Reorient | None = None  # undoes the canonical reordering
    air: tuple[np.ndarray, int] | None = None  # imaging.lungs.lung_air_hu of vol, with the lung gate
    z_range: tuple[int, int] | None = None  # the slices the 2D model predicts
    prob: np.ndarray | None = None  # float32 (z, y, x), canonical, only with --save-prob
    mask: np.ndarray | None = None  # uint8 (z, y, x), canonical, before postprocessing
    input_sha256: dict[str, str] | None = None  # workflows.manifest.input_digests of the input

    def drop_voxels(self) -> None:
        """Free the CT's voxels, keeping its geometry (what the masks are written and measured on): the stored
        and canonical volumes keep their shape and dtype as a read-only view of one zero."""
        for v in (self.stored, self.vol):
            if v is not None:
                v.array = np.broadcast_to(np.zeros((), v.array.dtype), v.array.shape)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the seconds of the block to ``res.timings[name]`` (the manifest's per-step timings)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.res.timings[name] = self.res.timings.get(name, 0.0) + time.perf_counter() - t0


def _failed(work: CaseWork, run: Callable[[], None]) -> None:
    """Run one stage of ``work``; a failure is recorded in its result (one line), never raised."""
    src = work.res.source
    try:
        run()
    except InputError as e:
        work.res.error = str(e)
    except MemoryError:
        work.res.error = f"{src}: out of memory"
    except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
        work.res.error = f"{src}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@dataclass
class ReadCT:
    """A CT as read: the stored volume, its canonical view and the reordering between them, its sha256s."""

    stored: Volume
    vol: Volume  # canonical: axial slices in LPS order
    ro: Reorient
    input_sha256: dict[str, str]  # workflows.manifest.input_digests
    seconds: float


def read_ct(source: Path) -> ReadCT:
    """Read a CT (a file or a DICOM folder) and reorder it to axial LPS slices; its sha256 beside the reading.

    Raises:
        InputError: the CT cannot be read (``imaging.io.read_volume``).
    """
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="lt-hash") as side:
        digests = side.submit(input_digests, source)  # for the manifest (hashlib and zlib: no GIL)
        stored = read_volume(source)
        vol, ro = to_canonical(stored)  # outputs go back as stored
        return ReadCT(stored, vol, ro, digests.result(), time.perf_counter() - t0)


class CaseReader:
    """Reads CTs in a thread of its own: the read stage of :func:`run_cases`, and a CT read ahead, so that
    ``predict`` reads its first CT while it loads the models."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lt-read")
        self._ahead: dict[Path, Future[ReadCT]] = {}

    def prefetch(self, source: Path) -> None:
        """Start reading ``source`` now; :meth:`read` of it then takes the result."""
        self._ahead[Path(source)] = self.pool.submit(read_ct, Path(source))

    def read(self, source: Path) -> ReadCT:
        """``source`` read: read ahead, or now in this thread. In the reader's own thread a CT read ahead is
        always finished (one thread takes the work in order, and it was submitted first)."""
        ahead = self._ahead.pop(Path(source), None)
        return ahead.result() if ahead is not None else read_ct(Path(source))

    def close(self) -> None:
        """Wait for the read under way; drop the reads not started."""
        self._ahead.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


def read_case(work: CaseWork, ctx: RunContext, reader: CaseReader | None = None) -> CaseWork:
    """Stage 1: the CT, canonical, and with the lung gate the lungs' air and slices; errors go to the result.
    ``reader``: takes the CT when it was read ahead."""

    def run() -> None:
        ct = reader.read(work.res.source) if reader is not None else read_ct(work.res.source)
        work.stored, work.vol, work.ro, work.input_sha256 = ct.stored, ct.vol, ct.ro, ct.input_sha256
        work.res.timings["read"] = ct.seconds
        s = ctx.settings
        if ctx.opts.postprocess and s.lung_gate:  # the gate's lung air, and the slices worth predicting
            with work.step("lungs"):
                work.air = lung_air_hu(work.vol.array, work.vol.spacing)
                work.z_range = lung_z_range(work.vol.array, work.vol.spacing, air=work.air)

    _failed(work, run)
    return work


def model_case(work: CaseWork, ctx: RunContext) -> CaseWork:
    """Stage 2 (torch, in the calling thread): the mask, and the probabilities with ``--save-prob``.

    Without ``--save-prob`` the float32 map on the input grid (the largest array) is never made; with the lung
    gate only the lungs' slices are predicted (the gate drops what lies away from them)."""

    def run() -> None:
        assert work.vol is not None
        # the CT's voxels are freed once the model's input is made, unless the lung gate or report reads them
        later = (ctx.opts.postprocess and ctx.settings.lung_gate) or ctx.opts.report
        with work.step("predict"):
            work.prob, work.mask = ctx.predictor.predict(
                work.vol, threshold=ctx.settings.threshold, keep_prob=ctx.opts.save_prob, z_range=work.z_range,
                prepared=None if later else work.drop_voxels,
            )  # fmt: skip

    if work.res.error is None:
        _failed(work, run)
    return work


def _write_outputs(work: CaseWork, ctx: RunContext) -> None:
    """The outputs of a predicted case, each written atomically; their paths go to ``work.res.outputs``."""
    res, s, opts, info, out, stem = work.res, ctx.settings, ctx.opts, ctx.info, ctx.out, work.res.stem
    vol, stored, ro, mask = work.vol, work.stored, work.ro, work.mask
    assert vol is not None and stored is not None and ro is not None and mask is not None
    if work.prob is not None:
        with work.step("write"):
            res.outputs.append(
                write_volume(from_canonical(work.prob, stored, ro), out / f"{stem}_prob.nii.gz")
            )
        work.prob = None  # free it before postprocessing allocates
    if opts.postprocess:
        with work.step("postprocess"):
            mask = postprocess_mask(
                mask, vol, min_lesion_mm3=s.min_mm3, lung_gate=s.lung_gate, min_z_extent_ratio=s.z_ratio,
                lung_air=work.air,
            )  # fmt: skip
    work.mask, work.air = None, None
    mask_vol = vol.with_array(mask)  # canonical: measured and shown as axial slices
    res.tumour_ml = float(mask.sum()) * vol.voxel_volume_mm3 / 1000.0
    with work.step("write"), ThreadPoolExecutor(1, thread_name_prefix="lt-mask") as side:
        stored_mask = from_canonical(mask, stored, ro)
        # the mask file (zlib, SimpleITK: no GIL) is written beside the measuring (NumPy, SciPy)
        nifti = (
            side.submit(write_volume, stored_mask, out / f"{stem}_tumour.nii.gz")
            if "nifti" in info.types
            else None
        )
        lesions = None
        try:
            if opts.measure or opts.report or info.dicom_writer:
                lesions = measure_lesions(mask_vol)
                res.n_lesions = len(lesions)
        finally:
            if nifti is not None:
                res.mask_path = nifti.result()
                res.outputs.append(res.mask_path)
        if opts.measure and lesions is not None:
            res.outputs.extend(write_lesions(lesions, stem, out))
        if info.dicom_writer:  # SEG / RTSTRUCT / SR referencing the source series (a DICOM folder)
            res.outputs.extend(
                info.dicom_writer(
                    res.source, stored_mask, lesions, out, stem, info.types, info.parameters, info.description
                )
            )
    if opts.report:
        with work.step("report"):
            meta = {**stored_order_note(stored, ro), **info.meta}
            res.outputs.extend(
                write_all(
                    vol, mask_vol, out, res.case, lesions=lesions, run_dir=ctx.run_dir, meta=meta,
                    warnings=info.warnings, stem=stem,
                )
            )  # fmt: skip


def write_case(work: CaseWork, ctx: RunContext) -> PredictResult:
    """Stage 3: the outputs (or, for a failed case, none: a half-written case's files are removed), then the
    case's manifest entry. Returns the finished result."""
    res = work.res
    if res.error is None:
        _failed(work, lambda: _write_outputs(work, ctx))
    work.stored = work.vol = work.prob = work.mask = work.air = None
    if res.error:  # a failed case leaves no outputs behind (none of them looks complete)
        for f in res.outputs:
            with contextlib.suppress(OSError):
                f.unlink()
        res.outputs, res.mask_path = [], None
    res.seconds = sum(res.timings.values())  # its own work: with overlap, cases' seconds overlap in time
    ctx.manifest.add_case(res, ctx.out, work.input_sha256)
    release_free_memory()
    return res


def release_free_memory() -> None:
    """Give the memory the allocator holds free back to the system (glibc's ``malloc_trim``; a no-op where
    there is none). Each thread of the stages allocates from an arena of its own, which keeps what it frees:
    without this a process's peak RSS crept up over many cases (+96 MiB from 10 to 50 small phantoms against
    +22 MiB before the stages overlapped, ``benchmarks/batch_predict.py``; decision 0031)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """libc's ``malloc_trim``, or None where there is none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def predict_case(res: PredictResult, ctx: RunContext, reader: CaseReader | None = None) -> PredictResult:
    """One case through the three stages in turn (the serial loop's unit)."""
    work = CaseWork(res)
    return write_case(model_case(read_case(work, ctx, reader), ctx), ctx)


def run_cases(
    todo: Sequence[PredictResult],
    ctx: RunContext,
    *,
    overlap: bool = True,
    progress: bool = False,
    reader: CaseReader | None = None,
) -> list[PredictResult]:
    """Predict the cases ``todo`` (fresh results: case, source, stem); returns them finished, in order.

    ``overlap``: read case i+1 and write case i-1 while the model runs case i (a reader and a writer thread);
    False: one case after the other. The outputs are the same, and each case's manifest entry is written as it
    is finished, in order. An exception that is no case's error (a KeyboardInterrupt) stops the run once the
    stages under way have finished, so the manifest lists exactly the finished cases. ``reader``: the one
    that read ahead (``CaseReader.prefetch``); closed here.
    """
    reader = reader or CaseReader()
    finished: list[PredictResult] = []
    with tqdm(total=len(todo), desc="predict", unit="case", disable=not progress) as bar:

        def done(res: PredictResult) -> None:
            finished.append(res)
            bar.update()

        try:
            if overlap:
                _overlapped(todo, ctx, done, reader)
            else:
                for res in todo:
                    done(predict_case(res, ctx, reader))
                    gc.collect()  # the float32 and label arrays of a case: freed before the next one is read
        finally:
            reader.close()
    return finished


def _overlapped(
    todo: Sequence[PredictResult], ctx: RunContext, done: Callable[[PredictResult], None], reader: CaseReader
) -> None:
    """:func:`run_cases` with a reader and a writer thread; at most one case per stage is alive."""
    writer = ThreadPoolExecutor(1, thread_name_prefix="lt-write")
    writing: Future[PredictResult] | None = None

    def read(k: int) -> Future[CaseWork] | None:
        return reader.pool.submit(read_case, CaseWork(todo[k]), ctx, reader) if k < len(todo) else None

    try:
        reading = read(0)
        for k in range(len(todo)):
            assert reading is not None
            work = reading.result()
            reading = read(k + 1)
            model_case(work, ctx)
            if writing is not None:  # case k-1 is finished before case k is handed on: cases finish in order
                done(writing.result())
            writing = writer.submit(write_case, work, ctx)
            del work
            gc.collect()
        if writing is not None:
            done(writing.result())
    finally:  # also on an interruption: the stages under way finish (atomic outputs, manifest), no more start
        reader.close()
        writer.shutdown(wait=True, cancel_futures=True)
