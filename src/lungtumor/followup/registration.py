"""Register a follow-up CT to its baseline on the lungs (SimpleITK): rigid, then optionally affine.

Both CTs are expected in canonical order (:func:`lungtumor.imaging.orientation.to_canonical`: arrays (z, y, x)
along LPS). The work is done on a coarse grid of about :data:`WORK_MM` mm (block means, ``BinShrink``), in a lung
window of HU, with Mattes mutual information sampled inside the baseline's lungs grown by
:data:`MASK_GROW_MM` mm (so the lung borders, the strongest edges, take part). The starting translation puts the
follow-up's lung centroid on the baseline's.

The transform maps a baseline world point (x, y, z, mm, LPS) to the follow-up's, as ITK registrations do: a
follow-up image is resampled onto the baseline grid through it, and a follow-up point is brought into
baseline space through its inverse.

The residual is the mean symmetric distance (mm) between the baseline's lung surface and the warped
follow-up's, on the coarse grid, leaving out the surface that the field of view cuts; it is
:data:`POOR_RESIDUAL_MM` or more: the registration is poor (docs/decisions/0027).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lungtumor.imaging.lungs import lung_mask_from_hu
from lungtumor.imaging.volume import Volume

#: Grid step (mm) the registration works on (each axis: the nearest whole multiple of its spacing, at least 1).
WORK_MM = 2.0
#: The lung window (HU) the mutual information sees: width 1500, level -600.
LUNG_WINDOW_HU = (-1350.0, 150.0)
#: The baseline lungs are grown by this much (mm) to make the metric's mask.
MASK_GROW_MM = 10.0
#: A residual (mean lung-surface distance after registration, mm) at or above this is reported as poor.
POOR_RESIDUAL_MM = 3.0
#: Seed of the metric's random sampling (the same inputs give the same transform).
SAMPLING_SEED = 20260
#: Fraction of the masked voxels the metric samples per iteration.
SAMPLING_FRACTION = 0.25
#: The optimizer stops when its step (scaled parameter units, about mm) falls below this. With 0.01 the noisy
#: sampled metric stopped it early: 2.3 mm off at a lesion in 1 of 19 phantom moves of 2-5 degrees and 10-20 mm;
#: with 0.001 at most 0.24 mm (docs/decisions/0027).
MIN_STEP = 0.001


@dataclass
class Registration:
    """A follow-up → baseline registration.

    Attributes:
        transform: maps baseline world points (x, y, z mm, LPS) to follow-up world points.
        kind: ``"identity"``, ``"rigid"`` or ``"rigid+affine"``.
        residual_mm: mean symmetric lung-surface distance after registration (mm); None without lungs.
        residual_before_mm: the same with the identity transform (mm); None without lungs.
        lungs_found: whether both CTs had lung-like air (otherwise the whole image was registered).
        lungs_missing: the CTs without lungs, ``"baseline"`` and/or ``"follow-up"``.
        baseline_lungs: the baseline's lung mask (bool (z, y, x)) on the coarse grid, or None.
    """

    transform: sitk.Transform
    kind: str
    residual_mm: float | None = None
    residual_before_mm: float | None = None
    lungs_found: bool = False
    baseline_lungs: Volume | None = None
    lungs_missing: tuple[str, ...] = ()

    @property
    def poor(self) -> bool:
        """True when the residual is :data:`POOR_RESIDUAL_MM` or more, or could not be measured."""
        return self.kind != "identity" and (self.residual_mm is None or self.residual_mm >= POOR_RESIDUAL_MM)

    def to_followup(self, points_xyz: np.ndarray) -> np.ndarray:
        """Baseline world points (N, 3) (x, y, z mm) → follow-up world points."""
        return np.array([self.transform.TransformPoint(tuple(map(float, p))) for p in points_xyz]).reshape(
            -1, 3
        )

    def to_baseline(self, points_xyz: np.ndarray) -> np.ndarray:
        """Follow-up world points (N, 3) (x, y, z mm) → baseline world points (the inverse transform)."""
        inv = self.transform.GetInverse()
        return np.array([inv.TransformPoint(tuple(map(float, p))) for p in points_xyz]).reshape(-1, 3)

    def warp(
        self, followup: Volume, baseline: Volume, *, nearest: bool = True, fill: float = 0.0
    ) -> np.ndarray:
        """``followup``'s array resampled onto ``baseline``'s grid (z, y, x): nearest neighbour for labels,
        linear for images; ``fill`` outside the follow-up's field of view."""
        interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        moving = followup.to_sitk()
        if not nearest:
            moving = sitk.Cast(moving, sitk.sitkFloat32)
        ref = sitk.Image(list(baseline.shape[::-1]), sitk.sitkUInt8)
        ref.SetSpacing(baseline.spacing)
        ref.SetOrigin(baseline.origin)
        ref.SetDirection(baseline.direction)
        out = sitk.Resample(moving, ref, self.transform, interp, fill, moving.GetPixelID())
        return sitk.GetArrayFromImage(out)

    def summary(self) -> dict:
        """The JSON-ready description: kind, residuals (mm), poor flag, translation (mm), rotation (degrees)."""
        t, angle = _translation_and_angle(self.transform)
        return {
            "kind": self.kind,
            "residual_mm": _round(self.residual_mm),
            "residual_before_mm": _round(self.residual_before_mm),
            "residual_definition": "mean symmetric distance between the baseline's lung surface and the "
            "registered follow-up's (mm), on the registration grid, without the field of view's cut faces",
            "poor_threshold_mm": POOR_RESIDUAL_MM,
            "poor": self.poor,
            "lungs_found": self.lungs_found,
            "lungs_missing": list(self.lungs_missing),
            "translation_mm": [round(float(v), 3) for v in t],
            "rotation_deg": round(angle, 3),
        }


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(float(v), digits)


