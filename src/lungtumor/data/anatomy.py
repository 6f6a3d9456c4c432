"""Anatomy of the synthetic chest CT used by :mod:`lungtumor.data.phantom`.

Everything is built in a *body frame* in millimetres: x towards the patient's left, y towards the back
(LPS, like the voxel axes), both relative to the body centre, and z upwards with z = 0 at the top of the
lung bases (the diaphragm dome) and z = ``Anatomy.height`` at the lung apices. Arrays are (z, y, x).
Nothing here is random at import; every function takes a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungtumor.data.geometry import Grid


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


def _ellipse_depth(
    X: np.ndarray, Y: np.ndarray, a: float, b_ant: float, b_post: float, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate depth (mm, > 0 inside) below the border of an ellipse centred at the origin, at points
    ``X``, ``Y`` (mm, any shape); semi-axes ``a`` (lateral), ``b_ant`` (front), ``b_post`` (back) mm.
    Also returns the normalised radius (1 on the border)."""
    b = np.where(Y < 0, b_ant, b_post)
    rho = np.sqrt((X / a) ** 2 + (Y / b) ** 2) / scale + 1e-6
    return np.hypot(X, Y) * (1.0 / rho - 1.0), rho


def diaphragm_height(an: Anatomy, X2: np.ndarray, Y2: np.ndarray) -> np.ndarray:
    """Height z (mm, body frame) of the diaphragm at points ``X2``, ``Y2`` (mm, any shape): the domes (the
    right one ``right_dome`` higher), falling ``dome_drop`` towards the sides and the back."""
    ca, _, cb_post = an.cav
    dia_top = np.where(X2 < 0, an.right_dome, 0.0)
    rx = (np.abs(X2) - 0.42 * ca) / (0.58 * ca)
    return dia_top - an.dome_drop * (np.clip(rx, -1.0, 1.5) ** 2 + 0.7 * np.clip(Y2 / cb_post, 0, 1) ** 2)


# ----------------------------------------------------------------------------- chest rendering


@dataclass
class _ChestMaps:
    """Axial cross-sections (y, x) of one chest, constant along z, in the body frame (mm, HU)."""

    X2: np.ndarray  # x (mm) of each voxel column, float32
    Y2: np.ndarray  # y (mm) of each voxel column, float32
    hil_z: float  # mean height (mm) of the hila
    body_d: np.ndarray  # depth (mm) below the skin, > 0 inside
    cav_d0: np.ndarray  # depth (mm) inside the thoracic cavity, no apical taper
    g: np.ndarray  # 0 at the back, 1 at the front
    fat_t: np.ndarray  # subcutaneous fat thickness (mm)
    z_dia: np.ndarray  # diaphragm height (mm)
    z_top: np.ndarray  # lung apex height (mm)
    w_base: np.ndarray  # mediastinal half-width (mm)
    lung_base: np.ndarray  # lung HU with the dependent (posterior) gradient
    absx: np.ndarray  # |x - 4| (mm), distance from the midline of the mediastinum
    liver: np.ndarray  # bool: liver side of the abdomen
    vb: np.ndarray  # distance (mm) from the vertebral body axis
    canal: np.ndarray  # distance (mm) from the spinal canal axis
    vbody: np.ndarray  # bool: vertebral body
    vcort: np.ndarray  # bool: vertebral body cortex
    post0: np.ndarray  # bool: neural arch and spinous process
    tproc: np.ndarray  # bool: transverse processes
    st: np.ndarray  # bool: sternum
    hq2: np.ndarray  # in-plane part of the heart ellipsoid's quadratic form (< 1 inside)
    da: np.ndarray  # distance (mm) from the descending aorta axis
    asc_svc: np.ndarray  # bool: ascending aorta and superior vena cava
    arch2: np.ndarray  # bool: footprint of the aortic arch
    tr: np.ndarray  # distance (mm) from the trachea axis
    oes: np.ndarray  # bool: oesophagus
    not_med: np.ndarray  # bool: off the spine, descending aorta and sternum


