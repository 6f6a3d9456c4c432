"""The steps that build one phantom, shared by the default phantoms (:mod:`lungtumor.data.phantom`) and the
varied ones (:mod:`lungtumor.data.varied`): vessels, airways, tumours, the default scanner and the final
image, label and lesion records. Arrays are (z, y, x) on a :class:`~lungtumor.data.geometry.Grid` in the body
frame (mm, :mod:`lungtumor.data.anatomy`); intensities in HU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungtumor.data.geometry import grow_tree, raster_tubes, widen_near_root
from lungtumor.data.lesions import HILAR_BOOST, floor_distance, place, render_tumour
from lungtumor.imaging.volume import Volume

#: Keys of a tumour's plan that the varied phantoms add and its lesion record copies (absent by default).
VARIETY_LESION_KEYS = ("type", "invasion", "invasion_voxels", "post_obstructive_atelectasis")


@dataclass
class PhantomCase:
    """One phantom: image (int16 HU) and label (uint8) on one grid, the lesion records, and helper masks
    (z, y, x) bool: ``lung`` (lung parenchyma incl. vessels and tumours), ``vessels`` (vessel occupancy >= 0.5),
    ``bone``."""

    image: Volume
    label: Volume
    lesions: list[dict]
    lung: np.ndarray
    vessels: np.ndarray
    bone: np.ndarray
    confounders: np.ndarray | None = None  # uint8 (z, y, x): the varied phantoms' confounder ids, 0 elsewhere
    variety: dict | None = None  # the varied phantoms' record (lesions.json "variety"); None by default


def as_rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence) -> np.random.Generator:
    """``rng_or_seed`` itself if a Generator, else a new Generator seeded with it."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def paint_vessels(rng: np.random.Generator, an, grid, masks: dict, img: np.ndarray, hilar_vessels: bool):
    """Arteries and veins from the hila, and a few granulomas' tubes; paints the vessels into ``img``.

    Returns (vessel mask, lung subsampled by ``ds``, ``ds``, granuloma tubes)."""
    lung = masks["lung"]
    # vessel trees: arteries and veins for each lung, from the hila to points spread through the lung
    zc, yc, xc = grid.axes()
    occ = np.zeros(grid.shape, np.float32)
    ds = max(1, round(4.0 / grid.dx))
    sub = lung[:, ::ds, ::ds]
    hila = an.hila
    r_leaf = rng.uniform(0.8, 1.05)
    for si, sign in enumerate((1, -1)):
        kk, jj, ii = np.nonzero(sub & (masks["side"][:, ::ds, ::ds] == sign))
        if len(kk) < 8:
            continue
        for dzh in (10.0, -25.0):
            n = min(len(kk), int(rng.integers(150, 260)))
            pick = rng.choice(len(kk), n, replace=False)
            pts = np.stack([xc[ii[pick] * ds], yc[jj[pick] * ds], zc[kk[pick]]], 1)
            pts += rng.uniform(-0.5, 0.5, pts.shape) * [grid.dx * ds, grid.dy * ds, grid.dz]
            root = hila[si] + [0.0, rng.uniform(-10, 10), dzh]
            segs = grow_tree(rng, root, pts, r_leaf)
            if hilar_vessels:
                segs = widen_near_root(segs, root, *HILAR_BOOST)
            raster_tubes(occ, segs, grid)
    # a few vessel knots / granulomas: nodule-like bright dots that are not tumours
    gran = []
    if len(np.flatnonzero(sub)):
        kk, jj, ii = np.nonzero(sub)
        for q in rng.choice(len(kk), int(rng.integers(2, 9))):
            p = np.array([xc[ii[q] * ds], yc[jj[q] * ds], zc[kk[q]]])
            gran.append([*p, *(p + rng.normal(0, 1.0, 3)), rng.uniform(1.2, 3.0), rng.uniform(1.0, 2.5), 0])
    occ *= masks["soft"]
    vessels = occ >= 0.5
    img += occ * (an.hu_blood - img)
    return vessels, sub, ds, gran


def paint_airways(
    rng: np.random.Generator, an, grid, masks: dict, img: np.ndarray, sub: np.ndarray, ds: int, gran
):
    """Bronchi (walls, then air) and the granulomas, painted into ``img``."""
    zc, yc, xc = grid.axes()
    hila = an.hila
    lung = masks["lung"]
    # airways: main bronchi from the carina, lobar and segmental bronchi into each lung
    air = [[*an.carina, *hila[0], 6.5, 5.5, 0], [*an.carina, *hila[1], 7.0, 6.0, 0]]
    for si, sign in enumerate((1, -1)):
        kk, jj, ii = np.nonzero(sub & (masks["side"][:, ::ds, ::ds] == sign))
        if len(kk) >= 8:
            pick = rng.choice(len(kk), min(len(kk), 14), replace=False)
            pts = np.stack([xc[ii[pick] * ds], yc[jj[pick] * ds], zc[kk[pick]]], 1)
            tr = grow_tree(rng, hila[si], pts, 2.2)
            air += [list(t[:6]) + [t[6] * 0.8, t[7] * 0.5, t[8]] for t in tr if t[8] <= 2]
    air = np.asarray(air)
    w = np.zeros(grid.shape, np.float32)
    raster_tubes(w, air, grid, grow=1.3)
    w *= masks["soft"] | (np.abs(zc - an.carina[2]) < 80)[:, None, None]
    img += w * (an.hu_muscle - img)
    w[...] = 0
    raster_tubes(w, air, grid)
    w *= masks["soft"] | (np.abs(zc - an.carina[2]) < 80)[:, None, None]
    img += w * (-1000.0 - img)
    del w
    if gran:
        g = np.zeros(grid.shape, np.float32)
        raster_tubes(g, np.asarray(gran), grid)
        g *= lung
        img += g * (rng.uniform(60, 400) - img)


