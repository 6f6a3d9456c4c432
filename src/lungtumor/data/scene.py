"""A varied phantom while it is being painted: the image, the masks, the confounders drawn so far and their
records. Arrays are (z, y, x) on the phantom's :class:`~lungtumor.data.geometry.Grid`; positions are (x, y, z)
mm in the body frame of :mod:`lungtumor.data.anatomy`; intensities in HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lungtumor.data.anatomy import Anatomy
from lungtumor.data.geometry import Grid
from lungtumor.imaging.volume import Volume


@dataclass
class Box:
    """A sub-block of the grid: index slices ``sl`` (z, y, x) and body-frame coordinates (mm) of its voxels,
    broadcastable: ``X`` (1, 1, nx), ``Y`` (1, ny, 1), ``Z`` (nz, 1, 1)."""

    sl: tuple[slice, slice, slice]
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) voxels."""
        return (self.Z.shape[0], self.Y.shape[1], self.X.shape[2])

    def dist(self, c: np.ndarray, axes: np.ndarray | tuple = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Normalised distance sqrt(sum(((p - c) / axes)^2)) of each voxel from ``c`` (x, y, z) mm."""
        return np.sqrt(((self.X - c[0]) / axes[0]) ** 2 + ((self.Y - c[1]) / axes[1]) ** 2
                       + ((self.Z - c[2]) / axes[2]) ** 2)  # fmt: skip


@dataclass
class Scene:
    """The varied phantom being painted.

    Attributes:
        an, grid: the patient and the grid.
        img: (z, y, x) float32 HU, painted in place.
        masks: :func:`~lungtumor.data.anatomy.render_anatomy`'s masks; ``"lung"`` loses what an effusion fills
            and ``"body"`` gains breasts and arms.
        lung0: (z, y, x) bool, the lungs as rendered, before any confounder.
        free: (z, y, x) bool, aerated lung left for tumours (space-occupying confounders take theirs away).
        conf: (z, y, x) uint8, the id (1-based index into ``records``) of the confounder that painted each voxel.
        records: one dict per confounder; keys starting with ``_`` are dropped when the case is written.
        contrast: whether the blood is contrast-enhanced.
        lid: (z, y, x) uint8 tumour ids once the tumours are placed (confounders painted after them keep off).
        taken: the tumours' (centre (x, y, z) mm, radius mm).
    """

    an: Anatomy
    grid: Grid
    img: np.ndarray
    masks: dict
    lung0: np.ndarray
    free: np.ndarray
    conf: np.ndarray
    contrast: bool
    records: list[dict] = field(default_factory=list)
    lid: np.ndarray | None = None
    taken: list = field(default_factory=list)

    @classmethod
    def start(cls, an: Anatomy, grid: Grid, img: np.ndarray, masks: dict) -> Scene:
        """A scene over a freshly rendered chest."""
        lung = masks["lung"]
        return cls(an, grid, img, masks, lung.copy(), lung.copy(), np.zeros(grid.shape, np.uint8),
                   an.hu_blood > 100)  # fmt: skip

    def box(self, c: np.ndarray, half_mm: np.ndarray | float) -> Box | None:
        """The voxels within ``half_mm`` (scalar or per (x, y, z)) of ``c`` (x, y, z) mm; None off the grid."""
        g = self.grid
        half = np.broadcast_to(np.asarray(half_mm, float), (3,))
        lo = g.to_index(np.asarray(c) - half)
        hi = g.to_index(np.asarray(c) + half)
        k0, j0, i0 = (max(int(np.floor(v)), 0) for v in lo)
        k1, j1, i1 = (min(int(np.ceil(v)) + 1, n) for v, n in zip(hi, g.shape, strict=True))
        if k0 >= k1 or j0 >= j1 or i0 >= i1:
            return None
        zc, yc, xc = g.axes()
        return Box((slice(k0, k1), slice(j0, j1), slice(i0, i1)),
                   xc[i0:i1][None, None, :], yc[j0:j1][None, :, None], zc[k0:k1][:, None, None])  # fmt: skip

    def whole(self) -> Box:
        """The whole grid as a :class:`Box`."""
        zc, yc, xc = self.grid.axes()
        return Box((slice(None),) * 3, xc[None, None, :], yc[None, :, None], zc[:, None, None])

    def far_from_tumours(self, pts: np.ndarray, margin_mm: float) -> np.ndarray:
        """(N,) bool: points (N, 3) mm farther than 1.8 radii + ``margin_mm`` from every tumour's centre."""
        ok = np.ones(len(pts), bool)
        for c, r in self.taken:
            ok &= np.linalg.norm(pts - c, axis=1) > 1.8 * r + margin_mm
        return ok

    def pick(self, rng: np.random.Generator, mask: np.ndarray, n: int, margin_mm: float = 0.0) -> np.ndarray:
        """Up to ``n`` random points (n, 3) (x, y, z) mm at voxels of ``mask`` (z, y, x) bool, away from the
        tumours by ``margin_mm`` (:meth:`far_from_tumours`); fewer when fewer fit."""
        kk, jj, ii = np.nonzero(mask[:, ::2, ::2])
        if not len(kk):
            return np.zeros((0, 3))
        zc, yc, xc = self.grid.axes()
        pts = np.stack([xc[ii * 2], yc[jj * 2], zc[kk]], 1).astype(float)
        pts = pts[self.far_from_tumours(pts, margin_mm)]
        if not len(pts):
            return pts
        return pts[rng.choice(len(pts), min(n, len(pts)), replace=False)]

    def note(self, rec: dict) -> None:
        """Add confounder ``rec`` to ``records`` (once; at most 255), e.g. one outside the scanned volume."""
        if "_id" not in rec and len(self.records) < 255:
            self.records.append(rec)
            rec["_id"] = len(self.records)

    def paint(
        self, rec: dict, b: Box, mask: np.ndarray, hu, occupy: bool = False, pleural: bool = False
    ) -> int:
        """Paint ``hu`` (scalar or an array of ``b``'s shape) into the voxels of ``mask`` (``b``'s shape) and
        mark them as the confounder ``rec`` (appended to ``records`` on its first paint). Never paints a tumour
        voxel. ``occupy``: tumours may no longer go there; ``pleural``: no longer lung either. Returns the
        number of voxels painted."""
        if self.lid is not None:
            mask = mask & (self.lid[b.sl] == 0)
        self.note(rec)
        if "_id" not in rec:
            return 0
        sub = self.img[b.sl]
        sub[mask] = np.broadcast_to(np.asarray(hu, np.float32), mask.shape)[mask]
        self.conf[b.sl][mask] = rec["_id"]
        if occupy or pleural:
            self.free[b.sl][mask] = False
        if pleural:
            self.masks["lung"][b.sl][mask] = False
        return int(mask.sum())


def side_name(sign: int) -> str:
    """The patient's side of ``sign`` (+1: x > 0, left)."""
    return "left" if sign > 0 else "right"


def record(name: str, c, **kw) -> dict:
    """A confounder record: its type, designed centre ``_c`` (x, y, z) mm and rounded parameters."""
    out = {"type": name, "_c": [float(v) for v in c]}
    out.update({k: round(float(v), 2) if isinstance(v, float | np.floating) else v for k, v in kw.items()})
    return out


def segment_dist(b: Box, a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Distance (mm) of each voxel of ``b`` from the segment ``a``-``e`` (x, y, z) mm."""
    ab = e - a
    t = np.clip(((b.X - a[0]) * ab[0] + (b.Y - a[1]) * ab[1] + (b.Z - a[2]) * ab[2]) / (ab @ ab + 1e-9), 0, 1)
    return np.sqrt(
        (b.X - a[0] - t * ab[0]) ** 2 + (b.Y - a[1] - t * ab[1]) ** 2 + (b.Z - a[2] - t * ab[2]) ** 2
    )


def finish_records(scene: Scene, image: Volume) -> list[dict]:
    """The confounder records for lesions.json: each with its ``voxels`` (as finally visible) and the world
    centre ``centre_mm`` (x, y, z, LPS) of those voxels (of its designed centre when none is visible)."""
    n = len(scene.records) + 1
    flat = scene.conf.ravel()
    counts = np.bincount(flat, minlength=n)
    nz = np.flatnonzero(flat)
    ids = flat[nz]
    idx = np.unravel_index(nz, scene.conf.shape)
    sums = [np.bincount(ids, weights=a.astype(np.float64), minlength=n) for a in idx]
    out = []
    for rec in scene.records:
        k = rec["_id"]
        if counts[k]:
            zyx = np.array([[s[k] / counts[k] for s in sums]])
        else:
            zyx = scene.grid.to_index(np.asarray(rec["_c"], float))[None]
        clean = {key: v for key, v in rec.items() if not key.startswith("_")}
        clean["voxels"] = int(counts[k])
        clean["centre_mm"] = [round(float(v), 2) for v in image.index_to_world(zyx)[0]]
        out.append(clean)
    return out