def _translation_and_angle(tx: sitk.Transform) -> tuple[np.ndarray, float]:
    """Translation (x, y, z mm) and rotation angle (degrees) of a rigid, affine or identity transform."""
    if tx.GetName() == "Euler3DTransform":
        e = sitk.Euler3DTransform(tx)
        m = np.asarray(e.GetMatrix()).reshape(3, 3)
        t = np.asarray(e.GetTranslation())
    elif tx.GetName() == "AffineTransform":
        a = sitk.AffineTransform(tx)
        m = np.asarray(a.GetMatrix()).reshape(3, 3)
        t = np.asarray(a.GetTranslation())
    else:
        return np.zeros(3), 0.0
    u, _, vt = np.linalg.svd(m)  # the rotation part of an affine matrix
    r = u @ vt
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))))
    return t, angle


def identity_registration() -> Registration:
    """The identity (for masks already on one grid, or when registration is turned off)."""
    return Registration(sitk.Transform(3, sitk.sitkIdentity), "identity")


def _working_image(ct: Volume, work_mm: float) -> sitk.Image:
    """The CT in the lung window (HU, float32) on a coarse grid of about ``work_mm`` mm (block means)."""
    img = sitk.Cast(ct.to_sitk(), sitk.sitkFloat32)
    img = sitk.Clamp(img, sitk.sitkFloat32, *LUNG_WINDOW_HU)
    factors = [max(1, int(round(work_mm / s))) for s in ct.spacing]
    return sitk.BinShrink(img, factors) if max(factors) > 1 else img


def _lungs(img: sitk.Image) -> sitk.Image:
    """The lung mask (uint8) of a working image (lungtumor.imaging.lungs on its grid)."""
    arr = sitk.GetArrayFromImage(img)
    lung = lung_mask_from_hu(arr, img.GetSpacing(), coarse_mm=0).astype(np.uint8)
    out = sitk.GetImageFromArray(lung)
    out.CopyInformation(img)
    return out


def _centroid(mask: sitk.Image) -> np.ndarray | None:
    """World centroid (x, y, z mm) of a mask's voxels; None when empty."""
    arr = sitk.GetArrayViewFromImage(mask)
    idx = np.argwhere(arr)
    if len(idx) == 0:
        return None
    c = idx.mean(axis=0)[::-1]  # (x, y, z) index
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c)))


def _method(mask: sitk.Image | None, shrink: Sequence[int], smooth_mm: Sequence[float]):
    """The registration method: Mattes MI, masked random sampling, regular-step gradient descent."""
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(SAMPLING_FRACTION, SAMPLING_SEED)
    if mask is not None:
        r.SetMetricFixedMask(mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=MIN_STEP,
        numberOfIterations=200,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(smooth_mm))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def _initial_rigid(fixed: sitk.Image, moving: sitk.Image, fl, ml) -> sitk.Euler3DTransform:
    """A rigid transform centred on the baseline lungs that puts the follow-up's lung centroid on them
    (the images' centres without lungs)."""
    cf = _centroid(fl) if fl is not None else None
    cm = _centroid(ml) if ml is not None else None
    tx = sitk.Euler3DTransform()
    if cf is None or cm is None:
        init = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        return sitk.Euler3DTransform(init)
    tx.SetCenter(tuple(float(v) for v in cf))
    tx.SetTranslation(tuple(float(v) for v in cm - cf))
    return tx


