"""The phantoms' tumours: how many, where (juxtapleural, hilar, intrapulmonary), how large, and their texture."""

from __future__ import annotations

import numpy as np

from lungtumor.data.anatomy import Anatomy
from lungtumor.data.geometry import Grid, smooth_noise
from lungtumor.imaging.components import label_components

#: Where a tumour sits: against the chest wall, at the hilum (vessels, mediastinum), or inside the lung.
LESION_KINDS = ("juxtapleural", "hilar", "intrapulmonary")


#: Tumour textures (``"ground_glass"``, a pure ground-glass nodule, only in the varied phantoms).
TEXTURES = ("solid", "necrotic", "cavitary", "subsolid", "ground_glass")


#: Training-set lesion plans: ``"standard"`` draws training phantoms like test phantoms; ``"rich"`` gives
#: training phantoms more tumours (0-5, mean 2.7) and more small ones (40 % under 15 mm), so that a few dozen
#: training cases show the model many more lesions; ``"rich_basal"`` is ``"rich"`` plus, in 30 % of the cases,
#: one large mass (50-110 mm) on the diaphragm (kind ``"basal"``), which real scans have (the IBSI CT's 359 mL
#: tumour) and the other plans never place. Test phantoms are always ``"standard"``.
LESION_PLANS = ("standard", "rich", "rich_basal")


#: ``hilar_vessels``: vessel radii near a tree's hilar root times 1 + boost * exp(-d / length): (boost, length
#: mm). 2.3x at the root (trunks about 19-31 mm across, like the main and lobar pulmonary arteries and veins at
#: a real hilum), 1.5x 25 mm out, 1.2x at 50 mm.
HILAR_BOOST = (1.3, 25.0)


def sample_lesion_plan(rng: np.random.Generator, kind: str = "standard") -> list[dict]:
    """Draw how many tumours a case has and each one's size, site and texture.

    ``kind="standard"``: 0-3 tumours (about 12 % tumour-free), 30 % of them 5-15 mm, the rest 15-70 mm
    (log-uniform). ``kind="rich"`` (training phantoms only): 0-5 tumours (5 % tumour-free), 40 % small.
    Sites and textures are drawn the same way in both. ``kind="rich_basal"``: ``"rich"`` (the same draws),
    then with probability 0.3 one more tumour of kind ``"basal"``, 50-110 mm, solid or necrotic, resting on
    the diaphragm. Returns a list of {"diameter_mm", "kind", "texture", "spiculated"}, largest first.
    """
    plan_kind = kind
    if kind in ("rich", "rich_basal"):
        n, p_small = int(rng.choice(6, p=[0.05, 0.1, 0.25, 0.3, 0.2, 0.1])), 0.4
    else:
        n, p_small = int(rng.choice(4, p=[0.12, 0.53, 0.25, 0.10])), 0.3
    plan = []
    for _ in range(n):
        if rng.random() < p_small:
            d = float(np.exp(rng.uniform(np.log(5.0), np.log(15.0))))
        else:
            d = float(np.exp(rng.uniform(np.log(15.0), np.log(70.0))))
        kind = str(rng.choice(LESION_KINDS, p=[0.38, 0.22, 0.40]))
        u = rng.random()
        if d < 30 and u < 0.15:
            tex = "subsolid"
        elif d > 30 and u < 0.4:
            tex = "necrotic"
        elif d > 25 and u > 0.9:
            tex = "cavitary"
        else:
            tex = "solid"
        plan.append(
            {
                "diameter_mm": round(d, 2),
                "kind": kind,
                "texture": tex,
                "spiculated": bool(rng.random() < 0.45),
            }
        )
    if plan_kind == "rich_basal" and rng.random() < 0.3:  # drawn after the "rich" draws, which stay the same
        d = float(np.exp(rng.uniform(np.log(50.0), np.log(110.0))))
        tex = "necrotic" if rng.random() < 0.4 else "solid"
        plan.append({"diameter_mm": round(d, 2), "kind": "basal", "texture": tex, "spiculated": False})
    return sorted(plan, key=lambda p: -p["diameter_mm"])


