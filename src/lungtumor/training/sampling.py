"""Training batches from a prepared 2D cache (format: docs/architecture.md): samplers and datasets.

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

from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.data import Dataset, Sampler

from lungtumor.imaging.components import label_components
from lungtumor.preprocessing.cache import Cache, SliceTable, append_blob, context_index, interp_slices


def oversample_weights(tumour: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-slice sampling weights: tumour slices weigh ``ratio`` = non-tumour / tumour slices, others 1.

    In expectation half of the sampled slices then contain tumour. Returns (weights float64 (N,), ratio);
    ratio is 1.0 when there are no tumour slices.
    """
    n_t = int(tumour.sum())
    n_n = int(tumour.size - n_t)
    ratio = n_n / n_t if n_t and n_n else 1.0
    return np.where(tumour, ratio, 1.0).astype(np.float64), float(ratio)


def negative_case_weights(
    cache: Cache, table: SliceTable, ids: np.ndarray, weights: np.ndarray, fraction: float
) -> np.ndarray:
    """Give the slices of tumour-free training cases (hard negatives) ``fraction`` of the sampling mass.

    The mass is spread evenly over those slices and the other slices keep their relative weights, so each
    batch holds ``fraction`` of hard-negative slices in expectation, every epoch. Unchanged when ``fraction``
    is 0 or there is no tumour-free case (or only tumour-free ones).

    Args:
        ids: (N,) global slice indices that ``weights`` belongs to (the training slices).
        weights: (N,) float64 weights, e.g. from :func:`oversample_weights`.
    """
    free = np.asarray([not cache.cases[n].tumour_slices for n in table.names], dtype=bool)
    neg = free[table.case_of[ids]]
    if fraction <= 0 or not neg.any() or neg.all():
        return weights
    out = weights.astype(np.float64, copy=True)
    rest = float(out[~neg].sum())
    out[neg] = fraction * rest / (1.0 - fraction) / int(neg.sum())
    return out


def lesion_balanced_weights(
    cache: Cache, table: SliceTable, ids: np.ndarray, weights: np.ndarray, power: float
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

    def __init__(self, cache: Cache, table: SliceTable, k: int, context_mm: float = 0.0) -> None:
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
        self, cache: Cache, table: SliceTable, device: torch.device, context_mm: float = 0.0
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