def place_tumours(
    rng: np.random.Generator,
    an,
    grid,
    masks: dict,
    img: np.ndarray,
    plan: list[dict],
    ds: int,
    lung: np.ndarray | None = None,
    allow: Callable[[dict, np.ndarray, float], np.ndarray] | None = None,
):
    """Place and render the planned tumours; returns (lesion id map uint8, [(id, plan, radius mm)]).

    ``lung`` (z, y, x) bool: where tumours may sit (default ``masks["lung"]``); ``allow(plan, centre mm,
    radius mm)``: the (z, y, x) bool mask one tumour may fill (default ``lung``: an invasive tumour's is more).
    """
    lung = masks["lung"] if lung is None else lung
    hila = an.hila
    # tumours
    lid = np.zeros(grid.shape, np.uint8)
    dsz = max(1, round(3.0 / grid.dz))
    lds = lung[::dsz, ::ds, ::ds]
    samp = (grid.dz * dsz, grid.dy * ds, grid.dx * ds)
    depth = (
        ndi.distance_transform_edt(lds, sampling=samp).astype(np.float32)
        if lds.any()
        else np.zeros(lds.shape)
    )
    wall = masks["wall_depth"][::dsz, ::ds, ::ds]
    floor = floor_distance(lds, samp[0]) if any(p["kind"] == "basal" for p in plan) else None
    taken: list = []
    placed = []
    for p in plan:
        got = place(rng, p, grid, depth, wall, floor, (dsz, ds), taken, hila)
        if got is None:
            continue
        c, R = got
        k = len(placed) + 1
        render_tumour(rng, img, lid, lung if allow is None else allow(p, c, R), k, c, R, p, grid, an)
        taken.append((c, R))
        placed.append((k, p, R))
    return lid, placed


def scan(rng: np.random.Generator, grid, masks: dict, img: np.ndarray) -> None:
    """The scanner: point-spread blur and correlated noise, in place."""
    # scanner: point-spread blur, correlated noise
    sxy = rng.uniform(0.45, 0.85) / grid.dx
    ndi.gaussian_filter(img, (0.35 * max(1.0, 2.0 / grid.dz), sxy, sxy), output=img, truncate=3.0)
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    nc = rng.uniform(0.6, 1.1) * 0.7 / grid.dx * (1 if grid.dx < 1.2 else 1.2)
    ndi.gaussian_filter(noise, (0, nc, nc), output=noise, truncate=3.0)
    sigma = rng.uniform(12.0, 28.0) * np.sqrt(2.5 / max(grid.dz, 1.0)) ** 0.5
    noise *= sigma / (float(noise[:: max(1, grid.nz // 8)].std()) + 1e-6)
    noise[~masks["body"]] *= 0.3
    img += noise


def finish_case(
    rng: np.random.Generator,
    grid,
    img: np.ndarray,
    lid: np.ndarray,
    placed: list,
    masks: dict,
    vessels: np.ndarray,
) -> PhantomCase:
    """The phantom from the rendered ``img`` (z, y, x) float HU and tumour ids ``lid``: int16 image clipped to
    [-1024, 3071] HU, uint8 label, origin (drawn from ``rng``), spacing (float32-exact) and lesion records."""
    arr = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    label = (lid > 0).astype(np.uint8)
    origin = (
        float(rng.uniform(-260, -140) + grid.x0 * 0),
        float(rng.uniform(-330, -170)),
        float(np.round(rng.uniform(-700, -100), 1)),
    )
    # float32-exact geometry, so volumes computed here equal those computed after a NIfTI round trip
    spacing = tuple(float(np.float32(round(v, 4))) for v in (grid.dx, grid.dy, grid.dz))
    origin = tuple(float(np.float32(v)) for v in origin)
    image = Volume(arr, spacing=spacing, origin=origin)
    lab = image.with_array(label)
    return PhantomCase(image, lab, _lesion_records(image, lid, placed), masks["lung"], vessels, masks["bone"])


def _lesion_records(image: Volume, lid: np.ndarray, placed: list) -> list[dict]:
    """One record per tumour with voxels in ``lid`` (z, y, x): volume (mL), world centre (mm), design."""
    vv = image.voxel_volume_mm3
    lesions: list[dict] = []
    if placed:
        counts = np.bincount(lid.ravel(), minlength=len(placed) + 1)
        nzi = np.nonzero(lid)
        ids = lid[nzi]
        cents = [[float(np.mean(a[ids == k])) if counts[k] else 0.0 for a in nzi] for k, _, _ in placed]
        for (k, p, R), cm in zip(placed, cents, strict=True):
            if counts[k] == 0:
                continue
            ml = counts[k] * vv / 1000.0
            lesions.append(
                {
                    "id": len(lesions) + 1,
                    "kind": p["kind"],
                    "texture": p["texture"],
                    "spiculated": p["spiculated"],
                    "diameter_mm": round(2 * R, 2),
                    "equiv_diameter_mm": round(float((6 * ml * 1000 / np.pi) ** (1 / 3)), 2),
                    "volume_ml": ml,
                    "voxels": int(counts[k]),
                    "centre_mm": [round(float(v), 2) for v in image.index_to_world(np.array([cm]))[0]],
                    **{key: p[key] for key in VARIETY_LESION_KEYS if key in p},
                }
            )
    return lesions
