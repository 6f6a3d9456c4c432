"""Connected components of binary masks (z, y, x): 26-connected lesions, labelled in their bounding box."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Structuring element for lesion components: 26-connectivity in 3D.
LESION_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a binary mask.

    Args:
        mask: (z, y, x), any dtype; non-zero is foreground.

    Returns:
        (labels int32 (z, y, x) with 0 = background and 1..n, n).
    """
    labels, n = ndi.label(np.asarray(mask) != 0, structure=LESION_STRUCTURE)
    return labels.astype(np.int32, copy=False), int(n)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """(z, y, x) slices of the box around the non-zero voxels, grown by ``margin`` and clipped; None if empty."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if len(zs) == 0:
        return None
    sub = mask[zs[0] : zs[-1] + 1]
    ranges = (zs, np.flatnonzero(sub.any(axis=(0, 2))), np.flatnonzero(sub.any(axis=(0, 1))))
    return tuple(
        slice(max(0, int(r[0]) - margin), min(dim, int(r[-1]) + 1 + margin))
        for r, dim in zip(ranges, mask.shape, strict=True)
    )


def _few_runs(a: np.ndarray, limit: int = 1 << 16) -> bool:
    """Whether ``a`` (z, y, x) has fewer than ``limit`` runs of non-zero voxels along x (counted a slab at a
    time); ``ndi.label`` opens at most one provisional label per run."""
    if np.count_nonzero(a) < limit:
        return True
    runs, step = 0, slab(a)
    for k in range(0, len(a), step):
        b = a[k : k + step] != 0
        runs += np.count_nonzero(b[..., 0]) + np.count_nonzero(b[..., 1:] > b[..., :-1])
        if runs >= limit:
            return False
    return True


def label_compact(a: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``ndi.label`` (non-zero = foreground) into uint16 labels when they surely fit, else int32.

    A failed uint16 attempt would cost scipy an int32 copy on top of it, so uint16 is only tried when there are
    fewer than 65536 runs along x."""
    if _few_runs(a):
        try:
            labels, n = ndi.label(a, structure=structure, output=np.uint16)
            return labels, int(n)
        except RuntimeError:  # scipy refuses labels that do not fit the requested dtype
            pass
    labels, n = ndi.label(a, structure=structure, output=np.int32)  # outside the except: its frames are freed
    return labels, int(n)


def label_components_in_box(mask: np.ndarray, margin: int = 0) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """The 26-connected components of a binary mask, labelled only inside the bounding box of its voxels.

    Same components and numbering as :func:`label_components` restricted to the box, without a full-volume
    int32 array: 2 bytes per box voxel (uint16; int32 beyond 65535 components).

    Args:
        mask: (z, y, x), any dtype; non-zero is foreground.
        margin: voxels added to the box on every side (clipped to the volume).

    Returns:
        (box: (z, y, x) slices into ``mask``; labels of the box's shape, 0 = background and 1..n; n). An empty
        mask gives zero-size slices and n = 0.
    """
    m = np.asarray(mask)
    box = _bbox(m, margin)
    if box is None:
        return (slice(0, 0),) * m.ndim, np.zeros((0,) * m.ndim, np.uint16), 0
    labels, n = label_compact(m[box], LESION_STRUCTURE)
    return box, labels, n


def slab(a: np.ndarray, elements: int = 1 << 20) -> int:
    """Number of leading-axis planes of ``a`` in a slab of about ``elements`` elements (at least one)."""
    return max(1, elements // max(1, a[0].size)) if len(a) else 1


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of each label 0..n of a label array (int64, length n + 1), a slab at a time, so that the
    labels are never copied to int64 as a whole (``np.bincount`` converts its input to intp)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    step = slab(labels)
    for k in range(0, len(labels), step):
        counts += np.bincount(labels[k : k + step].ravel(), minlength=n + 1)
    return counts


def paint(out: np.ndarray, labels: np.ndarray, table: np.ndarray) -> None:
    """``out[...] = table[labels]`` a slab at a time (fancy indexing would copy the labels to intp)."""
    step = slab(labels)
    for k in range(0, len(labels), step):
        out[k : k + step] = table[labels[k : k + step]]
