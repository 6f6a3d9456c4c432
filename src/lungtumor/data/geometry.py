"""Geometric primitives of the phantoms: the body-frame voxel grid, smooth random fields and tube trees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Grid:
    """A voxel grid in the body frame: voxel (k, j, i) sits at (x0 + i*dx, y0 + j*dy, z0 + k*dz) mm."""

    nz: int
    ny: int
    nx: int
    dx: float
    dy: float
    dz: float
    x0: float
    y0: float
    z0: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)

    @property
    def h(self) -> float:
        """Effective voxel size (mm) used for anti-aliased edges."""
        return float((self.dx * self.dy * self.dz) ** (1 / 3))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame coordinates (mm) of the voxel centres along z, y and x (1D float32 each)."""
        z = (self.z0 + self.dz * np.arange(self.nz)).astype(np.float32)
        y = (self.y0 + self.dy * np.arange(self.ny)).astype(np.float32)
        x = (self.x0 + self.dx * np.arange(self.nx)).astype(np.float32)
        return z, y, x

    def to_index(self, p: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 3) as (x, y, z) mm -> fractional voxel indices (..., 3) as (k, j, i)."""
        p = np.asarray(p, dtype=float)
        return np.stack(
            [
                (p[..., 2] - self.z0) / self.dz,
                (p[..., 1] - self.y0) / self.dy,
                (p[..., 0] - self.x0) / self.dx,
            ],
            -1,
        )


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], step: tuple[float, ...]) -> np.ndarray:
    """Smooth random field of ``shape`` with unit std and correlation length ``step`` voxels per axis (float32)."""
    low = tuple(int(np.ceil(s / max(st, 1.0))) + 2 for s, st in zip(shape, step, strict=True))
    a = ndi.gaussian_filter(rng.standard_normal(low, dtype=np.float32), 0.7)
    a /= a.std() + 1e-6
    for ax, (n, lo) in enumerate(
        zip(shape, low, strict=True)
    ):  # separable linear upsampling by matrix products
        pos = np.linspace(0.5, lo - 1.5, n) if lo > 2 else np.zeros(n)
        i0 = np.clip(np.floor(pos).astype(int), 0, lo - 2)
        f = (pos - i0).astype(np.float32)
        U = np.zeros((n, lo), np.float32)
        U[np.arange(n), i0] = 1 - f
        U[np.arange(n), i0 + 1] = f
        a = np.moveaxis(np.tensordot(U, a, axes=([1], [ax])), 0, ax)
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- tubes (vessels, airways)


def grow_tree(rng: np.random.Generator, root: np.ndarray, pts: np.ndarray, r_leaf: float) -> np.ndarray:
    """A branching tree from ``root`` to every point of ``pts`` (N, 3) mm by recursive median splits.

    Radii follow Murray's law (r = r_leaf * n**(1/3) for a branch feeding n end points).
    Returns segments (S, 9): ax, ay, az, bx, by, bz, r_a, r_b, generation.
    """
    segs: list[list[float]] = []
    stack = [(np.asarray(root, float), pts, 0)]
    while stack:
        start, p, gen = stack.pop()
        n = len(p)
        r = r_leaf * n ** (1 / 3)
        if n == 1:
            segs.append([*start, *p[0], r, 0.55 * r_leaf, gen])
            continue
        c = p.mean(0)
        v = c - start
        end = start + rng.uniform(0.3, 0.55) * v + rng.normal(0, 0.06 * np.linalg.norm(v) + 0.5, 3)
        mid = (start + end) / 2 + rng.normal(0, 0.05 * np.linalg.norm(end - start) + 0.2, 3)
        segs.append([*start, *mid, r, r * 0.97, gen])
        segs.append([*mid, *end, r * 0.97, r * 0.94, gen])
        q = p - c
        w, vec = np.linalg.eigh(q.T @ q)
        order = np.argsort(q @ vec[:, -1])
        half = n // 2 if n < 4 else int(n * rng.uniform(0.35, 0.65))
        half = min(max(half, 1), n - 1)
        stack.append((end, p[order[:half]], gen + 1))
        stack.append((end, p[order[half:]], gen + 1))
    return np.asarray(segs, float)


def widen_near_root(segs: np.ndarray, root: np.ndarray, boost: float, length_mm: float) -> np.ndarray:
    """``segs`` (as from :func:`grow_tree`) with each end's radius times ``1 + boost * exp(-d / length_mm)``,
    d its distance (mm) from ``root``: a tree whose trunk is as thick as the central pulmonary arteries and veins
    where they leave the hilum (Murray's law from a few hundred end points gives only about half of it)."""
    out = np.array(segs, dtype=float, copy=True)
    root = np.asarray(root, dtype=float)
    for end, col in ((slice(0, 3), 6), (slice(3, 6), 7)):
        d = np.linalg.norm(out[:, end] - root, axis=1)
        out[:, col] *= 1.0 + boost * np.exp(-d / length_mm)
    return out


def raster_tubes(occ: np.ndarray, segs: np.ndarray, grid: Grid, grow: float = 0.0) -> None:
    """Draw tapered capsules (segments as from :func:`grow_tree`, radii + ``grow`` mm) into ``occ`` (max, in place).

    ``occ`` (z, y, x) float32 gets the anti-aliased fraction of each voxel covered, so vessels thinner than a
    voxel come out faint (partial volume).
    """
    h = grid.h
    nz, ny, nx = grid.shape
    zc, yc, xc = grid.axes()
    for s in segs:
        a, b = s[0:3], s[3:6]
        ra, rb = s[6] + grow, s[7] + grow
        if max(ra, rb) <= 0.05:
            continue
        rm = max(ra, rb) + h
        lo = np.minimum(a, b) - rm
        hi = np.maximum(a, b) + rm
        i0, i1 = (
            max(int(np.floor((lo[0] - grid.x0) / grid.dx)), 0),
            min(int(np.ceil((hi[0] - grid.x0) / grid.dx)) + 1, nx),
        )
        j0, j1 = (
            max(int(np.floor((lo[1] - grid.y0) / grid.dy)), 0),
            min(int(np.ceil((hi[1] - grid.y0) / grid.dy)) + 1, ny),
        )
        k0, k1 = (
            max(int(np.floor((lo[2] - grid.z0) / grid.dz)), 0),
            min(int(np.ceil((hi[2] - grid.z0) / grid.dz)) + 1, nz),
        )
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        ab = b - a
        L2 = float(ab @ ab) + 1e-9
        X = xc[i0:i1][None, None, :] - a[0]
        Y = yc[j0:j1][None, :, None] - a[1]
        Z = zc[k0:k1][:, None, None] - a[2]
        t = np.clip((X * ab[0] + Y * ab[1] + Z * ab[2]) / L2, 0.0, 1.0)
        d = np.sqrt((X - t * ab[0]) ** 2 + (Y - t * ab[1]) ** 2 + (Z - t * ab[2]) ** 2)
        r = ra + (rb - ra) * t
        val = np.clip((r - d) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * r / h)
        sub = occ[k0:k1, j0:j1, i0:i1]
        np.maximum(sub, val.astype(np.float32), out=sub)