def sample_grid(rng: np.random.Generator, an: Anatomy, matrix: int, slices: int | None) -> Grid:
    fov = max(rng.uniform(1.0, 1.5) * 310.0, 2 * an.A + 25.0) * (1.0 if matrix >= 256 else 1.05)
    fov = min(fov, 2 * an.A * 1.55 + 40)
    dx = fov / matrix
    dz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0], p=[0.06, 0.12, 0.1, 0.2, 0.17, 0.15, 0.2]))
    if slices is None:
        extent = rng.uniform(180.0, 330.0)
        nz = int(np.clip(round(extent / dz), 32, 128 if matrix <= 256 else 320))
    else:
        nz = int(slices)
    ext = nz * dz
    lung_lo, lung_hi = -an.dome_drop * 0.8, an.height
    if ext >= lung_hi - lung_lo + 20:
        z0 = lung_lo - rng.uniform(0.2, 0.8) * (ext - (lung_hi - lung_lo))
    else:  # a partial scan: a window inside the lungs, mostly around the hila
        z0 = rng.uniform(
            lung_lo + 0.1 * an.height, max(lung_lo + 0.1 * an.height, lung_hi - ext - 0.1 * an.height)
        )
    shift = rng.uniform(-0.04, 0.04, 2) * fov
    x0 = -(matrix - 1) / 2 * dx + shift[0]
    y0 = -(matrix - 1) / 2 * dx + shift[1] + 0.05 * an.B_post
    return Grid(nz, matrix, matrix, dx, dx, dz, x0, y0, z0)


def place(
    rng, plan: dict, grid: Grid, depth, wall, floor, dss: tuple[int, int], taken: list, hila: np.ndarray
):
    """Pick a centre (x, y, z mm, body frame) and radius for a tumour; None when nothing fits.

    ``depth``, ``wall`` and ``floor`` (mm, on the coarse lung grid) are the distances to the lung's boundary,
    to the chest wall, and down to the diaphragm (:func:`floor_distance`)."""
    zc, yc, xc = grid.axes()
    R = plan["diameter_mm"] / 2
    dsz, ds = dss
    for _ in range(4):
        kind = plan["kind"]
        if kind == "intrapulmonary":
            ok = depth > R + (0.25 * R if plan["spiculated"] else 1.0)
        elif kind == "juxtapleural":
            ok = (depth > 0.3 * R) & (depth < 0.6 * R + 1) & (np.abs(wall - depth) < 3 + 0.1 * R)
        elif kind == "basal":  # centre 0.25-0.5 R above the diaphragm: the mass is cut flat by its dome
            ok = (depth > 0.25 * R) & (floor > 0.25 * R) & (floor < 0.5 * R + 2)
        else:
            ok = (depth > 0.3 * R) & (depth < 0.7 * R + 2)
        kk, jj, ii = np.nonzero(ok)
        if len(kk):
            pts = np.stack([xc[ii * ds], yc[jj * ds], zc[kk * dsz]], 1)
            zlo, zhi = zc[0] + min(R, 0.4 * (zc[-1] - zc[0])), zc[-1] - min(R, 0.4 * (zc[-1] - zc[0]))
            good = (pts[:, 2] >= zlo) & (pts[:, 2] <= zhi)
            for c, r in taken:
                good &= np.linalg.norm(pts - c, axis=1) > R * 1.3 + r * 1.3 + 6
            if kind == "hilar":
                dh = np.min(np.linalg.norm(pts[:, None, :] - hila[None], axis=2), 1)
                near = good & (dh < R + 40)
                good = near if near.any() else good
            idx = np.flatnonzero(good)
            if len(idx):
                c = pts[rng.choice(idx)] + rng.uniform(-0.5, 0.5, 3) * [
                    grid.dx * ds,
                    grid.dy * ds,
                    grid.dz * dsz,
                ]
                return c, R
        R *= 0.7
        if R < 2.5:
            break
    return None


def floor_distance(lung: np.ndarray, dz: float) -> np.ndarray:
    """(z, y, x) float32 mm from each lung voxel down (towards -z) to the first non-lung voxel of its column:
    the height above the diaphragm. inf off the lung and where the lung runs down to the scan's first slice
    (a partial scan: no diaphragm below)."""
    out = np.full(lung.shape, np.inf, np.float32)
    run = np.zeros(lung.shape[1:], np.float32)
    from_edge = lung[0].copy()
    for k in range(lung.shape[0]):
        run = np.where(lung[k], run + dz, 0.0)
        from_edge &= lung[k]
        out[k] = np.where(lung[k] & ~from_edge, run - 0.5 * dz, np.inf)
    return out


