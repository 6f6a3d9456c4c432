"""Training the 3D nodule detector beside a 2D model: candidate cubes from a prepared cache, training
(``training.detector_module``, under Lightning), and storing its weights in the run's checkpoint
(``train_for_run``).

Prediction with it is ``inference.detector``; how its lesions join the 2D mask is ``postprocessing.detector``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from lungtumor.core.config import NoduleConfig, PrepConfig
from lungtumor.core.config_io import from_dict
from lungtumor.core.errors import InputError
from lungtumor.core.runtime import cpu_has_bf16
from lungtumor.data.msd import load_dataset
from lungtumor.imaging.io import read_volume
from lungtumor.imaging.orientation import to_canonical
from lungtumor.imaging.resample import resample
from lungtumor.inference.checkpoint import add_detector_to_checkpoint
from lungtumor.inference.detector import PATCH_HU, candidates_on_grid, extract_patches
from lungtumor.preprocessing.cache import Cache, CaseInfo
from lungtumor.preprocessing.detector_grid import hu_on_detector_grid
from lungtumor.preprocessing.frame import frame_spacing, geometry_of
from lungtumor.training.detector_module import PatchSet, train_detector


def case_patches(
    hu_iso: np.ndarray, seg_frame: np.ndarray, cfg: NoduleConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's candidate cubes: (HU float16, mask uint8, lesion label at the centre, 0 = none).

    ``hu_iso``: the case's HU on the detector's grid (``preprocessing.detector_grid``); ``seg_frame``: its
    tumour mask (z, H, W) on the prepared frame that grid spans (the cache's ``*_seg.npy``), resampled to the grid
    (linear, >= 0.5)."""

    centres = candidates_on_grid(hu_iso, cfg)
    seg = resample(np.asarray(seg_frame, dtype=np.float32), hu_iso.shape) >= 0.5
    labels, _ = ndi.label(seg, structure=np.ones((3, 3, 3), bool))
    p = cfg.patch
    cubes = extract_patches(np.clip(hu_iso, *PATCH_HU).astype(np.float16), centres, p, PATCH_HU[0])
    masks = extract_patches(seg.astype(np.uint8), centres, p, 0)
    at = labels[tuple(centres.T)] if len(centres) else np.zeros(0, np.int64)
    return cubes, masks, at.astype(np.int64)


def case_hu(image: str | Path, case: CaseInfo, prep: Mapping[str, Any], cfg: NoduleConfig) -> np.ndarray:
    """The canonical HU of a cached case's source ``image`` on the detector's grid (float32 (z', y', x')).

    ``case`` is the case's cache entry: the source must still have the shape and voxel size it had when the
    cache was prepared, or :class:`InputError`."""

    vol, _ = to_canonical(read_volume(image))
    if case.orig_shape is None or case.orig_spacing is None:
        raise InputError(image, "its cache entry has no source geometry (an older cache): run prepare again")
    shape, spacing = list(case.orig_shape), case.orig_spacing
    if list(vol.shape) != shape or not np.allclose(vol.spacing, spacing, rtol=1e-4):
        raise InputError(
            image,
            f"changed since the cache was prepared ({list(vol.shape)} voxels, not {shape}): run prepare again",
        )
    geom = geometry_of(shape, spacing, from_dict(PrepConfig, dict(prep)))
    return hu_on_detector_grid(vol.array, geom, frame_spacing(geom, spacing), cfg.spacing_mm)


