"""Small synthetic chest CTs and lesion masks for the follow-up tests (tests/followup/, tests/cli/).

:func:`phantom_case` (a whole-body slab from :mod:`lungtumor.data.phantom`) and :func:`moved` (a CT under a known
rigid motion) are for the registration tests. :func:`chest`: a 64 x 64 x 40 grid (z, y, x) = (40, 64, 64) at 1 x 1 x 2.5 mm (x, y, z), identity direction: a body ellipse of
soft tissue in air, two lungs (ellipsoids, the left one shorter), a spine, and a few vessels; every structure
is defined in world mm, so a CT "moved by" ``shift_mm`` is the same function sampled at ``p - shift``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lungtumor.data.phantom import PhantomCase, build_case
from lungtumor.imaging.volume import Volume

SHAPE = (40, 64, 64)  # (z, y, x)
SPACING = (1.0, 1.0, 2.5)  # (x, y, z) mm
ORIGIN = (-32.0, -32.0, 0.0)  # (x, y, z) mm
#: Lesion centres (x, y, z mm, LPS: +x = patient's left) well inside the right (x < 0) and left lungs.
RIGHT_LUNG_XYZ = (-13.0, -2.0, 50.0)
LEFT_LUNG_XYZ = (13.0, -2.0, 45.0)


def world_grid(shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (x, y, z mm) of every voxel (arrays (z, y, x)), minus ``shift_mm``."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    return (
        ORIGIN[0] + x * SPACING[0] - shift_mm[0],
        ORIGIN[1] + y * SPACING[1] - shift_mm[1],
        ORIGIN[2] + z * SPACING[2] - shift_mm[2],
    )


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def spheres(
    centres_radii: Sequence[tuple[Sequence[float], float]], shift_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """bool (z, y, x): the union of balls (centre x, y, z mm; radius mm)."""
    x, y, z = world_grid(shift_mm)
    out = np.zeros(SHAPE, bool)
    for c, r in centres_radii:
        out |= _ellipsoid(x, y, z, c, (r, r, r))
    return out


def chest(
    lesions: np.ndarray | None = None, shift_mm: Sequence[float] = (0.0, 0.0, 0.0), seed: int = 0
) -> Volume:
    """A synthetic chest CT (int16 HU) with ``lesions`` (bool (z, y, x)) painted at 30 HU."""
    x, y, z = world_grid(shift_mm)
    hu = np.full(SHAPE, -1000.0)
    hu[((x / 29.0) ** 2 + ((y - 1.0) / 25.0) ** 2 <= 1.0)] = 40.0
    hu[_ellipsoid(x, y, z, (-12.5, -2.0, 52.0), (9.5, 15.0, 38.0))] = -850.0  # right lung
    hu[_ellipsoid(x, y, z, (12.5, -1.0, 47.0), (8.5, 14.0, 32.0))] = -850.0  # left lung
    hu[(x / 5.0) ** 2 + ((y - 18.0) / 5.0) ** 2 <= 1.0] = 400.0  # spine
    for c, r in (((-14.0, -9.0, 30.0), 2.0), ((-10.0, 6.0, 70.0), 2.5), ((11.0, 5.0, 62.0), 2.0),
                 ((15.0, -8.0, 32.0), 1.5), ((-12.0, 0.0, 85.0), 2.0)):  # fmt: skip
        hu[_ellipsoid(x, y, z, c, (r, r, 2 * r))] = 20.0  # vessels
    if lesions is not None:
        hu[lesions] = 30.0
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, 10.0, SHAPE)
    return Volume(hu.astype(np.int16), spacing=SPACING, origin=ORIGIN)


def mask_volume(mask: np.ndarray) -> Volume:
    """A uint8 mask Volume on the phantom grid."""
    return Volume(mask.astype(np.uint8), spacing=SPACING, origin=ORIGIN)


def phantom_case(seed: int, matrix: int = 128, slices: int = 48) -> PhantomCase:
    """A phantom chest slab (body, lungs, vessels, airways, tumours; int16 HU), about 0.4 s at 128 x 128 x 48."""
    return build_case(seed, matrix=matrix, slices=slices)


def rigid_motion(
    ct: Volume, rotation_deg: Sequence[float], translation_mm: Sequence[float]
) -> sitk.Euler3DTransform:
    """A rigid motion about the middle of ``ct``'s grid: rotations about x, y, z (degrees), then a translation
    (x, y, z mm). It maps a follow-up world point to the baseline world point whose content it shows."""
    centre = ct.to_sitk().TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.shape[::-1]])
    tx = sitk.Euler3DTransform()
    tx.SetCenter(centre)
    tx.SetRotation(*(math.radians(float(a)) for a in rotation_deg))
    tx.SetTranslation(tuple(float(v) for v in translation_mm))
    return tx


def moved(ct: Volume, motion: sitk.Transform, seed: int = 1, noise_hu: float = 10.0) -> Volume:
    """``ct`` (HU) resampled on its own grid through ``motion`` (linear, air outside), with fresh noise (HU)."""
    img = sitk.Cast(ct.to_sitk(), sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(sitk.Resample(img, img, motion, sitk.sitkLinear, -1000.0))
    out = out + np.random.default_rng(seed).normal(0.0, noise_hu, out.shape)
    return ct.with_array(np.clip(np.rint(out), -1024, 3071).astype(np.int16))