def render_tumour(
    rng, img, lid, lung, k: int, c: np.ndarray, R: float, plan: dict, grid: Grid, an: Anatomy
) -> None:
    """Draw tumour ``k`` (centre ``c`` mm, radius ``R`` mm) into ``img`` and mark its voxels in ``lid``."""
    h = grid.h
    lobes = [(c, R * 0.8)]
    for _ in range(rng.integers(2, 7)):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        lobes.append((c + u * R * rng.uniform(0.25, 0.5), R * rng.uniform(0.35, 0.62)))
    waves = [
        (rng.normal(size=3) * 2 * np.pi / (R * rng.uniform(0.5, 1.3)), rng.uniform(0, 2 * np.pi))
        for _ in range(5)
    ]
    amp = R * rng.uniform(0.03, 0.07)
    spic = []
    if plan["spiculated"]:
        for _ in range(rng.integers(5, 16)):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            spic.append((c + u * 0.6 * R, c + u * R * rng.uniform(1.15, 1.7), rng.uniform(0.6, 1.6)))
    m = R * 1.8 + 3
    lo = grid.to_index(c - m)
    hi = grid.to_index(c + m)
    k0, j0, i0 = (max(int(np.floor(v)), 0) for v in lo)
    k1, j1, i1 = (min(int(np.ceil(v)) + 1, n) for v, n in zip(hi, grid.shape, strict=True))
    if k0 >= k1 or j0 >= j1 or i0 >= i1:
        return
    zc, yc, xc = grid.axes()
    X = xc[i0:i1][None, None, :]
    Y = yc[j0:j1][None, :, None]
    Z = zc[k0:k1][:, None, None]
    f = None
    for lc, lr in lobes:
        d = np.sqrt((X - lc[0]) ** 2 + (Y - lc[1]) ** 2 + (Z - lc[2]) ** 2) - lr
        f = d if f is None else np.minimum(f, d)
    for kv, ph in waves:
        f = f + amp * np.sin(X * kv[0] + Y * kv[1] + Z * kv[2] + ph)
    for a, b, r0 in spic:
        ab = b - a
        t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / (ab @ ab), 0, 1)
        d = np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)
        f = np.minimum(f, d - r0 * (1 - 0.85 * t))
    lbox = lung[k0:k1, j0:j1, i0:i1]
    idb = lid[k0:k1, j0:j1, i0:i1]
    free = lbox & (idb == 0)
    occ = np.clip(0.5 - f / h, 0, 1) * free
    inside = (f < 0) & free
    # A tumour is one object: spicules thinner than a voxel would leave detached label fragments that count as
    # extra lesions. Keep the 26-connected piece that holds the most voxels (the core).
    comp, n = label_components(inside)
    if n > 1:
        inside = comp == (1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
    het = smooth_noise(rng, f.shape, (3.0 / grid.dz, 3.0 / grid.dy, 3.0 / grid.dx))
    depth = -f
    if plan["kind"] == "juxtapleural":
        base = an.hu_muscle + rng.normal(0, 5)
    else:
        base = rng.uniform(18.0, 52.0) + (0.1 * (an.hu_blood - 40) if an.hu_blood > 100 else 0)
    hu = base + rng.uniform(8, 20) * het
    tex = plan["texture"]
    if tex == "necrotic":
        core = np.clip((depth - 0.35 * R) / (0.15 * R), 0, 1)
        hu = hu - core * rng.uniform(15, 40)
    elif tex == "cavitary":
        u = rng.normal(size=3)
        cc = c + u / np.linalg.norm(u) * 0.2 * R
        dcav = np.sqrt((X - cc[0]) ** 2 + (Y - cc[1]) ** 2 + (Z - cc[2]) ** 2) - R * rng.uniform(0.2, 0.4)
        dcav = dcav + 0.15 * R * het
        hu = hu + (-960.0 - hu) * np.clip(0.5 - dcav / h, 0, 1)
    if rng.random() < 0.1 and R > 8:  # calcification
        hu = np.where(het > 2.3, 350.0, hu)
    box = img[k0:k1, j0:j1, i0:i1]
    if tex == "subsolid":
        solid = np.clip((depth - R * rng.uniform(0.4, 0.9)) / h + 0.5, 0, 1)
        ggo = rng.uniform(-700, -420) + 40 * het
        hu = ggo * (1 - solid) + hu * solid
        box[...] = np.maximum(box, box * (1 - occ) + hu * occ)
    elif tex == "ground_glass":  # hazy, vessels kept: -750 to -450 HU (review)
        ggo = rng.uniform(-750, -450) + 30 * het
        box[...] = np.maximum(box, box * (1 - occ) + ggo * occ)
    else:
        box[...] = box * (1 - occ) + hu * occ
    idb[inside] = k
