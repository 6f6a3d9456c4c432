"""The varied phantoms' acquisition: contrast phase, slice thickness, breathing blur at the lung bases, the
reconstruction kernel (blur, edge overshoot, noise texture), dose (noise level), beam-hardening and metal
streaks. Arrays are (z, y, x) float32 HU on the phantom's grid; positions (x, y, z) mm in the body frame.

An element that is not drawn keeps the default phantom's setting (:func:`lungtumor.data.builder.scan`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from lungtumor.data.anatomy import Anatomy
from lungtumor.data.geometry import Grid, smooth_noise
from lungtumor.data.scene import Scene
from lungtumor.data.variety import Acquisition, Element

#: Per kernel: in-plane point-spread sigma (mm), noise correlation sigma (mm), edge overshoot gain, and whether
#: the noise is high-pass (fine-grained, as a sharp lung kernel's noise power peaks at high frequencies).
#: Soft and standard soft-tissue kernels blur more and give blotchier noise (scanner manuals, review).
KERNEL_PARAMS = {
    "soft": ((0.8, 1.1), (0.9, 1.3), (0.0, 0.0), False),
    "standard": ((0.5, 0.8), (0.5, 0.8), (0.0, 0.0), False),
    "sharp": ((0.25, 0.4), (0.25, 0.4), (0.5, 0.9), True),
}

#: Liver HU by contrast phase: unenhanced 50-65, arterial 65-85, portal venous 95-120 (textbook).
LIVER_HU = {"none": (50.0, 65.0), "arterial": (65.0, 85.0), "venous": (95.0, 120.0)}

#: Unenhanced blood HU (textbook: 35-50, with the haematocrit).
BLOOD_HU = (35.0, 50.0)


def apply_contrast(an: Anatomy, el: Element, rng: np.random.Generator) -> dict:
    """Set the blood (aorta, heart) and liver HU of ``an`` for the drawn phase (``"none"``: unenhanced, blood
    35-50 HU; else the element's HU range); returns its record."""
    phase = el.choice(rng)
    an.hu_blood = float(rng.uniform(*BLOOD_HU)) if phase == "none" else el.hu_value(rng)
    an.hu_liver = float(rng.uniform(*LIVER_HU.get(phase, LIVER_HU["venous"])))
    return {"phase": phase, "blood_hu": round(an.hu_blood, 1), "liver_hu": round(an.hu_liver, 1)}


def with_thickness(grid: Grid, t_mm: float, matrix: int, slices: int | None) -> Grid:
    """``grid`` with slices ``t_mm`` thick (and apart) around the same centre: the same z extent, within the
    default phantoms' 32-128 slices (320 above 256 pixels), or ``slices`` when given."""
    zc = grid.z0 + (grid.nz - 1) / 2 * grid.dz
    if slices is None:
        nz = int(np.clip(round(grid.nz * grid.dz / t_mm), 32, 128 if matrix <= 256 else 320))
    else:
        nz = int(slices)
    return Grid(
        nz, grid.ny, grid.nx, grid.dx, grid.dy, float(t_mm), grid.x0, grid.y0, zc - (nz - 1) / 2 * t_mm
    )


def with_fov(grid: Grid, fov_mm: float) -> Grid:
    """``grid`` with an in-plane field of view of at least ``fov_mm`` (at most 500 mm, a scanner's largest),
    around the same centre and with the same matrix (larger pixels)."""
    fov = min(max(fov_mm, grid.nx * grid.dx), 500.0)
    d = fov / grid.nx
    xc = grid.x0 + (grid.nx - 1) / 2 * grid.dx
    yc = grid.y0 + (grid.ny - 1) / 2 * grid.dy
    return Grid(grid.nz, grid.ny, grid.nx, d, d, grid.dz, xc - (grid.nx - 1) / 2 * d, yc - (grid.ny - 1) / 2 * d,
                grid.z0)  # fmt: skip


def breathing_blur(s: Scene, amplitude_mm: float) -> None:
    """Smear the slices below a quarter of the lung height (the bases) along z and y, by up to
    ``amplitude_mm`` at the diaphragm (craniocaudal motion, a third of it antero-posterior), in place."""
    g, an = s.grid, s.an
    zc, _, _ = g.axes()
    top = 0.25 * an.height
    frac = np.clip((top - zc) / (top + 0.8 * an.dome_drop), 0.0, 1.0)
    src = s.img.copy()
    for k in np.flatnonzero(frac > 0):
        a = amplitude_mm * float(frac[k]) / g.dz  # half-width in slices
        if a < 0.25:
            continue
        j = np.arange(-int(np.ceil(a)), int(np.ceil(a)) + 1)
        w = np.clip(a + 0.5 - np.abs(j), 0.0, 1.0)
        kk = np.clip(k + j, 0, g.nz - 1)
        sl = np.tensordot(w / w.sum(), src[kk], axes=(0, 0)).astype(np.float32)
        s.img[k] = ndi.gaussian_filter1d(sl, amplitude_mm * float(frac[k]) / 3.0 / g.dy, axis=0)


def _line_streak(X: np.ndarray, Y: np.ndarray, p0: np.ndarray, theta: float, width: float, depth: float):
    """A dark band (-``depth`` HU, ``width`` mm) along the line through ``p0`` (x, y) at angle ``theta``, with
    faint bright flanks; (ny, nx) float32."""
    d = (X - p0[0]) * np.sin(theta) - (Y - p0[1]) * np.cos(theta)
    band = -np.exp(-0.5 * (d / width) ** 2) + 0.3 * (np.exp(-0.5 * ((np.abs(d) - 2.2 * width) / width) ** 2))
    return (depth * band).astype(np.float32)


def beam_hardening(s: Scene, el: Element, rng: np.random.Generator, arms_y: float | None) -> dict:
    """Dark streaks across the body between dense structures (through the spine, or between the arms when
    they are down), each slice's strength varying smoothly; returns the record."""
    g, an = s.grid, s.an
    zc, yc, xc = g.axes()
    Y2, X2 = np.meshgrid(yc, xc, indexing="ij")
    total = np.zeros(g.shape[1:], np.float32)
    lines = []
    for i in range(el.n(rng)):
        w, depth = el.size(rng), el.hu_value(rng)
        if i == 0 and arms_y is not None:  # arms down: the classic streak from arm to arm
            p0, theta = np.array([0.0, arms_y]), float(rng.normal(0, 0.05))
        else:
            p0, theta = np.array([0.0, an.spine_y]), float(rng.uniform(-1.0, 1.0))
        total += _line_streak(X2, Y2, p0, theta, w, depth)
        lines.append(
            {"angle_deg": round(float(np.degrees(theta)), 1), "width_mm": round(w, 2), "hu": round(depth, 1)}
        )
    f = 0.6 + 0.4 * np.clip(smooth_noise(rng, (g.nz,), (20.0 / g.dz,)) * 0.5 + 0.5, 0, 1)
    for k in range(g.nz):
        s.img[k] += f[k] * total * s.masks["body"][k]
    return {"streaks": lines}


def metal_streaks(s: Scene, sources: list[tuple[np.ndarray, float, float]], rng: np.random.Generator) -> None:
    """Alternating bright and dark rays from each metal source (centre (x, y, z) mm, amplitude HU, half
    height mm) in the slices through it, fading with distance (15 mm scale), in place."""
    g = s.grid
    zc, yc, xc = g.axes()
    Y2, X2 = np.meshgrid(yc, xc, indexing="ij")
    for c, amp, half in sources:
        ks = np.flatnonzero(np.abs(zc - c[2]) <= half + g.dz)
        if not len(ks):
            continue
        r = np.hypot(X2 - c[0], Y2 - c[1])
        th = np.arctan2(Y2 - c[1], X2 - c[0])
        star = np.zeros(g.shape[1:], np.float32)
        n = int(rng.integers(8, 17))
        for j, t0 in enumerate(rng.uniform(-np.pi, np.pi, n)):
            dth = np.angle(np.exp(1j * (th - t0)))
            star += (1.0 if j % 2 else -1.2) * np.exp(-0.5 * (dth / 0.02) ** 2).astype(np.float32)
        star *= (amp * 15.0 / (r + 15.0) * (r > 3.0)).astype(np.float32)
        for k in ks:
            s.img[k] += star * s.masks["body"][k]


def _kernel(kernel: str | None, g: Grid, rng: np.random.Generator) -> tuple[float, float, float, bool]:
    """(psf sigma px, noise correlation px, edge gain, high-pass noise) for ``kernel`` (None: the default
    phantom's scanner draws)."""
    if kernel is None:
        nc = rng.uniform(0.6, 1.1) * 0.7 / g.dx * (1 if g.dx < 1.2 else 1.2)
        return rng.uniform(0.45, 0.85) / g.dx, nc, 0.0, False
    psf, corr, gain, high = KERNEL_PARAMS[kernel]
    return rng.uniform(*psf) / g.dx, rng.uniform(*corr) / g.dx, rng.uniform(*gain), high


def acquire(s: Scene, present: set[str], acq: Acquisition, streams: dict, arms_y: float | None,
            metal: list, thickness: bool) -> dict:  # fmt: skip
    """The scanner over the painted scene, in place: breathing blur, point spread (kernel, slice profile),
    edge overshoot, streaks, then noise of the kernel's texture at the dose's level. Returns the record of the
    drawn elements (``kernel``, ``noise_hu``, ``beam_hardening``, ``breathing_mm``, ``metal_streaks``)."""
    g, rec = s.grid, {}
    if "breathing" in present:
        amp = acq.breathing.size(streams["breathing"])
        breathing_blur(s, amp)
        rec["breathing_mm"] = round(amp, 2)
    r = streams["kernel"]
    kernel = acq.kernel.choice(r) if "kernel" in present else None
    sxy, nc, gain, high = _kernel(kernel, g, r)
    sz = 0.425 if thickness else 0.35 * max(1.0, 2.0 / g.dz)  # FWHM = slice thickness, else the default's
    ndi.gaussian_filter(s.img, (sz, sxy, sxy), output=s.img, truncate=3.0)
    if gain > 0:
        s.img += gain * (s.img - ndi.gaussian_filter(s.img, (0, 1.0 / g.dx, 1.0 / g.dx), truncate=3.0))
    if kernel is not None:
        rec["kernel"] = kernel
    if "beam_hardening" in present:
        rec["beam_hardening"] = beam_hardening(s, acq.beam_hardening, streams["beam_hardening"], arms_y)
    if metal:
        metal_streaks(s, metal, streams["metal"])
        rec["metal_streaks_hu"] = [round(m[1], 1) for m in metal]
    noise = r.standard_normal(g.shape, dtype=np.float32)
    if high:
        noise -= 0.8 * ndi.gaussian_filter(noise, (0, 1.2 / g.dx, 1.2 / g.dx), truncate=3.0)
    ndi.gaussian_filter(noise, (0, nc, nc), output=noise, truncate=3.0)
    if "dose" in present:
        sigma = acq.dose.hu_value(streams["dose"])
        rec["noise_hu"] = round(sigma, 2)
    else:
        sigma = r.uniform(12.0, 28.0) * np.sqrt(2.5 / max(g.dz, 1.0)) ** 0.5
    noise *= sigma / (float(noise[:: max(1, g.nz // 8)].std()) + 1e-6)
    noise[~s.masks["body"]] *= 0.3
    s.img += noise
    return rec
