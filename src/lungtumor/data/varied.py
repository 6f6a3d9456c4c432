"""A varied phantom (:class:`~lungtumor.data.variety.Variety`): the default phantom's chest, vessels, airways
and tumours, with the drawn confounders, tumour variants and acquisition, each recorded in the case's
``variety`` dict (lesions.json). The tumour label is the tumours' voxels only: confounders painted before the
tumours take their voxels away from where tumours may go, and those painted after keep off the tumours.

Order: anatomy (contrast, slice thickness) -> breasts, arms -> vessels, airways -> effusion, atelectasis,
consolidation, bullae -> tumours (invading the chest wall or the mediastinum) -> post-obstructive atelectasis,
emphysema, ground glass, fibrosis, granulomas, bronchi, lymph nodes, oesophagus, abdomen, clips, port ->
acquisition (breathing, kernel, streaks, noise).
"""

from __future__ import annotations

import numpy as np

from lungtumor.data import body_confounders as body
from lungtumor.data import lung_confounders as lc
from lungtumor.data.acquisition import acquire, apply_contrast, with_fov, with_thickness
from lungtumor.data.anatomy import diaphragm_height, render_anatomy, sample_anatomy
from lungtumor.data.builder import PhantomCase, finish_case, paint_airways, paint_vessels, place_tumours
from lungtumor.data.geometry import smooth_noise
from lungtumor.data.lesions import sample_grid, sample_lesion_plan
from lungtumor.data.scene import Scene, finish_records, record
from lungtumor.data.variety import Variety, draw_present, draw_tumours, element_streams


def _invasion_zone(s: Scene, p: dict, c: np.ndarray, R: float) -> np.ndarray:
    """Where tumour ``p`` (centre ``c`` mm, radius ``R`` mm) may grow: the aerated lung, and with invasion the
    chest wall's soft tissue up to 0.6 R deep, or the mediastinum's fat and soft tissue above the diaphragm
    (never bone or air). (z, y, x) bool; records the tumour in ``s.taken``."""
    s.taken.append((np.asarray(c, float), float(R)))
    if p.get("invasion", "none") == "none":
        return s.free
    allow = s.free.copy()
    b = s.box(c, 1.8 * R + 3)
    if b is None:
        return allow
    img, wall = s.img[b.sl], s.masks["wall_depth"][b.sl]
    soft = ~s.lung0[b.sl] & s.masks["body"][b.sl] & ~s.masks["bone"][b.sl] & (img > -200) & (img < 250)
    if p["invasion"] == "chest_wall":
        zone = soft & (wall <= 2.5) & (wall > -0.6 * R)
    else:
        zone = soft & (wall > 2.0) & (b.Z > diaphragm_height(s.an, b.X, b.Y))
    allow[b.sl] |= zone
    return allow


def _post_obstructive(s: Scene, placed: list, lo: tuple, rng: np.random.Generator) -> None:
    """Collapsed lung distal to each flagged tumour, from its surface outwards away from the hilum in a cone
    (20-35 degrees), ``lo`` = (length range mm, HU range); enhancing with contrast more than the tumour
    (textbook). Never labelled tumour."""
    (l0, l1), (h0, h1) = lo
    for (k, p, _), (c, R) in zip(placed, s.taken, strict=True):
        if not p.get("post_obstructive_atelectasis"):
            continue
        hil = s.an.hila[0 if c[0] > 4 else 1]
        u = (c - hil) / (np.linalg.norm(c - hil) + 1e-6)
        L, hu = float(rng.uniform(l0, l1)), float(rng.uniform(h0, h1))
        hu += float(rng.uniform(40.0, 60.0)) if s.contrast else 0.0
        b = s.box(c + u * (L / 2), L / 2 + 1.8 * R + 4)
        if b is None:
            continue
        t = (b.X - c[0]) * u[0] + (b.Y - c[1]) * u[1] + (b.Z - c[2]) * u[2]
        perp = np.sqrt(np.maximum(b.dist(c) ** 2 - t**2, 0.0))
        cone = (
            (t > -0.2 * R)
            & (t < R + L)
            & (perp < 0.9 * R + np.maximum(t, 0) * np.tan(rng.uniform(0.35, 0.6)))
        )
        side = np.sign(c[0] - 4.0)
        m = cone & s.masks["lung"][b.sl] & (s.masks["side"][b.sl] == side)
        rec = record("post_obstructive_atelectasis", c + u * (R + L / 2), length_mm=L, hu=hu, tumour=k)
        s.paint(rec, b, m, hu, occupy=True)


def _before_tumours(s: Scene, present: set, v: Variety, st: dict, vessels: np.ndarray) -> None:
    """Effusion, atelectasis, consolidation and bullae: they take their voxels from where tumours may go."""
    c = v.confounders
    effusions = lc.effusion(s, c.effusion, st["effusion"]) if "effusion" in present else []
    if "atelectasis" in present:
        lc.atelectasis(s, c.atelectasis, st["atelectasis"], effusions)
    if "consolidation" in present:
        lc.consolidation(s, c.consolidation, st["consolidation"])
    if "emphysema" in present:
        lc.bullae(s, c.emphysema, st["emphysema"])
    vessels &= s.masks["lung"] | ~s.lung0  # no vessels left in the effusion


