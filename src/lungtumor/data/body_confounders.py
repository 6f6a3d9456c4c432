"""Confounders outside the lungs of the varied phantoms, never labelled tumour: breasts and arms (painted
before the vessels; they extend the body mask), hilar and mediastinal lymph nodes, the oesophagus, liver,
spleen and stomach below the diaphragm dome, surgical clips and a chest port (painted after the tumours).
Positions are (x, y, z) mm in the body frame (x to the patient's left, y to the back, z up from the diaphragm
dome); arrays (z, y, x); HU from the family's :class:`~lungtumor.data.variety.Element` ranges or textbooks.
"""

from __future__ import annotations

import numpy as np

from lungtumor.data.anatomy import diaphragm_height
from lungtumor.data.geometry import smooth_noise
from lungtumor.data.scene import Scene, record, segment_dist, side_name
from lungtumor.data.variety import Element

#: Metal HU: beyond the top of the int16 CT range, so clipped to 3071 (textbook: metal saturates).
METAL_HU = 3071.0


def _front_y(s: Scene, x: float) -> float:
    """y (mm) of the skin in front at lateral position ``x`` mm."""
    return -s.an.B_ant * float(np.sqrt(max(1.0 - (x / s.an.A) ** 2, 0.05)))


def breasts(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Two breasts on the front of the chest: skin, fat, and fibroglandular tissue towards the nipple."""
    an = s.an
    r0, z0, x0 = (
        el.size(rng),
        float(rng.uniform(0.15, 0.45)) * an.height,
        float(rng.uniform(0.35, 0.5)) * an.A,
    )
    for sign in (1, -1):
        r, hu = r0 * float(rng.uniform(0.95, 1.05)), el.hu_value(rng)
        x = sign * x0
        y0 = _front_y(s, x) + 8.0
        proj = r * float(rng.uniform(0.6, 0.9))
        c = np.array([x, y0 - proj / 2, z0])
        b = s.box(np.array([x, y0, z0]), (r + 3, proj + 3, r + 3))
        if b is None:
            continue
        rho = b.dist(np.array([x, y0, z0]), (r, proj, r))
        hug = np.hypot(b.X / an.A, b.Y / an.B_ant) < 1.0 + proj / an.B_ant  # follows the chest's contour
        region = (rho < 1.0) & hug & (b.Y < 0) & ~s.masks["body"][b.sl]
        g = s.grid
        n = smooth_noise(rng, b.shape, (4.0 / g.dz, 4.0 / g.dy, 4.0 / g.dx))
        val = np.where(n + 1.5 * (1.0 - rho) > 1.2, hu, an.hu_fat).astype(np.float32)
        val[rho > 1.0 - 2.0 / r] = 30.0  # skin
        s.paint(record("breast", c, side=side_name(sign), radius_mm=r, hu=hu), b, region, val)
        s.masks["body"][b.sl] |= region


def draw_arms(an, el: Element, rng: np.random.Generator) -> dict:
    """Arms down: their y (mm) and, per side, (sign, radius mm, gap to the chest mm, muscle HU), drawn before
    the grid so that the field of view can take them in (:func:`arms_fov_mm`)."""
    y = float(rng.uniform(-0.15, 0.15)) * an.B_post
    sides = [(sign, el.size(rng), float(rng.uniform(3.0, 15.0)), el.hu_value(rng)) for sign in (1, -1)]
    return {"y": y, "sides": sides}


def arms_fov_mm(an, arms_plan: dict) -> float:
    """The field of view (mm) that holds the body and both arms with 10 mm to spare on each side."""
    return 2.0 * max(an.A + gap + 2.0 * r for _, r, gap, _ in arms_plan["sides"]) + 20.0


def arms(s: Scene, arms_plan: dict, rng: np.random.Generator) -> float:
    """Paint the arms of :func:`draw_arms` beside the chest in every slice: skin and fat, muscle, the humerus
    (cortex, marrow); returns their y (mm), for the streak between them."""
    an, y = s.an, arms_plan["y"]
    for sign, r, gap, hu in arms_plan["sides"]:
        c = np.array([sign * (an.A + gap + r), y, an.height / 2])
        b = s.box(c, (r + 2, r + 2, 1e4))
        rec = record("arm", c, side=side_name(sign), radius_mm=r, hu=hu)
        s.note(rec)
        if b is None:
            continue
        rho = np.broadcast_to(np.hypot(b.X - c[0], b.Y - c[1]), b.shape)
        region = (rho < r) & ~s.masks["body"][b.sl]
        val = np.full(b.shape, hu, np.float32)
        val[rho > r - rng.uniform(5.0, 12.0)] = an.hu_fat
        bone = np.broadcast_to(np.hypot(b.X - c[0] - sign * 0.1 * r, b.Y - c[1]), b.shape)
        val[bone < 11.0] = 1200.0  # cortical bone > 1000 HU (textbook)
        val[bone < 8.0] = float(rng.uniform(-20.0, 60.0))  # fatty marrow
        s.paint(rec, b, region, val)
        s.masks["body"][b.sl] |= region
    return y


def _mediastinal_fat(s: Scene) -> np.ndarray:
    """(z, y, x) bool: mediastinal fat around the hila and the carina, where nodes and clips may lie."""
    w = s.whole()
    near = (np.abs(w.Z - s.an.hila[:, 2].mean()) < 50) & (np.abs(w.X) < 70)
    return near & ~s.lung0 & s.masks["body"] & (s.masks["wall_depth"] > 2) & (s.img > -160) & (s.img < -40)


def lymph_nodes(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Hilar and mediastinal lymph nodes: ellipsoids in the mediastinal fat (enhancing a little with
    contrast; normal short axis < 10 mm, textbook)."""
    for c in s.pick(rng, _mediastinal_fat(s), el.n(rng), margin_mm=10.0):
        sa, hu = el.size(rng), el.hu_value(rng) + (rng.uniform(15.0, 30.0) if s.contrast else 0.0)
        radii = np.array([sa / 2, sa / 2 * rng.uniform(1.0, 1.3), sa / 2 * rng.uniform(1.2, 1.8)])
        b = s.box(c, radii + 2)
        if b is None:
            continue
        img = s.img[b.sl]
        m = (b.dist(c, radii) < 1.0) & ~s.lung0[b.sl] & ~s.masks["bone"][b.sl] & (img > -200) & (img < 100)
        s.paint(record("lymph_node", c, short_axis_mm=sa, hu=hu), b, m, hu)


def oesophagus(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """The oesophagus behind the heart: a muscular wall (3 mm) around air (collapsed lumen) or, dilated,
    fluid with an air-fluid level (air anterior: the patient lies supine)."""
    an = s.an
    d, hu, content = el.size(rng), el.hu_value(rng), str(el.choice(rng))
    r = d / 2
    c = np.array([8.0 - 0.8 * (r - 7.0), an.spine_y - an.spine_r - 5.0 - 0.5 * (r - 7.0), an.height / 2])
    b = s.box(c, (r + 2, r + 2, 1e4))
    if b is None:
        return
    rho = np.broadcast_to(np.hypot(b.X - c[0], b.Y - c[1]), b.shape)
    val = np.full(b.shape, an.hu_muscle + (20.0 if s.contrast else 0.0), np.float32)
    lumen = r - 3.0
    if content == "air":
        val[rho < lumen * rng.uniform(0.3, 0.5)] = hu
    else:
        level = c[1] - lumen * rng.uniform(0.2, 0.5)
        inside = rho < lumen
        val[inside] = np.where(np.broadcast_to(b.Y, b.shape)[inside] > level, hu, -1000.0)
    keep = ~s.lung0[b.sl] & ~s.masks["bone"][b.sl] & (s.masks["wall_depth"][b.sl] > 0) & (b.Z > -10.0)
    if s.contrast:
        keep &= s.img[b.sl] < 100  # not the enhanced aorta
    s.paint(record("oesophagus", c, diameter_mm=d, content=content, hu=hu), b, (rho < r) & keep, val)


def abdomen(s: Scene, el: Element, rng: np.random.Generator) -> None:
    """Below the diaphragm dome: the liver (the rendered right side), the spleen (left, posterior) and the
    stomach (left, anterior: wall, fluid or oral contrast, air anteriorly); HU by contrast phase (textbook:
    spleen 40-50 unenhanced, 100-130 portal venous, heterogeneous arterial)."""
    an, w = s.an, s.whole()
    ca, cb_ant, cb_post = an.cav
    abd = s.masks["body"] & (s.masks["wall_depth"] > 0) & (w.Z < diaphragm_height(an, w.X, w.Y))
    abd &= ~s.lung0 & ~s.masks["bone"]
    if s.contrast:
        spleen_hu = rng.uniform(90.0, 130.0) if an.hu_blood > 250 else rng.uniform(105.0, 125.0)
    else:
        spleen_hu = rng.uniform(40.0, 50.0)
    cs = np.array([0.6 * ca, 0.35 * cb_post, -0.55 * an.dome_drop])
    rs = np.array([22.0, 40.0, 45.0]) * rng.uniform(0.85, 1.15)
    spleen = abd & (w.dist(cs, rs) < 1.0)
    d, hu = el.size(rng), el.hu_value(rng)
    cg = np.array([0.3 * ca, -0.3 * cb_ant, -0.3 * an.dome_drop - d / 4])
    rg = np.array([0.5, 0.4, 0.45]) * d
    rho = w.dist(cg, rg)
    stomach = abd & (rho < 1.0) & ~spleen
    level = cg[1] - rg[1] * rng.uniform(0.2, 0.5)
    gval = np.where(np.broadcast_to(w.Y, s.img.shape) > level, hu, -1000.0).astype(np.float32)
    gval[rho > 1.0 - 4.0 / rg.min()] = an.hu_muscle + (25.0 if s.contrast else 0.0)  # the gastric wall
    liver = abd & (w.X < 20) & ~stomach & ~spleen
    s.paint(record("liver", (-0.5 * ca, 0.0, -0.5 * an.dome_drop), hu=an.hu_liver), w, liver, s.img)
    s.paint(record("spleen", cs, length_mm=2 * rs[2], hu=spleen_hu), w, spleen, spleen_hu)
    s.paint(record("stomach", cg, diameter_mm=d, hu=hu), w, stomach, gval)


def clips(s: Scene, el: Element, rng: np.random.Generator) -> list[tuple[np.ndarray, float, float]]:
    """Surgical clips (metal, 1.6 mm wide, ``size_mm`` long) in the mediastinum; returns the streak sources
    [(centre mm, amplitude HU, half height mm)]."""
    h, out = s.grid.h, []
    for c in s.pick(rng, _mediastinal_fat(s), el.n(rng), margin_mm=10.0):
        L, amp = el.size(rng), el.hu_value(rng)
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        b = s.box(c, L / 2 + 2 * h)
        if b is None:
            continue
        occ = np.clip(0.5 - (segment_dist(b, c - u * L / 2, c + u * L / 2) - 0.8) / h, 0.0, 1.0)
        img = s.img[b.sl]
        s.paint(record("clip", c, length_mm=L, hu=METAL_HU), b, occ > 0.05, img + occ * (METAL_HU - img))
        out.append((c, amp, abs(u[2]) * L / 2 + 1.0))
    return out


def port(s: Scene, el: Element, rng: np.random.Generator) -> list[tuple[np.ndarray, float, float]]:
    """A chest port: a titanium reservoir (silicone septum) under the skin below a clavicle, and its catheter
    to the superior vena cava; returns its streak source [(centre mm, amplitude HU, half height mm)]."""
    an = s.an
    d, amp = el.size(rng), el.hu_value(rng)
    x = float(rng.choice([1, -1])) * float(rng.uniform(0.3, 0.45)) * an.A
    y = _front_y(s, x) + an.fat * 0.5 + 4.0
    c = np.array([x, y, float(rng.uniform(0.75, 0.92)) * an.height])
    b, rec = s.box(c, (d / 2 + 2, 8.0, d / 2 + 2)), record("port", c, diameter_mm=d, hu=METAL_HU)
    s.note(rec)
    if b is not None:
        rho = np.hypot(b.X - c[0], b.Z - c[2])
        shell = (rho < d / 2) & (np.abs(b.Y - c[1]) < 5.0)
        val = np.where((rho > d / 2 - 2.0) | (b.Y > c[1] + 3.0), METAL_HU, 150.0).astype(np.float32)
        s.paint(rec, b, shell & s.masks["body"][b.sl], val)
    hx, hy, _, _, hay, _ = an.heart
    svc = np.array([-12.0 - an.aorta_r - 10.0, hy + 0.1 * hay, 0.55 * an.height])
    top = np.array([0.5 * (x + svc[0]), 0.5 * (y + svc[1]), an.height + 5.0])
    rec = record("catheter", svc, hu=200.0)
    for a, e in ((c, top), (top, svc)):
        bb = s.box((a + e) / 2, np.abs(e - a) / 2 + 3.0)
        if bb is not None:
            m = (segment_dist(bb, a, e) < 1.2) & ~s.lung0[bb.sl] & s.masks["body"][bb.sl]
            s.paint(rec, bb, m, 200.0)
    return [(c, amp, d / 2)]