def _one_case(job: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache, name, image, cfg = job
    return case_patches(case_hu(image, cache.cases[name], cache.prep, cfg), np.asarray(cache.seg(name)), cfg)


def source_images(root: Path, source: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, Path]:
    """The CT file (or DICOM folder) of each cached case ``names``, from the dataset the cache ``root`` was
    prepared from (cache.json ``source``): the detector reads the canonical HU, which the cache does not hold.
    ``lungtumor train`` calls it before training the 2D model, so that a missing dataset fails at once."""

    src = source
    path = src.get("path") if isinstance(src, dict) else None
    if not isinstance(path, str):
        raise InputError(root / "cache.json", "names no source dataset (an older cache): run prepare again")
    try:
        ds = load_dataset(path)
    except InputError as e:
        raise InputError(
            root / "cache.json",
            f"its source dataset {path} cannot be read ({e.problem}): the nodule detector reads "
            "the CTs themselves; restore the dataset or run prepare again",
        ) from None
    images = {c.name: Path(c.image) for c in ds.cases}
    missing = [n for n in names if n not in images]
    if missing:
        raise InputError(Path(path), f"has no case {missing[0]!r} of the cache {root}: run prepare again")
    return {n: images[n] for n in names}


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux a SIGKILLed parent takes its workers with it (PR_SET_PDEATHSIG), instead of
    leaving them blocked for ever writing results into a pipe that nobody reads."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def cache_patches(
    cache: Cache | str | Path, names: Sequence[str], cfg: NoduleConfig, workers: int = 2
) -> PatchSet:
    """Candidate cubes of the cached cases ``names`` (a prepared 2D cache, open or its folder: their masks; the
    CTs come from its source dataset), ``workers`` processes."""

    cache = cache if isinstance(cache, Cache) else Cache.open(cache, "2d")
    images = source_images(cache.root, cache.source, names)
    jobs = [(cache, n, str(images[n]), cfg) for n in names]
    if workers > 1 and len(jobs) > 1:  # numpy and scipy only in the workers: fork is safe
        ctx = get_context("fork")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as ex:
            parts = list(ex.map(_one_case, jobs))
    else:
        parts = [_one_case(j) for j in jobs]
    hu, seg, lesion, offset = [], [], [], 0
    for cubes, masks, at in parts:
        hu.append(cubes)
        seg.append(masks)
        lesion.append(np.where(at > 0, at + offset, -1))
        offset += int(at.max(initial=0))
    p = cfg.patch
    if not hu:
        return PatchSet(
            np.zeros((0, p, p, p), np.float16), np.zeros((0, p, p, p), np.uint8), np.zeros(0, np.int64)
        )
    return PatchSet(np.concatenate(hu), np.concatenate(seg), np.concatenate(lesion))


def train_for_run(
    cache: Any, run_dir: Path, cfg: Any, *, progress: bool = True, names: list[str] | None = None
) -> float:
    """``lungtumor train``'s last step when ``cfg.nodule.enabled``: patches from the cases ``names`` of the
    prepared 2D cache ``cache`` (``preprocessing.cache.Cache``; default: its training and validation cases),
    train, store the detector in ``run_dir/checkpoints/best.ckpt``. Returns the seconds it took.

    When no candidate lies in a tumour (or every one does) it warns on stderr and leaves best.ckpt as the
    2D model alone: failing a finished 2D training for want of nodules would help nobody."""
    t0 = time.perf_counter()
    log = print if progress else None
    names = list(cache.train) + list(cache.val) if names is None else list(names)
    patches = cache_patches(cache, names, cfg.nodule, workers=min(2, max(1, len(names))))
    if log:
        n_pos = int((patches.lesion >= 0).sum())
        log(
            f"nodule detector: {len(patches.lesion)} candidates in {len(names)} cases, {n_pos} on tumours "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    n_pos = int((patches.lesion >= 0).sum())
    if n_pos == 0 or n_pos == len(patches.lesion):
        # the 2D checkpoint stays as it is (nodule.enabled: false inside it): a complete 2D model
        print(
            f"warning: {cache.root}: no nodule detector trained: {n_pos} of {len(patches.lesion)} blob "
            "candidates lie in a tumour (too few or too small tumours, or no lungs in HU); the run is the 2D "
            "model alone",
            file=sys.stderr,
        )
        return time.perf_counter() - t0
    use_cuda = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    gpus = cfg.train.devices  # the 2D run's first GPU index (--device cuda:N: [N]), else the default GPU
    index = gpus[0] if isinstance(gpus, list) else None
    device = torch.device("cuda", index) if use_cuda else torch.device("cpu")

    auto = cfg.train.precision == "auto" and (use_cuda or cpu_has_bf16())
    bf16 = cfg.train.precision.startswith("bf16") or auto
    net = train_detector(
        patches, cfg.nodule, seed=cfg.train.seed, bf16=bf16, device=device, log=log, tb_dir=Path(run_dir)
    )
    add_detector_to_checkpoint(Path(run_dir) / "checkpoints" / "best.ckpt", net, cfg.nodule)
    return time.perf_counter() - t0
