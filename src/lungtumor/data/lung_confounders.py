"""Confounders inside the chest cavity of the varied phantoms, never labelled tumour.

Space-occupying ones are painted before the tumours are placed and take their voxels from the aerated lung
left for tumours (:attr:`Scene.free`): pleural effusion (also from the lung mask), atelectasis, consolidation
and emphysematous bullae. The rest are painted after the tumours and keep off them (:meth:`Scene.paint`):
emphysema, ground-glass opacities, fibrosis, calcified granulomas and bronchi with walls. Positions are
(x, y, z) mm in the body frame (x to the patient's left, y to the back, z up from the diaphragm dome); arrays
(z, y, x); HU as drawn from the family's :class:`~lungtumor.data.variety.Element` ranges.
"""

from __future__ import annotations

import numpy as np

from lungtumor.data.geometry import grow_tree, raster_tubes, smooth_noise
from lungtumor.data.scene import Box, Scene, record, segment_dist, side_name
from lungtumor.data.variety import Element


def _blob(
    rng: np.random.Generator, b: Box, c: np.ndarray, radii: np.ndarray, rough: float = 0.25
) -> np.ndarray:
    """Normalised distance (< 1 inside) of an irregular ellipsoid at ``c`` with semi-axes ``radii`` (x, y, z)
    mm, its surface perturbed by smooth noise of amplitude ``rough``; ``b``'s shape."""
    n = smooth_noise(rng, b.shape, tuple(6.0 / d for d in _spacing(b)))  # 6 mm correlation
    return b.dist(c, radii) + rough * n


def _spacing(b: Box) -> tuple[float, float, float]:
    """(dz, dy, dx) mm of a box's voxels (1 along an axis of one voxel)."""
    d = [float(a.ravel()[1] - a.ravel()[0]) if a.size > 1 else 1.0 for a in (b.Z, b.Y, b.X)]
    return d[0], d[1], d[2]


def effusion_thickness(s: Scene, T: float, top: float) -> np.ndarray:
    """The effusion's thickness (mm) along the pleura, (nz, ny, 1): ``T`` at the back, none in front of the
    mid-coronal plane's front fifth, thinning up to height ``top`` (supine: fluid lies posteriorly)."""
    _, cb_ant, cb_post = s.an.cav
    b = s.whole()
    wy = np.clip((b.Y + 0.2 * cb_ant) / (cb_post + 0.2 * cb_ant), 0.0, 1.0) ** 1.5
    wz = np.sqrt(np.clip(1.0 - b.Z / top, 0.0, 1.0))
    return (T * wy * wz).astype(np.float32)