@dataclass
class _ChestVolumes:
    """The volumes (z, y, x) that :func:`render_anatomy` fills slice by slice."""

    img: np.ndarray  # float32 HU, air (-1000) to start with
    lung: np.ndarray  # bool
    soft: np.ndarray  # bool: where vessels may be drawn
    bone: np.ndarray  # bool
    wall: np.ndarray  # float32 mm: depth inside the thoracic cavity
    body: np.ndarray  # bool

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> _ChestVolumes:
        """Air everywhere, all masks empty."""
        return cls(
            img=np.full(shape, -1000.0, np.float32),
            lung=np.zeros(shape, bool),
            soft=np.zeros(shape, bool),
            bone=np.zeros(shape, bool),
            wall=np.zeros(shape, np.float32),
            body=np.zeros(shape, bool),
        )


def _shell_maps(an: Anatomy, X2: np.ndarray, Y2: np.ndarray, tex0: np.ndarray) -> dict[str, np.ndarray]:
    """Body wall, cavity, diaphragm, apex and lung-level maps (y, x) in mm / HU; ``tex0`` (y, x) texture."""
    ca, cb_ant, cb_post = an.cav
    sy, sr = an.spine_y, an.spine_r
    body_d, _ = _ellipse_depth(X2, Y2, an.A, an.B_ant, an.B_post)
    cav_d0, _ = _ellipse_depth(X2, Y2, ca, cb_ant, cb_post)
    P = np.hypot(X2, Y2) + 1e-3
    g = (1.0 - Y2 / P) / 2.0  # 0 at the back, 1 at the front
    fat_t = an.fat * (0.75 + 0.5 * (Y2 / an.B_post + 1) / 2) * (1 + 0.08 * tex0)  # thicker at the back
    z_dia = diaphragm_height(an, X2, Y2)
    z_top = (
        an.height - 70.0 * (((np.abs(X2) - 0.45 * ca) / (0.45 * ca)) ** 2 + ((Y2 + 10) / cb_post) ** 2) ** 1.3
    )
    # mediastinal half-width: narrow in front, wider in the middle, spine behind
    ym = sy - sr - 30.0
    w_base = 7.0 + 17.0 * np.clip(1 - ((Y2 - ym) / (0.75 * (ym + cb_ant))) ** 2, 0, 1)
    w_base = np.where(
        Y2 > sy - sr - 5, np.where(Y2 < sy + 0.5 * sr, sr + 7.0, 0.0), w_base
    )  # lungs wrap the spine
    lung_base = an.hu_lung + an.lung_grad * np.clip((Y2 / cb_post + 0.2) / 1.2, 0, 1) ** 2
    return {
        "body_d": body_d,
        "cav_d0": cav_d0,
        "g": g,
        "fat_t": fat_t,
        "z_dia": z_dia,
        "z_top": z_top,
        "w_base": w_base,
        "lung_base": lung_base,
        "absx": np.abs(X2 - 4.0),
        "liver": X2 < 20,
    }


