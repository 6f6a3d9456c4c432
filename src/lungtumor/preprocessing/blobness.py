"""A 3D blobness map: the cue that tells a small nodule from a vessel, as an extra 2D model input channel.

On one axial slice a 6-15 mm nodule and a vessel's cross-section look the same: a bright disc in the lung.
In 3D a nodule is a blob and a vessel a tube. The Hessian of the Gaussian-smoothed CT tells them apart: at a
bright blob's centre all three eigenvalues are strongly negative, on a tube one is near zero. SimpleITK's
``ObjectnessMeasure`` (ITK's Hessian-to-objectness measure of Antiga 2007, object dimension 0 = blobs)
computes this; we take the maximum over a few scales, scale-normalised by sigma², on the prepared frame
(in-plane resampled, native slices), with spacing in mm so that the scales mean the same on every scan.

With ``prep.blob`` the 2D recipe stores this map in the cache (``cases/<name>_blob.npy``) and the model
sees it as one more channel next to the 2.5D CT slices; ``predict`` computes it the same way.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

#: Gaussian scales (mm): nodules of about 5-15 mm respond most.
BLOB_SCALES_MM = (2.5, 4.0)
#: HU range the measure sees (bone and contrast are clipped to soft tissue, air to -1000).
BLOB_HU = (-1000.0, 200.0)
#: The measure is divided by this and clipped to [0, 3]: a unit-scale input channel.
BLOB_UNIT = 10.0

#: Thinner slices are linearly resampled to this z spacing (mm) for the measure and back: the smallest scale
#: (2.5 mm) needs no finer sampling, and a 1 mm scan then costs what a 2 mm one does.
BLOB_MIN_DZ_MM = 2.0

_MIN_SIDE = 4  # ITK's recursive Gaussian needs at least 4 pixels along every axis
_SLAB = 32  # slices per slab (plus margins)


def _resample_z(a: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of (z, y, x) float32 to ``n`` slices; the first and last slices stay in place."""

    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    out = torch.nn.functional.interpolate(
        t, size=(n, a.shape[1], a.shape[2]), mode="trilinear", align_corners=True
    )
    return out[0, 0].numpy()


def _measure(a: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Max over scales of sigma² x objectness / BLOB_UNIT of clipped HU (z, y, x) float32 -> float32."""

    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing_xyz)
    best = None
    for s in BLOB_SCALES_MM:
        smooth = sitk.SmoothingRecursiveGaussian(img, s)
        o = sitk.ObjectnessMeasure(smooth, objectDimension=0, brightObject=True, scaleObjectnessMeasure=False)
        m = sitk.GetArrayViewFromImage(o) * np.float32(s * s / BLOB_UNIT)
        best = m.copy() if best is None else np.maximum(best, m, out=best)
    return best


def blobness(hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Bright-blob measure of a CT volume.

    Args:
        hu: (z, y, x) HU (any real dtype).
        spacing_zyx: voxel size (z, y, x) in mm.

    Returns:
        float16 (z, y, x), 0 on tubes, plates and background, about 0.5-2 at the centre of a 5-15 mm
        solid nodule in the lung (max over :data:`BLOB_SCALES_MM` of sigma² x objectness / :data:`BLOB_UNIT`,
        clipped to [0, 3]).
    """
    a = np.clip(np.asarray(hu, dtype=np.float32), *BLOB_HU)
    dz = float(spacing_zyx[0])
    z_in = a.shape[0]
    if dz < BLOB_MIN_DZ_MM and z_in > 1:
        z_out = max(2, int(round((z_in - 1) * dz / BLOB_MIN_DZ_MM)) + 1)
        a = _resample_z(a, z_out)
        dz = (z_in - 1) * dz / (z_out - 1)
    pad = [(0, max(0, _MIN_SIDE - n)) for n in a.shape]
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    spacing = (float(spacing_zyx[2]), float(spacing_zyx[1]), dz)
    # in slabs of _SLAB slices plus a margin of 3 sigma of the largest scale on each side: ITK's Hessian image
    # is 6 float64 per voxel, so a whole 300-slice CT at once would cost ~12x its float32 size
    margin = int(np.ceil(3 * max(BLOB_SCALES_MM) / dz)) + 1
    best = np.empty(a.shape, np.float32)
    for z0 in range(0, a.shape[0], _SLAB):
        z1 = min(a.shape[0], z0 + _SLAB)
        lo, hi = max(0, z0 - margin), min(a.shape[0], z1 + margin)
        if hi - lo < _MIN_SIDE:  # a short last slab: widen it downwards
            lo = max(0, hi - _MIN_SIDE)
        best[z0:z1] = _measure(a[lo:hi], spacing)[z0 - lo : z1 - lo]
    z, y, x = a.shape[0] - pad[0][1], hu.shape[1], hu.shape[2]
    best = best[:z, :y, :x]
    if z != z_in:
        best = _resample_z(best, z_in)
    return np.clip(best, 0.0, 3.0).astype(np.float16)