def effusion(s: Scene, el: Element, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """Pleural effusion in one or both pleural spaces; returns [(side sign, thickness map)] for atelectasis."""
    signs = [1, -1] if el.n(rng) >= 2 else [int(rng.choice([1, -1]))]
    out = []
    for sign in signs:
        T, hu, top = el.size(rng), el.hu_value(rng), s.an.height * float(rng.uniform(0.45, 0.8))
        th = effusion_thickness(s, T, top)
        m = s.lung0 & (s.masks["side"] == sign) & (s.masks["wall_depth"] < 2.0 + th)
        c = (sign * 0.5 * s.an.cav[0], 0.8 * s.an.cav[2], 0.0)
        s.paint(record("pleural_effusion", c, side=side_name(sign), thickness_mm=T, hu=hu), s.whole(), m, hu,
                pleural=True)  # fmt: skip
        out.append((sign, th))
    return out


def atelectasis(s: Scene, el: Element, rng: np.random.Generator, effusions: list) -> None:
    """Atelectatic bands (enhancing with contrast): compressive beside an effusion, else dependent subpleural
    at the posterior bases or a plate-like horizontal band."""
    an, wall = s.an, s.masks["wall_depth"]
    for i in range(el.n(rng)):
        t, hu = el.size(rng), el.hu_value(rng) + (rng.uniform(35.0, 55.0) if s.contrast else 0.0)
        if i < len(effusions):
            sign, th = effusions[i]
            m = s.free & (s.masks["side"] == sign) & (wall >= 2.0 + th) & (wall < 2.0 + th + t) & (th > 3.0)
            c = (sign * 0.5 * an.cav[0], 0.6 * an.cav[2], 0.0)
            s.paint(
                record("atelectasis", c, kind="compressive", thickness_mm=t, hu=hu),
                s.whole(),
                m,
                hu,
                occupy=True,
            )
            continue
        kind = str(rng.choice(["dependent", "plate"]))
        basal = s.free & (s.whole().Z < 0.35 * an.height)
        cand = basal & (wall < 8.0) & (s.whole().Y > 0.3 * an.cav[2]) if kind == "dependent" else basal
        pts = s.pick(rng, cand, 1)
        if not len(pts):
            continue
        c, L = pts[0], float(rng.uniform(25.0, 50.0))
        b = s.box(c, (L, L, L))
        if b is None:
            continue
        if kind == "dependent":
            m = (wall[b.sl] < 2.0 + t) & (b.dist(c) < L / 2)
        else:
            # a plate (discoid) band: a sheet through the z axis, so a line on axial slices
            a = rng.uniform(0, np.pi)
            n = np.array([np.cos(a), np.sin(a), rng.uniform(-0.2, 0.2)])
            n /= np.linalg.norm(n)
            off = (b.X - c[0]) * n[0] + (b.Y - c[1]) * n[1] + (b.Z - c[2]) * n[2]
            m = (np.abs(off) < t / 2) & (b.dist(c) < L / 2)
        s.paint(record("atelectasis", c, kind=kind, thickness_mm=t, length_mm=L, hu=hu), b, m & s.free[b.sl], hu,
                occupy=True)  # fmt: skip


def consolidation(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Subpleural airspace consolidation (enhancing with contrast) with a few air bronchograms."""
    for _ in range(el.n(rng)):
        d, hu = el.size(rng), el.hu_value(rng) + (rng.uniform(15.0, 30.0) if s.contrast else 0.0)
        pts = s.pick(rng, s.free & (s.masks["wall_depth"] < d / 2), 1)
        if not len(pts):
            continue
        c = pts[0]
        b = s.box(c, d * 0.75 + 4)
        if b is None:
            continue
        radii = d / 2 * rng.uniform(0.7, 1.2, 3)
        m = (_blob(rng, b, c, radii) < 1.0) & s.free[b.sl]
        val = np.full(b.shape, hu, np.float32)
        hil = s.an.hila[0 if c[0] > 4 else 1]
        u = (hil - c) / (np.linalg.norm(hil - c) + 1e-6)
        for _ in range(int(rng.integers(2, 5))):  # air bronchograms, pointing back to the hilum
            v = u + rng.normal(0, 0.35, 3)
            a = c - v / np.linalg.norm(v) * d * 0.45
            e = c + v / np.linalg.norm(v) * d * 0.2
            val[segment_dist(b, a, e) < rng.uniform(0.9, 1.6)] = -900.0
        s.paint(record("consolidation", c, diameter_mm=d, hu=hu), b, m, val, occupy=True)


def bullae(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Emphysematous bullae: thin-walled air spaces, subpleural in the upper lungs."""
    for _ in range(el.n(rng)):
        d = el.size(rng)
        upper = s.free & (s.masks["wall_depth"] < d / 2 + 3) & (s.whole().Z > 0.55 * s.an.height)
        pts = s.pick(rng, upper, 1)
        if not len(pts):
            continue
        c = pts[0]
        b = s.box(c, d / 2 + 3)
        if b is None:
            continue
        r = b.dist(c, d / 2 * np.array([1.0, 0.85, 0.9]))
        val = np.where(r < 1.0 - 1.2 / (d / 2), float(rng.uniform(-1000.0, -995.0)), -600.0).astype(
            np.float32
        )
        s.paint(
            record("bulla", c, diameter_mm=d, hu=float(val.min())),
            b,
            (r < 1.0) & s.lung0[b.sl],
            val,
            occupy=True,
        )


def emphysema(s: Scene, el: Element, rng: np.random.Generator, vessels: np.ndarray, pattern: str) -> None:
    """Low-attenuation holes: centrilobular (upper lungs, scattered) or panlobular (diffuse, basal too),
    sparing the vessels."""
    g, hu = s.grid, el.hu_value(rng)
    n = smooth_noise(rng, g.shape, (4.0 / g.dz, 4.0 / g.dy, 4.0 / g.dx))
    zt = s.whole().Z / s.an.height
    if pattern == "panlobular":
        m = n > 0.5 + 0.4 * np.clip(zt, 0, 1)
    else:
        m = n > 1.2 + 2.0 * np.clip(0.6 - zt, 0, 1)
    m &= s.masks["lung"] & s.free & ~vessels & (s.img > hu)
    c = (0.0, 0.0, 0.7 * s.an.height)
    s.paint(record("emphysema", c, pattern=pattern, hu=hu), s.whole(), m, hu)


def ground_glass(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Ill-defined ground-glass patches that keep the vessels visible (the brighter of lung and patch)."""
    for _ in range(el.n(rng)):
        d, hu = el.size(rng), el.hu_value(rng)
        pts = s.pick(rng, s.free & s.masks["lung"], 1, margin_mm=d / 2 + 5)
        if not len(pts):
            continue
        c = pts[0]
        b = s.box(c, d * 0.7 + 4)
        if b is None:
            continue
        w = np.clip((1.0 - _blob(rng, b, c, d / 2 * rng.uniform(0.7, 1.2, 3), 0.35)) / 0.3, 0.0, 1.0)
        img = s.img[b.sl]
        val = np.maximum(img, img * (1 - w) + hu * w)
        s.paint(
            record("ground_glass", c, diameter_mm=d, hu=hu),
            b,
            (w > 0.05) & s.free[b.sl] & s.masks["lung"][b.sl],
            val,
        )


def fibrosis(s: Scene, el: Element, rng: np.random.Generator, pattern: str) -> None:
    """Subpleural basal reticulation (a net of lines) or honeycombing (clustered air cysts with thick walls)."""
    band, hu = el.size(rng), el.hu_value(rng)
    zc = s.grid.axes()[0]
    ks = np.flatnonzero(zc < 0.45 * s.an.height)
    if not len(ks):
        return
    g = s.grid
    whole, k0, k1 = s.whole(), int(ks[0]), int(ks[-1]) + 1
    b = Box((slice(k0, k1), slice(None), slice(None)), whole.X, whole.Y, whole.Z[k0:k1])
    region = s.masks["lung"][b.sl] & s.free[b.sl] & (s.masks["wall_depth"][b.sl] < 2.0 + band)
    step = 3.0 if pattern == "reticulation" else 3.5  # honeycomb cysts 3-10 mm (textbook)
    n = smooth_noise(rng, b.shape, (step / g.dz, step / g.dy, step / g.dx))
    if pattern == "reticulation":
        m, val = region & (np.abs(n) < 0.15), np.float32(hu)
    else:
        m, val = region, np.where(np.abs(n) < 0.35, hu, -980.0).astype(np.float32)
    c = (0.0, 0.5 * s.an.cav[2], 0.15 * s.an.height)
    s.paint(record("fibrosis", c, pattern=pattern, band_mm=band, hu=hu), b, m, val)


def granulomas(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Calcified granulomas: small dense spheres in the lungs (partial-volume edges)."""
    h = s.grid.h
    for c in s.pick(rng, s.free & s.masks["lung"], el.n(rng), margin_mm=8.0):
        d, hu = el.size(rng), el.hu_value(rng)
        b = s.box(c, d / 2 + 2 * h)
        if b is None:
            continue
        occ = np.clip(0.5 - (b.dist(c) - d / 2) / h, 0.0, 1.0)
        img = s.img[b.sl]
        s.paint(record("calcified_granuloma", c, diameter_mm=d, hu=hu), b, occ > 0.05, img + occ * (hu - img))


def bronchi(s: Scene, el: Element, rng: np.random.Generator, sub_ds: int) -> None:
    """Extra segmental and subsegmental bronchi with walls, from each hilum (dilated by the drawn lumen factor:
    bronchiectasis); painted in the lungs only."""
    g, an = s.grid, s.an
    zc, yc, xc = g.axes()
    w, hu, scale = el.size(rng), el.hu_value(rng), float(el.choice(rng))
    segs = []
    lung_ds = s.masks["lung"][:, ::sub_ds, ::sub_ds]
    for si, sign in enumerate((1, -1)):
        kk, jj, ii = np.nonzero(lung_ds & (s.masks["side"][:, ::sub_ds, ::sub_ds] == sign))
        if len(kk) < 8:
            continue
        pick = rng.choice(len(kk), min(len(kk), el.n(rng)), replace=False)
        pts = np.stack([xc[ii[pick] * sub_ds], yc[jj[pick] * sub_ds], zc[kk[pick]]], 1)
        tree = grow_tree(rng, an.hila[si], pts, 1.6)
        segs += [[*t[:6], t[6] * 0.8 * scale, t[7] * 0.6 * scale, t[8]] for t in tree if 1 <= t[8] <= 4]
    if not segs:
        return
    arr = np.asarray(segs)
    wall = np.zeros(g.shape, np.float32)
    raster_tubes(wall, arr, g, grow=w)
    lumen = np.zeros(g.shape, np.float32)
    raster_tubes(lumen, arr, g)
    val = s.img + wall * (hu - s.img)
    val += lumen * (-1000.0 - val)
    m = (wall > 0.05) & s.lung0 & s.free
    c = (0.0, 0.0, float(an.hila[:, 2].mean()))
    s.paint(record("bronchi", c, wall_mm=w, hu=hu, lumen_factor=scale, segments=len(segs)), s.whole(), m, val)