def _organ_maps(an: Anatomy, X2: np.ndarray, Y2: np.ndarray) -> dict[str, np.ndarray]:
    """Spine, sternum, heart, great vessels, trachea and oesophagus maps (y, x): distances in mm or bool."""
    _, cb_ant, _ = an.cav
    sy, sr = an.spine_y, an.spine_r
    hx, hy, _, hax, hay, _ = an.heart
    xa, ya = sr * 0.75 + an.aorta_r, sy - sr * 0.55  # descending aorta
    vb = np.hypot(X2, Y2 - sy)  # vertebral body
    canal = np.hypot(X2, Y2 - (sy + sr + 8.0))
    da = np.hypot(X2 - xa, Y2 - ya)
    asc_svc = (np.hypot(X2 + 12, Y2 - (hy - 0.2 * hay)) < an.aorta_r + 2) | (
        np.hypot(X2 + 12 + an.aorta_r + 10, Y2 - (hy + 0.1 * hay)) < 9
    )
    d_arch = np.abs((X2 + 12) * (ya - hy) - (Y2 - hy) * (xa + 12)) / np.hypot(ya - hy, xa + 12)
    vbody = vb < sr
    st = (X2 / 16.0) ** 2 + ((Y2 + cb_ant + 7.0) / 7.0) ** 2 < 1
    return {
        "vb": vb,
        "canal": canal,
        "vbody": vbody,
        "vcort": vbody & (vb > sr - 2.2),
        "post0": ((canal > 7) & (canal < 12))
        | ((np.abs(X2) < 3.5) & (Y2 > sy + sr + 14) & (Y2 < sy + sr + 42)),
        "tproc": (np.abs(Y2 - (sy + sr + 4 + 0.35 * np.abs(X2))) < 2.5)
        & (np.abs(X2) > 6)
        & (np.abs(X2) < 30),
        "st": st,
        "hq2": ((X2 - hx) / hax) ** 2 + ((Y2 - hy) / hay) ** 2,
        "da": da,
        "asc_svc": asc_svc,
        "arch2": (d_arch < an.aorta_r) & (Y2 > hy - 10) & (Y2 < ya + 10),
        "tr": np.hypot(X2, Y2 - an.carina[1]),
        "oes": np.hypot(X2 - 8.0, Y2 - (sy - sr - 5.0)) < 7.0,
        "not_med": (vb > sr + 4) & ~(da < an.aorta_r + 3) & ~st,
    }


def _chest_maps(an: Anatomy, grid: Grid, tex0: np.ndarray) -> _ChestMaps:
    """All z-independent cross-sections (y, x) of the chest on ``grid``; ``tex0`` is the texture's first slice."""
    _, yc, xc = grid.axes()
    Y2, X2 = np.meshgrid(yc, xc, indexing="ij")
    return _ChestMaps(
        X2=X2,
        Y2=Y2,
        hil_z=an.hila[:, 2].mean(),
        **_shell_maps(an, X2, Y2, tex0),
        **_organ_maps(an, X2, Y2),
    )


