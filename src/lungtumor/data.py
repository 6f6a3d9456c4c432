"""Reading a prepared cache (see docs/design.md) and turning it into training batches.

Slices of all cases are indexed globally (cases concatenated along z). A batch is a list of global slice
indices drawn by :class:`EpochBatchSampler`; the 2.5D input of slice z stacks slices z-k..z+k of the same
case, edge slices replicated, or, with ``train.context_mm`` > 0, the slices at z + j * context_mm mm
(j = -k..k), linearly interpolated between the two nearest slices, so that the context covers the same
distance whatever the slice thickness. Two data paths give identical batches:

* resident: every case in one (Z, H, W) float16 tensor on the training device (GPU when it fits);
  the DataLoader only yields index tensors and :meth:`ResidentSlices.gather` builds the batch there.
* host: :class:`SliceDataset` reads memory-mapped ``.npy`` arrays per sample (a plain DataLoader).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lungtumor.errors import InputError


@dataclass
class CaseInfo:
    """One prepared case: name, number of slices, (H, W), indices of slices with tumour, slice spacing (mm)."""

    name: str
    n_slices: int
    shape_hw: tuple[int, int]
    tumour_slices: list[int]
    dz_mm: float = 0.0


@dataclass
class PreparedCache:
    """A prepared cache folder: ``cache.json``, ``splits.json`` and ``cases/<name>_{img,seg}.npy``."""

    root: Path
    prep: dict[str, Any]
    stats: dict[str, float]
    cases: dict[str, CaseInfo]
    train: list[str]
    val: list[str]
    _mmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike) -> PreparedCache:
        """Read and check the index files. Raises InputError naming the file and the problem."""
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "cache folder not found (write one with `lungtumor prepare`)")
        meta = _read_json(root / "cache.json")
        splits = _read_json(root / "splits.json")
        if meta.get("version") != 1:
            raise InputError(
                root / "cache.json", f"unsupported cache version {meta.get('version')!r} (expected 1)"
            )
        if meta.get("complete") is not True:
            raise InputError(
                root / "cache.json", "cache is incomplete; rerun `lungtumor prepare` to finish it"
            )
        try:
            cases = {}
            for c in meta["cases"]:
                z, h, w = (int(v) for v in c["prepared_shape"])
                dz = float(c.get("orig_spacing", [0.0, 0.0, 0.0])[2])
                cases[c["name"]] = CaseInfo(
                    c["name"], int(c["n_slices"]), (h, w), [int(s) for s in c["tumour_slices"]], dz
                )
            prep, stats = dict(meta["prep"]), {k: float(v) for k, v in meta["stats"].items()}
            train, val = list(splits["train"]), list(splits["val"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                root / "cache.json", f"malformed cache index ({type(e).__name__}: {e})"
            ) from None
        missing = [n for n in train + val if n not in cases]
        if missing:
            raise InputError(root / "splits.json", f"case {missing[0]!r} is not in cache.json")
        if not train:
            raise InputError(root / "splits.json", "no training cases")
        if not val:
            raise InputError(
                root / "splits.json", "no validation cases (per-patient validation needs at least one)"
            )
        sizes = {c.shape_hw for c in cases.values()}
        if len(sizes) != 1:
            raise InputError(root / "cache.json", f"cases have different slice sizes {sorted(sizes)}")
        kinds = ("img", "seg", "blob") if prep.get("blob") else ("img", "seg")
        for n in train + val:
            for kind in kinds:
                if not (root / "cases" / f"{n}_{kind}.npy").is_file():
                    raise InputError(root / "cases" / f"{n}_{kind}.npy", "missing; rerun `lungtumor prepare`")
        return cls(root, prep, stats, cases, train, val)

    @property
    def shape_hw(self) -> tuple[int, int]:
        """(H, W) of every prepared slice, pixels."""
        return next(iter(self.cases.values())).shape_hw

    def _array(self, name: str, kind: str) -> np.ndarray:
        key = f"{name}_{kind}"
        if key not in self._mmaps:
            path = self.root / "cases" / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(path, f"cannot read array ({e})") from None
            info = self.cases[name]
            if arr.shape != (info.n_slices, *info.shape_hw):
                raise InputError(
                    path, f"shape {arr.shape} differs from cache.json {(info.n_slices, *info.shape_hw)}"
                )
            self._mmaps[key] = arr
        return self._mmaps[key]

    def image(self, name: str) -> np.ndarray:
        """Memory-mapped float16 (z, H, W) normalised CT of case ``name``."""
        return self._array(name, "img")

    def seg(self, name: str) -> np.ndarray:
        """Memory-mapped uint8 (z, H, W) tumour mask of case ``name``."""
        return self._array(name, "seg")

    @property
    def has_blob(self) -> bool:
        """Whether the recipe adds the blobness channel (``prep.blob``; see blobness.py)."""
        return bool(self.prep.get("blob", False))

    def blob(self, name: str) -> np.ndarray:
        """Memory-mapped float16 (z, H, W) blobness channel of case ``name`` (only when :attr:`has_blob`)."""
        return self._array(name, "blob")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "not found; is this a cache written by `lungtumor prepare`?") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


class SliceTable:
    """Global slice index over ``names`` (cases concatenated along z).

    Attributes:
        starts: (n_cases + 1,) int64 offsets; case i holds global slices starts[i]..starts[i+1]-1.
        case_of: (N,) int64 case number of each global slice.
        tumour: (N,) bool, slice contains tumour.
    """

    def __init__(self, cache: PreparedCache, names: Sequence[str]) -> None:
        self.names = list(names)
        counts = [cache.cases[n].n_slices for n in self.names]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.case_of = np.repeat(np.arange(len(self.names)), counts).astype(np.int64)
        self.tumour = np.zeros(int(self.starts[-1]), dtype=bool)
        for i, n in enumerate(self.names):
            ts = [t for t in cache.cases[n].tumour_slices if 0 <= t < counts[i]]
            self.tumour[self.starts[i] + np.asarray(ts, dtype=np.int64)] = True

    def __len__(self) -> int:
        return int(self.starts[-1])

    def slices_of(self, names: Sequence[str]) -> np.ndarray:
        """Global indices (int64) of every slice of the given cases."""
        pos = {n: i for i, n in enumerate(self.names)}
        return np.concatenate([np.arange(self.starts[pos[n]], self.starts[pos[n] + 1]) for n in names])

    def steps(self, cache: PreparedCache, context_mm: float) -> np.ndarray:
        """(n_cases,) float64 context step of each case in slices: context_mm / its slice spacing, or 1."""
        return np.asarray(
            [context_step(context_mm, cache.cases[n].dz_mm) for n in self.names], dtype=np.float64
        )


def context_step(context_mm: float, dz_mm: float) -> float:
    """Slices between context channels: ``context_mm / dz_mm`` when both are > 0, else 1 (adjacent slices)."""
    return float(context_mm) / float(dz_mm) if context_mm > 0 and dz_mm > 0 else 1.0


def context_index(
    z: torch.Tensor, k: int, step: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the 2k+1 context channels of slices ``z`` lie, for linear interpolation along z.

    Args:
        z: (B,) int64 slice indices; step: (B,) float slices per channel; lo, hi: (B,) int64 first and
            last slice of each sample's case (positions outside are clamped: edges replicated).

    Returns:
        (i0, i1, w): (B, 2k+1) int64, int64, float32; channel = (1 - w) * slice[i0] + w * slice[i1].
        With integer steps every ``w`` is 0 and i0 is exactly z + j * step.
    """
    off = torch.arange(-k, k + 1, device=z.device, dtype=torch.float64)[None] * step.double()[:, None]
    f = torch.floor(off)
    w = off - f
    i0 = z[:, None] + f.long()
    lo, hi = lo[:, None].expand_as(i0), hi[:, None].expand_as(i0)
    edge = (i0 < lo) | (i0 >= hi)
    i0 = torch.minimum(torch.maximum(i0, lo), hi)
    w = torch.where(edge, torch.zeros_like(w), w)
    return i0, torch.minimum(i0 + 1, hi), w.float()