def _surface(mask: np.ndarray) -> np.ndarray:
    """bool: mask voxels with a background 6-neighbour; the array's own border is not a surface."""
    return mask & ~ndi.binary_erosion(mask, border_value=1)


def surface_distance_mm(
    a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float], valid: np.ndarray
) -> float | None:
    """Mean symmetric distance (mm) between the surfaces of two bool masks (z, y, x) on one grid, counting
    only surface voxels at least one voxel inside ``valid`` (the field of view both images cover).

    Returns None when either surface is empty there."""
    inner = ndi.binary_erosion(valid, border_value=0)
    sa, sb = _surface(a) & inner, _surface(b) & inner
    if not sa.any() or not sb.any():
        return None
    da = ndi.distance_transform_edt(~sa, sampling=spacing_zyx)
    db = ndi.distance_transform_edt(~sb, sampling=spacing_zyx)
    return float((db[sa].sum() + da[sb].sum()) / (sa.sum() + sb.sum()))


def _residual(fl: sitk.Image, ml: sitk.Image, tx: sitk.Transform) -> float | None:
    """Mean symmetric lung-surface distance (mm) after resampling the follow-up lungs through ``tx``."""
    warped = sitk.Resample(ml, fl, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ones = sitk.Image(ml.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(ml)
    valid = (
        sitk.GetArrayFromImage(sitk.Resample(ones, fl, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
    )
    a = sitk.GetArrayFromImage(fl) > 0
    b = sitk.GetArrayFromImage(warped) > 0
    return surface_distance_mm(a, b, fl.GetSpacing()[::-1], valid)


def _lung_volume(img: sitk.Image) -> Volume:
    return Volume(sitk.GetArrayFromImage(img) > 0, img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def register(
    baseline: Volume,
    followup: Volume,
    *,
    affine: bool = False,
    work_mm: float = WORK_MM,
    threads: int | None = None,
) -> Registration:
    """Register ``followup`` to ``baseline`` (both CTs in HU, canonical order): rigid, then affine with
    ``affine``.

    Args:
        baseline, followup: CT Volumes, arrays (z, y, x) in HU, spacing (x, y, z) mm.
        affine: refine the rigid result with a 12-parameter affine transform.
        work_mm: step (mm) of the coarse grid the registration runs on.
        threads: ITK threads (default: ITK's choice).

    Returns:
        The :class:`Registration` (transform baseline → follow-up world, residual in mm).
    """
    fixed, moving = _working_image(baseline, work_mm), _working_image(followup, work_mm)
    fl, ml = _lungs(fixed), _lungs(moving)
    missing = tuple(
        name for name, lm in (("baseline", fl), ("follow-up", ml)) if not sitk.GetArrayViewFromImage(lm).any()
    )
    lungs_found = not missing
    mask = None
    if lungs_found:
        radius = [max(1, int(round(MASK_GROW_MM / s))) for s in fixed.GetSpacing()]
        mask = sitk.BinaryDilate(fl, radius, sitk.sitkBall)
    tx = _initial_rigid(fixed, moving, fl if lungs_found else None, ml if lungs_found else None)
    method = _method(mask, (4, 2, 1), (4.0, 2.0, 0.0))
    if threads:
        method.SetNumberOfThreads(threads)
    method.SetInitialTransform(tx, inPlace=True)
    method.Execute(fixed, moving)
    result: sitk.Transform = tx
    kind = "rigid"
    if affine:
        aff = sitk.AffineTransform(3)
        aff.SetCenter(tx.GetCenter())
        aff.SetMatrix(tx.GetMatrix())
        aff.SetTranslation(tx.GetTranslation())
        method = _method(mask, (2, 1), (2.0, 0.0))
        if threads:
            method.SetNumberOfThreads(threads)
        method.SetInitialTransform(aff, inPlace=True)
        method.Execute(fixed, moving)
        result, kind = aff, "rigid+affine"
    reg = Registration(result, kind, lungs_found=lungs_found, lungs_missing=missing)
    if lungs_found:
        reg.residual_mm = _residual(fl, ml, result)
        reg.residual_before_mm = _residual(fl, ml, sitk.Transform(3, sitk.sitkIdentity))
        reg.baseline_lungs = _lung_volume(fl)
    return reg