def _paint_wall(
    an: Anatomy, m: _ChestMaps, s: np.ndarray, T: np.ndarray, z: float, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paint skin-to-cavity tissue (muscle, fat) into slice ``s`` (y, x) HU at height ``z`` mm (``t`` = z / height).

    Returns the body mask (y, x) bool and the depth inside the thoracic cavity (y, x) mm.
    """
    top = max(0.0, (t - 1.05) / 0.5)
    bscale = 1.0 - 0.25 * min(top, 1.0)
    inb = m.body_d > an.A * (1 - bscale)
    taper = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - t, 0.0, 1.0))  # the chest narrows towards the apex
    ca, cb_ant, cb_post = an.cav
    cav_d = (
        m.cav_d0
        if t <= 0
        else _ellipse_depth(m.X2, m.Y2, ca * taper, cb_ant * (0.9 + 0.1 * taper), cb_post)[0]
    )
    s[inb] = an.hu_muscle + 6 * T[inb]
    fat = inb & (m.body_d - an.A * (1 - bscale) < m.fat_t)
    s[fat] = an.hu_fat + 8 * T[fat]
    s[inb & ~(cav_d > 0) & (T > 2.0) & ~fat] = an.hu_fat  # intermuscular fat
    return inb, cav_d


def _paint_ribs(an: Anatomy, m: _ChestMaps, s: np.ndarray, cav_d: np.ndarray, z: float) -> np.ndarray:
    """Paint ribs (oblique bands outside the cavity, lower in front) and costal cartilage into ``s`` (y, x) HU.

    Returns the rib mask (y, x) bool.
    """
    rib_t, rib_h = 9.0, 11.0  # rib thickness and height (mm)
    ring = (cav_d < 0) & (cav_d > -rib_t) & (m.g < 0.9) & (z < an.height + 15)
    ph = np.mod(z - an.rib_drop * m.g[ring] - an.rib_phase, an.rib_pitch)
    u = (-cav_d[ring] - rib_t / 2) / (rib_t / 2)
    v = (ph - rib_h / 2) / (rib_h / 2)
    e = u * u + v * v
    rr = np.zeros_like(ring)
    rr[ring] = e < 1
    cort = np.zeros_like(ring)
    cort[ring] = (e < 1) & (e > 0.45)
    s[rr] = 220.0
    s[cort] = 750.0
    cart = (cav_d < 0) & (cav_d > -rib_t) & (m.g >= 0.9) & (np.abs(m.X2) > 14) & (np.abs(m.X2) < 45)
    cart &= np.mod(z - an.rib_drop - an.rib_phase, an.rib_pitch) < rib_h
    s[cart] = 110.0
    return rr


def _paint_mediastinum(
    an: Anatomy,
    m: _ChestMaps,
    s: np.ndarray,
    T: np.ndarray,
    z: float,
    t: float,
    cav_in: np.ndarray,
    hq: np.ndarray,
) -> None:
    """Paint the cavity content into ``s`` (y, x) HU: mediastinal fat, abdomen below the diaphragm, heart
    (``hq`` < 1 inside), aorta, superior vena cava, trachea and oesophagus."""
    s[cav_in] = an.hu_fat + 12 * T[cav_in]
    abd = cav_in & (z < m.z_dia)
    s[abd & m.liver] = an.hu_liver + 5 * T[abd & m.liver]
    s[abd & ~m.liver] = an.hu_muscle + 8 * T[abd & ~m.liver]
    heart = cav_in & (hq < 1.0) & (z > m.z_dia - 15)
    s[heart] = an.hu_blood * 0.85 + 8 * T[heart] if an.hu_blood > 100 else an.hu_muscle
    if t < 0.8 and z > m.z_dia.min() - 40:  # descending aorta
        s[m.da < an.aorta_r] = an.hu_blood
    if 0.45 < t < 0.8:  # ascending aorta and superior vena cava
        s[m.asc_svc & cav_in] = an.hu_blood
    if 0.72 < t < 0.82:  # aortic arch, from front right to back left
        s[m.arch2 & cav_in] = an.hu_blood
    if t > 0.62:  # trachea
        s[(m.tr < 10.5) & cav_in] = an.hu_muscle
        s[m.tr < 8.5] = -1000.0
    s[m.oes & cav_in & (z > m.z_dia)] = an.hu_muscle


def _paint_spine(
    an: Anatomy, m: _ChestMaps, s: np.ndarray, T: np.ndarray, z: float, t: float, inb: np.ndarray
) -> np.ndarray:
    """Paint vertebra (body or disc), canal, posterior elements and sternum into ``s`` (y, x) HU.

    Returns their bone mask (y, x) bool.
    """
    vdisc = np.mod(z - an.rib_phase, an.vert_pitch) < 5.0
    s[m.vbody] = 80.0 if vdisc else 230.0 + 20 * T[m.vbody]
    if not vdisc:
        s[m.vcort] = 700.0
    post = m.post0 | m.tproc if np.mod(z - an.rib_phase, an.vert_pitch) > 0.55 * an.vert_pitch else m.post0
    s[post & inb] = 600.0
    s[m.canal <= 7] = 35.0
    bone = m.vbody | (post & inb)
    if 0.2 < t < 1.0:
        s[m.st] = 350.0
        bone |= m.st
    return bone


def _lung_mask(
    an: Anatomy, m: _ChestMaps, z: float, t: float, cav_in: np.ndarray, cav_d: np.ndarray, hq: np.ndarray
) -> np.ndarray:
    """Lung parenchyma (y, x) bool at height ``z`` mm: cavity above the diaphragm, off the mediastinum, heart
    (``hq`` > 1.12 leaves room for pericardial fat), great vessels and trachea; ribs are removed by the caller."""
    w = m.w_base * (1.0 + 0.6 * max(0.0, 0.5 - t)) if t < 1 else m.w_base
    lg = cav_in & (z > m.z_dia) & (z < m.z_top) & (m.absx > w) & (cav_d > 2.0)
    if t < 0.8:
        lg &= m.not_med
    else:
        lg &= m.vb > an.spine_r + 4
    lg &= hq > 1.12
    if 0.45 < t < 0.8:
        lg &= ~m.asc_svc
    if 0.72 < t < 0.82:
        lg &= ~m.arch2
    if t > 0.62:
        lg &= m.tr > 12
    return lg


def _render_slice(an: Anatomy, m: _ChestMaps, vols: _ChestVolumes, k: int, z: float, T: np.ndarray) -> None:
    """Render axial slice ``k`` (height ``z`` mm, texture ``T`` (y, x)) into ``vols``."""
    t = z / an.height
    s = vols.img[k]
    inb, cav_d = _paint_wall(an, m, s, T, z, t)
    rr = _paint_ribs(an, m, s, cav_d, z)
    cav_in = (cav_d > 0) & inb
    hq = m.hq2 + ((z - an.heart[2]) / an.heart[5]) ** 2
    _paint_mediastinum(an, m, s, T, z, t, cav_in, hq)
    bone = _paint_spine(an, m, s, T, z, t, inb)
    lg = _lung_mask(an, m, z, t, cav_in, cav_d, hq)
    lg &= ~rr
    s[lg] = m.lung_base[lg] + 22 * T[lg]
    vols.body[k] = inb
    vols.wall[k] = cav_d
    vols.bone[k] = rr | bone
    vols.lung[k] = lg
    vols.soft[k] = (
        lg | (cav_in & (s < -50) & (s > -150) & (z > m.z_dia)) | (np.abs(m.hil_z - z) < 60) & cav_in
    )


def _paint_table(an: Anatomy, m: _ChestMaps, img: np.ndarray, rng: np.random.Generator) -> None:
    """Paint the scanner table (two curved plates with foam between) below the back into ``img`` (z, y, x) HU."""
    X2, Y2 = m.X2, m.Y2
    yt = an.B_post + rng.uniform(0.5, 4.0) - 0.0009 * X2**2
    tab = (
        ((np.abs(Y2 - yt) < 1.6) | (np.abs(Y2 - yt - 28) < 2.2)) & (np.abs(X2) < an.A * 1.25) & (m.body_d < 0)
    )
    foam = (Y2 > yt) & (Y2 < yt + 28) & (np.abs(X2) < an.A * 1.25) & (m.body_d < 0)
    img[:, foam] = -920.0
    img[:, tab] = 120.0


def render_anatomy(
    an: Anatomy, grid: Grid, tex: np.ndarray, rng: np.random.Generator, table: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render the chest without vessels or tumours.

    ``tex`` (z, y, x) is a unit-std texture on ``grid``; ``rng`` draws the table height when ``table``.

    Returns:
        img (z, y, x) float32 HU, and masks (z, y, x) {"lung": bool, "side": int8 (+1 left, -1 right, 0),
        "soft": bool (where vessels may be drawn), "bone": bool, "body": bool, "wall_depth": float32 mm
        (depth inside the thoracic cavity)}.
    """
    zc, _, _ = grid.axes()
    m = _chest_maps(an, grid, tex[0])
    vols = _ChestVolumes.empty(grid.shape)
    for k, z in enumerate(zc):
        _render_slice(an, m, vols, k, z, tex[k])
    side3 = np.broadcast_to(np.sign(m.X2 - 4.0).astype(np.int8), grid.shape) * vols.lung
    if table:
        _paint_table(an, m, vols.img, rng)
    return vols.img, {
        "lung": vols.lung,
        "side": side3,
        "soft": vols.soft,
        "bone": vols.bone,
        "body": vols.body,
        "wall_depth": vols.wall,
    }