def interp_slices(vol: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """vol (Z, H, W) and (B, C) indices/weights from :func:`context_index` -> (B, C, H, W) in vol's dtype."""
    if not bool((w > 0).any()):
        return vol[i0]
    a = vol[i0].float()
    return torch.lerp(a, vol[i1].float(), w[:, :, None, None]).to(vol.dtype)


def append_blob(x: torch.Tensor, blob: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) context slices of slices ``z`` -> (B, C + 1, H, W) with their blobness channel
    ``blob[z]`` (blob (Z, H, W), cast to x's dtype) appended; x unchanged when ``blob`` is None."""
    return x if blob is None else torch.cat([x, blob[z][:, None].to(x.dtype)], 1)


def stack_context(vol: torch.Tensor, z: torch.Tensor, k: int, step: float = 1.0) -> torch.Tensor:
    """The 2k+1 context slices of slices ``z`` of one case as channels: vol (Z, H, W), z (B,) ->
    (B, 2k+1, H, W). ``step`` = slices between channels (1: z-k..z+k; fractional: interpolated); edges
    replicated."""
    b = z.shape[0]
    zero = torch.zeros(b, dtype=torch.int64, device=z.device)
    i0, i1, w = context_index(
        z,
        k,
        torch.full((b,), float(step), device=z.device, dtype=torch.float64),
        zero,
        zero + vol.shape[0] - 1,
    )
    return interp_slices(vol, i0, i1, w)


def oversample_weights(tumour: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-slice sampling weights: tumour slices weigh ``ratio`` = non-tumour / tumour slices, others 1.

    In expectation half of the sampled slices then contain tumour. Returns (weights float64 (N,), ratio);
    ratio is 1.0 when there are no tumour slices.
    """
    n_t = int(tumour.sum())
    n_n = int(tumour.size - n_t)
    ratio = n_n / n_t if n_t and n_n else 1.0
    return np.where(tumour, ratio, 1.0).astype(np.float64), float(ratio)


def lesion_balanced_weights(
    cache: PreparedCache, table: SliceTable, ids: np.ndarray, weights: np.ndarray, power: float
) -> np.ndarray:
    """Re-spread the tumour slices' sampling mass over lesions, so small lesions are not starved.

    With slice-uniform oversampling a 5 mm nodule on 2 slices is drawn 30x less often than a 6 cm mass on
    60. Here each lesion (26-connected 3D component of a case's mask) on ``n`` slices gives each of its
    slices ``n ** -power``; a slice sums over its lesions. ``power`` 0 keeps the slice-uniform weights, 1
    gives every lesion the same mass, 0.5 (sqrt) is in between. The total mass of tumour slices is kept,
    so the expected tumour fraction of a batch does not change.

    Args:
        ids: (N,) global slice indices that ``weights`` belongs to (the training slices).
        weights: (N,) float64 weights from :func:`oversample_weights`.

    Returns:
        (N,) float64 weights.
    """
    from scipy import ndimage as ndi

    from lungtumor.postprocess import label_components

    if power <= 0:
        return weights
    tumour = table.tumour[ids]
    if not tumour.any():
        return weights
    per_slice = np.zeros(len(table), dtype=np.float64)
    for c in np.unique(table.case_of[ids]):
        seg = np.asarray(cache.seg(table.names[c]))
        if not seg.any():
            continue
        lab, _ = label_components(seg)
        for sl in ndi.find_objects(lab):
            if sl is None:
                continue
            z = np.arange(sl[0].start, sl[0].stop)
            per_slice[table.starts[c] + z] += len(z) ** -float(power)
    w = weights.copy()
    lw = per_slice[ids][tumour]
    if lw.sum() <= 0:
        return weights
    w[tumour] = lw * (weights[tumour].sum() / lw.sum())
    return w


class EpochBatchSampler(Sampler[list[int]]):
    """Yields ``steps`` batches of global slice indices per epoch, drawn with replacement by ``weights``.

    The draw depends only on (seed, epoch), so every DDP rank draws the same list and keeps its own share
    (rank r takes column r of a (steps, world, batch) array), and a resumed run sees the same batches.
    """

    def __init__(
        self,
        ids: np.ndarray,
        weights: np.ndarray,
        batch_size: int,
        steps: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.ids = torch.as_tensor(ids, dtype=torch.int64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.batch_size, self.steps, self.seed, self.rank, self.world = batch_size, steps, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.steps * self.world * self.batch_size
        pick = torch.multinomial(self.weights, n, replacement=True, generator=g)
        mine = self.ids[pick].view(self.steps, self.world, self.batch_size)[:, self.rank]
        yield from mine.tolist()


class IndexDataset(Dataset):
    """Yields the index itself (resident path: the DataLoader only moves index tensors)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SliceDataset(Dataset):
    """Host path: one 2.5D sample per global index, read from memory-mapped arrays.

    Item: (img float16 (C, H, W), seg uint8 (1, H, W)) as tensors; C = 2k+1 CT slices, then the blobness
    channel of the centre slice when the cache has one.
    """

    def __init__(self, cache: PreparedCache, table: SliceTable, k: int, context_mm: float = 0.0) -> None:
        self.cache, self.table, self.k = cache, table, k
        self.step = table.steps(cache, context_mm)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(self.table.case_of[i])
        name, start = self.table.names[c], int(self.table.starts[c])
        n = int(self.table.starts[c + 1]) - start
        t = torch.tensor
        i0, i1, w = context_index(t([i - start]), self.k, t([self.step[c]]), t([0]), t([n - 1]))
        rows = torch.unique(torch.cat([i0[0], i1[0]]))  # sorted; read only these slices
        vol = torch.from_numpy(np.array(self.cache.image(name)[rows.numpy()], dtype=np.float16))
        img = interp_slices(vol, torch.searchsorted(rows, i0), torch.searchsorted(rows, i1), w)[0]
        if self.cache.has_blob:
            blob = torch.from_numpy(np.array(self.cache.blob(name)[i - start][None], dtype=np.float16))
            img = torch.cat([img, blob])
        seg = np.array(self.cache.seg(name)[i - start][None], dtype=np.uint8)
        return img, torch.from_numpy(seg)


class ResidentSlices:
    """Every case of ``table`` in one tensor on ``device``: img float16 (Z, H, W), seg uint8 (Z, H, W)."""

    def __init__(
        self, cache: PreparedCache, table: SliceTable, device: torch.device, context_mm: float = 0.0
    ) -> None:
        h, w = cache.shape_hw
        n = len(table)
        self.table, self.device = table, device
        self.img = torch.empty((n, h, w), dtype=torch.float16, device=device)
        self.seg = torch.empty((n, h, w), dtype=torch.uint8, device=device)
        self.blob = torch.empty((n, h, w), dtype=torch.float16, device=device) if cache.has_blob else None
        for i, name in enumerate(table.names):
            a, b = int(table.starts[i]), int(table.starts[i + 1])
            self.img[a:b].copy_(torch.from_numpy(np.array(cache.image(name), dtype=np.float16)))
            self.seg[a:b].copy_(torch.from_numpy(np.array(cache.seg(name), dtype=np.uint8)))
            if self.blob is not None:
                self.blob[a:b].copy_(torch.from_numpy(np.array(cache.blob(name), dtype=np.float16)))
        self.lo = torch.as_tensor(table.starts[table.case_of], device=device)
        self.hi = torch.as_tensor(table.starts[table.case_of + 1] - 1, device=device)
        steps = table.steps(cache, context_mm)[table.case_of]
        self.step = torch.as_tensor(steps, dtype=torch.float32, device=device)  # exact for integer steps

    def gather(self, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) global indices on the device -> (img float16 (B, C, H, W), seg uint8 (B, 1, H, W)); C = 2k+1
        CT slices, + the centre slice's blobness channel when the cache has one."""
        i0, i1, w = context_index(idx, k, self.step[idx], self.lo[idx], self.hi[idx])
        return append_blob(interp_slices(self.img, i0, i1, w), self.blob, idx), self.seg[idx][:, None]

    def case(self, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Case number ``c`` as views: (img float16 (z, H, W), seg uint8 (z, H, W), blob float16 or None)."""
        a, b = int(self.table.starts[c]), int(self.table.starts[c + 1])
        return self.img[a:b], self.seg[a:b], None if self.blob is None else self.blob[a:b]


def cache_nbytes(cache: PreparedCache, names: Sequence[str]) -> int:
    """Bytes that the resident tensors of ``names`` need (float16 image + uint8 mask + float16 blob)."""
    h, w = cache.shape_hw
    return sum(cache.cases[n].n_slices for n in names) * h * w * (5 if cache.has_blob else 3)


def resident_fits(
    cache: PreparedCache, names: Sequence[str], device: torch.device, fraction: float = 0.5
) -> bool:
    """Whether the cache fits in ``fraction`` of the free memory of CUDA ``device`` (False for non-CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache_nbytes(cache, names) <= fraction * free
