"""Anatomy of the synthetic chest CT used by :mod:`lungtumor.data.phantom`.

Everything is built in a *body frame* in millimetres: x towards the patient's left, y towards the back
(LPS, like the voxel axes), both relative to the body centre, and z upwards with z = 0 at the top of the
lung bases (the diaphragm dome) and z = ``Anatomy.height`` at the lung apices. Arrays are (z, y, x).
Nothing here is random at import; every function takes a ``numpy.random.Generator``.
"""

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


@dataclass
class Anatomy:
    """One patient's body plan (mm and HU). Drawn by :func:`sample_anatomy`."""

    A: float  # body half-width (lateral)
    B_ant: float  # body half-depth in front of the centre
    B_post: float  # body half-depth behind the centre
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness (lateral and front)
    back: float  # back muscle thickness
    height: float  # lung base (dome) to apex
    spine_r: float  # vertebral body radius
    heart: tuple[float, float, float, float, float, float]  # centre x, y, z and semi-axes x, y, z
    aorta_r: float
    dome_drop: float  # how far the costophrenic recesses lie below the dome top
    right_dome: float  # right dome above the left one (liver)
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    vert_pitch: float
    hu_fat: float
    hu_muscle: float
    hu_blood: float
    hu_lung: float
    hu_liver: float
    lung_grad: float  # extra HU of dependent (posterior) lung

    @property
    def cav(self) -> tuple[float, float, float]:
        """Thoracic-cavity semi-axes: lateral, front, back (mm)."""
        return (
            self.A - self.fat - self.muscle - 6.0,
            self.B_ant - self.fat - self.muscle,
            self.B_post - 0.6 * self.fat - self.back,
        )

    @property
    def spine_y(self) -> float:
        return self.cav[2] - self.spine_r - 6.0

    @property
    def carina(self) -> np.ndarray:
        """Bottom of the trachea (x, y, z) mm."""
        return np.array([0.0, self.spine_y - self.spine_r - 18.0, 0.62 * self.height])

    @property
    def hila(self) -> np.ndarray:
        """Left and right hilum points (2, 3) as (x, y, z) mm."""
        z = 0.55 * self.height
        w = 30.0
        return np.array([[w + 6.0, -2.0, z], [-w - 4.0, -2.0, z + 8.0]])


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a plausible adult chest (size, fat, heart, HU levels)."""
    size = rng.uniform(0.85, 1.18)
    A = 155.0 * size * rng.uniform(0.92, 1.08)
    B = 112.0 * size * rng.uniform(0.92, 1.12)
    fat = rng.uniform(4.0, 26.0) * size
    h = rng.uniform(185.0, 255.0) * (0.7 + 0.3 * size)
    contrast = rng.random() < 0.6
    cav_lat = A - fat - 14.0
    return Anatomy(
        A=A,
        B_ant=B * 0.95,
        B_post=B * 1.02,
        fat=fat,
        muscle=rng.uniform(7.0, 15.0),
        back=rng.uniform(14.0, 24.0),
        height=h,
        spine_r=rng.uniform(14.0, 19.0),
        heart=(
            rng.uniform(10.0, 30.0),
            -0.35 * B + rng.uniform(-8, 8),
            rng.uniform(0.05, 0.18) * h,
            0.42 * cav_lat * rng.uniform(0.9, 1.12),
            0.42 * B * rng.uniform(0.9, 1.1),
            0.33 * h * rng.uniform(0.9, 1.1),
        ),
        aorta_r=rng.uniform(10.0, 15.0),
        dome_drop=rng.uniform(35.0, 60.0),
        right_dome=rng.uniform(5.0, 22.0),
        rib_pitch=rng.uniform(24.0, 31.0),
        rib_drop=rng.uniform(65.0, 95.0),
        rib_phase=rng.uniform(0.0, 30.0),
        vert_pitch=rng.uniform(24.0, 29.0),
        hu_fat=rng.uniform(-115.0, -85.0),
        hu_muscle=rng.uniform(38.0, 55.0),
        hu_blood=rng.uniform(140.0, 320.0) if contrast else rng.uniform(35.0, 50.0),
        hu_lung=rng.uniform(-885.0, -820.0),
        hu_liver=rng.uniform(50.0, 65.0) if not contrast else rng.uniform(85.0, 120.0),
        lung_grad=rng.uniform(10.0, 60.0),
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


def _ellipse_depth(X, Y, a, b_ant, b_post, scale=1.0):
    """Approximate depth (mm, > 0 inside) below the border of an ellipse centred at the origin."""
    b = np.where(Y < 0, b_ant, b_post)
    rho = np.sqrt((X / a) ** 2 + (Y / b) ** 2) / scale + 1e-6
    return np.hypot(X, Y) * (1.0 / rho - 1.0), rho


def render_anatomy(an: Anatomy, grid: Grid, tex: np.ndarray, rng: np.random.Generator, table: bool):
    """Render the chest without vessels or tumours.

    Returns:
        img (z, y, x) float32 HU, and masks {"lung": bool, "lung_side": int8 (+1 left, -1 right, 0),
        "soft": bool (where vessels may be drawn), "bone": bool, "body": bool, "wall_depth": float32 mm
        (depth inside the thoracic cavity)}.
    """
    zc, yc, xc = grid.axes()
    Y2, X2 = np.meshgrid(yc, xc, indexing="ij")
    ca, cb_ant, cb_post = an.cav
    # 2D maps (constant along z)
    body_d, _ = _ellipse_depth(X2, Y2, an.A, an.B_ant, an.B_post)
    cav_d0, _ = _ellipse_depth(X2, Y2, ca, cb_ant, cb_post)
    P = np.hypot(X2, Y2) + 1e-3
    g = (1.0 - Y2 / P) / 2.0  # 0 at the back, 1 at the front
    fat_t = an.fat * (0.75 + 0.5 * (Y2 / an.B_post + 1) / 2) * (1 + 0.08 * tex[0])  # thicker at the back
    sy = an.spine_y
    sr = an.spine_r
    vb = np.hypot(X2, Y2 - sy)  # vertebral body
    canal = np.hypot(X2, Y2 - (sy + sr + 8.0))
    dia_top = np.where(X2 < 0, an.right_dome, 0.0)
    rx = (np.abs(X2) - 0.42 * ca) / (0.58 * ca)
    z_dia = dia_top - an.dome_drop * (np.clip(rx, -1.0, 1.5) ** 2 + 0.7 * np.clip(Y2 / cb_post, 0, 1) ** 2)
    z_top = (
        an.height - 70.0 * (((np.abs(X2) - 0.45 * ca) / (0.45 * ca)) ** 2 + ((Y2 + 10) / cb_post) ** 2) ** 1.3
    )
    hx, hy, hz, hax, hay, haz = an.heart
    xa, ya = sr * 0.75 + an.aorta_r, sy - sr * 0.55  # descending aorta
    hil = an.hila
    # mediastinal half-width: narrow in front, wider in the middle, spine behind
    ym = sy - sr - 30.0
    w_base = 7.0 + 17.0 * np.clip(1 - ((Y2 - ym) / (0.75 * (ym + cb_ant))) ** 2, 0, 1)
    w_base = np.where(
        Y2 > sy - sr - 5, np.where(Y2 < sy + 0.5 * sr, sr + 7.0, 0.0), w_base
    )  # lungs wrap the spine
    img = np.full(grid.shape, -1000.0, np.float32)
    lung = np.zeros(grid.shape, bool)
    soft = np.zeros(grid.shape, bool)
    bone = np.zeros(grid.shape, bool)
    wall = np.zeros(grid.shape, np.float32)
    body = np.zeros(grid.shape, bool)
    rib_t, rib_h = 9.0, 11.0
    # constant 2D cross-sections, hoisted out of the slice loop
    hq2 = ((X2 - hx) / hax) ** 2 + ((Y2 - hy) / hay) ** 2
    da = np.hypot(X2 - xa, Y2 - ya)
    asc_svc = (np.hypot(X2 + 12, Y2 - (hy - 0.2 * hay)) < an.aorta_r + 2) | (
        np.hypot(X2 + 12 + an.aorta_r + 10, Y2 - (hy + 0.1 * hay)) < 9
    )
    d_arch = np.abs((X2 + 12) * (ya - hy) - (Y2 - hy) * (xa + 12)) / np.hypot(ya - hy, xa + 12)
    arch2 = (d_arch < an.aorta_r) & (Y2 > hy - 10) & (Y2 < ya + 10)
    tr = np.hypot(X2, Y2 - an.carina[1])
    oes = np.hypot(X2 - 8.0, Y2 - (sy - sr - 5.0)) < 7.0
    vbody = vb < sr
    vcort = vbody & (vb > sr - 2.2)
    post0 = ((canal > 7) & (canal < 12)) | ((np.abs(X2) < 3.5) & (Y2 > sy + sr + 14) & (Y2 < sy + sr + 42))
    tproc = (np.abs(Y2 - (sy + sr + 4 + 0.35 * np.abs(X2))) < 2.5) & (np.abs(X2) > 6) & (np.abs(X2) < 30)
    st = (X2 / 16.0) ** 2 + ((Y2 + cb_ant + 7.0) / 7.0) ** 2 < 1
    lung_base = an.hu_lung + an.lung_grad * np.clip((Y2 / cb_post + 0.2) / 1.2, 0, 1) ** 2
    not_med = (vb > sr + 4) & ~(da < an.aorta_r + 3) & ~st
    absx = np.abs(X2 - 4.0)
    liver = X2 < 20
    for k, z in enumerate(zc):
        t = z / an.height
        s = img[k]
        T = tex[k]
        top = max(0.0, (t - 1.05) / 0.5)
        bscale = 1.0 - 0.25 * min(top, 1.0)
        inb = body_d > an.A * (1 - bscale)
        taper = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - t, 0.0, 1.0))  # the chest narrows towards the apex
        cav_d = (
            cav_d0 if t <= 0 else _ellipse_depth(X2, Y2, ca * taper, cb_ant * (0.9 + 0.1 * taper), cb_post)[0]
        )
        s[inb] = an.hu_muscle + 6 * T[inb]
        fat = inb & (body_d - an.A * (1 - bscale) < fat_t)
        s[fat] = an.hu_fat + 8 * T[fat]
        body[k] = inb
        incav = cav_d > 0
        wall[k] = cav_d
        s[inb & ~incav & (T > 2.0) & ~fat] = an.hu_fat  # intermuscular fat
        # ribs: oblique bands outside the cavity, lower in front
        ring = (cav_d < 0) & (cav_d > -rib_t) & (g < 0.9) & (z < an.height + 15)
        ph = np.mod(z - an.rib_drop * g[ring] - an.rib_phase, an.rib_pitch)
        u = (-cav_d[ring] - rib_t / 2) / (rib_t / 2)
        v = (ph - rib_h / 2) / (rib_h / 2)
        e = u * u + v * v
        rr = np.zeros_like(ring)
        rr[ring] = e < 1
        cort = np.zeros_like(ring)
        cort[ring] = (e < 1) & (e > 0.45)
        s[rr] = 220.0
        s[cort] = 750.0
        bone[k] |= rr
        cart = (cav_d < 0) & (cav_d > -rib_t) & (g >= 0.9) & (np.abs(X2) > 14) & (np.abs(X2) < 45)
        cart &= np.mod(z - an.rib_drop - an.rib_phase, an.rib_pitch) < rib_h
        s[cart] = 110.0
        # cavity content: mediastinal fat by default; abdomen below the diaphragm
        cav_in = incav & inb
        s[cav_in] = an.hu_fat + 12 * T[cav_in]
        abd = cav_in & (z < z_dia)
        s[abd & liver] = an.hu_liver + 5 * T[abd & liver]
        s[abd & ~liver] = an.hu_muscle + 8 * T[abd & ~liver]
        # lungs
        w = w_base * (1.0 + 0.6 * max(0.0, 0.5 - t)) if t < 1 else w_base
        lg = cav_in & (z > z_dia) & (z < z_top) & (absx > w) & (cav_d > 2.0)
        if t < 0.8:
            lg &= not_med
        else:
            lg &= vb > sr + 4
        # heart with pericardial fat
        hq = hq2 + ((z - hz) / haz) ** 2
        lg &= hq > 1.12
        heart = cav_in & (hq < 1.0) & (z > z_dia - 15)
        s[heart] = an.hu_blood * 0.85 + 8 * T[heart] if an.hu_blood > 100 else an.hu_muscle
        # vertebra, canal, posterior elements
        if t < 0.8 and z > z_dia.min() - 40:
            s[da < an.aorta_r] = an.hu_blood
        if 0.45 < t < 0.8:  # ascending aorta and superior vena cava
            s[asc_svc & cav_in] = an.hu_blood
            lg &= ~asc_svc
        if 0.72 < t < 0.82:  # aortic arch, from front right to back left
            s[arch2 & cav_in] = an.hu_blood
            lg &= ~arch2
        if t > 0.62:
            s[(tr < 10.5) & cav_in] = an.hu_muscle
            s[tr < 8.5] = -1000.0
            lg &= tr > 12
        s[oes & cav_in & (z > z_dia)] = an.hu_muscle
        vdisc = np.mod(z - an.rib_phase, an.vert_pitch) < 5.0
        s[vbody] = 80.0 if vdisc else 230.0 + 20 * T[vbody]
        if not vdisc:
            s[vcort] = 700.0
        post = post0 | tproc if np.mod(z - an.rib_phase, an.vert_pitch) > 0.55 * an.vert_pitch else post0
        s[post & inb] = 600.0
        s[canal <= 7] = 35.0
        bone[k] |= vbody | (post & inb)
        if 0.2 < t < 1.0:
            s[st] = 350.0
            bone[k] |= st
        lg &= ~rr
        s[lg] = lung_base[lg] + 22 * T[lg]
        lung[k] = lg
        soft[k] = (
            lg
            | (cav_in & (s < -50) & (s > -150) & (z > z_dia))
            | (np.abs(hil[:, 2].mean() - z) < 60) & cav_in
        )
    side3 = np.broadcast_to(np.sign(X2 - 4.0).astype(np.int8), grid.shape) * lung
    if table:
        yt = an.B_post + rng.uniform(0.5, 4.0) - 0.0009 * X2**2
        tab = (
            ((np.abs(Y2 - yt) < 1.6) | (np.abs(Y2 - yt - 28) < 2.2))
            & (np.abs(X2) < an.A * 1.25)
            & (body_d < 0)
        )
        foam = (Y2 > yt) & (Y2 < yt + 28) & (np.abs(X2) < an.A * 1.25) & (body_d < 0)
        img[:, foam] = -920.0
        img[:, tab] = 120.0
    return img, {"lung": lung, "side": side3, "soft": soft, "bone": bone, "body": body, "wall_depth": wall}


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