def _after_tumours(s: Scene, present: set, v: Variety, st: dict, vessels: np.ndarray, ds: int) -> list:
    """The confounders painted around the tumours; returns the metal streak sources."""
    c = v.confounders
    if "emphysema" in present:
        lc.emphysema(s, c.emphysema, st["emphysema"], vessels, str(c.emphysema.choice(st["emphysema"])))
    if "ground_glass" in present:
        lc.ground_glass(s, c.ground_glass, st["ground_glass"])
    if "fibrosis" in present:
        lc.fibrosis(s, c.fibrosis, st["fibrosis"], str(c.fibrosis.choice(st["fibrosis"])))
    if "granulomas" in present:
        lc.granulomas(s, c.granulomas, st["granulomas"])
    if "bronchi" in present:
        lc.bronchi(s, c.bronchi, st["bronchi"], ds)
    for name, fn in (
        ("lymph_nodes", body.lymph_nodes),
        ("oesophagus", body.oesophagus),
        ("abdomen", body.abdomen),
    ):
        if name in present:
            fn(s, getattr(c, name), st[name])
    a, metal = v.acquisition, []
    if "metal" in present:
        metal += body.clips(s, a.metal, st["metal"])
    if "port" in present:
        metal += body.port(s, a.port, st["port"])
    return metal


def build_varied_case(
    rng: np.random.Generator,
    matrix: int,
    slices: int | None,
    plan: list[dict] | None,
    lesion_plan: str,
    hilar_vessels: bool,
    variety: Variety,
) -> PhantomCase:
    """One varied phantom (arguments as :func:`lungtumor.data.phantom.build_case`); its ``variety`` dict holds
    ``family``, ``hard_negative``, ``elements`` (drawn), ``arms``, ``acquisition`` and ``confounders``
    (each with its type, world centre ``centre_mm``, size, HU and visible ``voxels``), and ``confounders`` the
    (z, y, x) uint8 map of their ids."""
    st = element_streams(rng)
    present, hard = draw_present(variety, st)
    an = sample_anatomy(rng)
    grid = sample_grid(rng, an, matrix, slices)
    if plan is None:
        plan = sample_lesion_plan(rng, lesion_plan)
    plan = [] if hard else draw_tumours(variety, plan, present, st)
    acq, a = {}, variety.acquisition
    if "contrast" in present:
        acq["contrast"] = apply_contrast(an, a.contrast, st["contrast"])
    if "thickness" in present:
        t = float(a.thickness.choice(st["thickness"]))
        grid = with_thickness(grid, t, matrix, slices)
        acq["slice_thickness_mm"] = t
    arms_plan = body.draw_arms(an, variety.confounders.arms, st["arms"]) if "arms" in present else None
    if arms_plan is not None:  # arms down: a field of view wide enough for them, as on a real scanner
        grid = with_fov(grid, body.arms_fov_mm(an, arms_plan))
        acq["fov_mm"] = round(grid.nx * grid.dx, 1)
    tex = smooth_noise(rng, grid.shape, (5.0 / grid.dz, 5.0 / grid.dy, 5.0 / grid.dx))
    img, masks = render_anatomy(an, grid, tex, rng, table=bool(rng.random() < 0.75))
    s = Scene.start(an, grid, img, masks)
    if "breasts" in present:
        body.breasts(s, variety.confounders.breasts, st["breasts"])
    arms_y = body.arms(s, arms_plan, st["arms"]) if arms_plan is not None else None
    vessels, sub, ds, gran = paint_vessels(rng, an, grid, masks, img, hilar_vessels)
    paint_airways(rng, an, grid, masks, img, sub, ds, gran)
    _before_tumours(s, present, variety, st, vessels)
    lid, placed = place_tumours(rng, an, grid, masks, img, plan, ds, lung=s.free,
                                allow=lambda p, c, R: _invasion_zone(s, p, c, R))  # fmt: skip
    s.lid = lid
    po = variety.tumours.post_obstructive
    _post_obstructive(s, placed, (po.size_mm, po.hu), st["post_obstructive"])
    metal = _after_tumours(s, present, variety, st, vessels, ds)
    acq.update(acquire(s, present, a, st, arms_y, metal, "thickness" in present))
    for k, p, _ in placed:
        if p.get("invasion", "none") != "none":
            p["invasion_voxels"] = int(np.count_nonzero((lid == k) & ~s.lung0))
    case = finish_case(rng, grid, img, lid, placed, masks, vessels)
    case.confounders = s.conf
    case.variety = {
        "family": variety.name,
        "hard_negative": hard,
        "elements": sorted(present),
        "arms": "down" if arms_y is not None else "up",
        "acquisition": acq,
        "confounders": finish_records(s, case.image),
    }
    return case
