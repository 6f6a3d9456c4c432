"""The :class:`Volume` type: voxels with their geometry (readers and writers: :mod:`lungtumor.imaging.io`).

Axis order: ``Volume.array`` is indexed (z, y, x). ``spacing``, ``origin`` and ``direction`` are in
(x, y, z) order, millimetres, LPS world coordinates, exactly as SimpleITK reports them. ``direction``
is the 3x3 matrix whose columns are the world directions of the x, y and z voxel axes, stored row-major
as 9 floats (SimpleITK's convention). Readers return a ``Volume``; writers restore the geometry, so a
mask written for a CT opens on top of it in 3D Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk


@dataclass
class Volume:
    """A 3D image with its geometry.

    Attributes:
        array: voxels, shape (z, y, x). HU for CT (any numeric dtype), {0, 1} uint8 for masks.
        spacing: voxel size in mm, (x, y, z).
        origin: world position of voxel (0, 0, 0) in mm, (x, y, z), LPS.
        direction: 3x3 direction cosines, row-major, 9 floats (SimpleITK convention).
        meta: free-form metadata strings (e.g. DICOM tags) carried for reports.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        sx, sy, sz = self.spacing
        return sx * sy * sz

    def with_array(self, array: np.ndarray) -> Volume:
        """A new Volume with the same geometry and other voxels (same shape required)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array, meta=dict(self.meta))

    def same_grid(self, other: Volume, tol: float = 1e-3) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction (within ``tol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(self.spacing)), rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol, rtol=0)
        )

    def grid_mismatch(self, other: Volume) -> str | None:
        """Describe how ``other``'s grid differs from this one, or ``None`` when they match."""
        if self.shape != other.shape:
            return f"shape {other.shape} (z,y,x) differs from {self.shape}"
        if not np.allclose(self.spacing, other.spacing, atol=1e-3, rtol=0):
            return f"spacing {fmt(other.spacing)} mm differs from {fmt(self.spacing)} mm"
        if not np.allclose(self.origin, other.origin, atol=1e-3 * max(1.0, max(self.spacing)), rtol=0):
            return f"origin {fmt(other.origin)} mm differs from {fmt(self.origin)} mm"
        if not np.allclose(self.direction, other.direction, atol=1e-3, rtol=0):
            return "direction matrix differs"
        return None

    def to_sitk(self):
        """Convert to a ``SimpleITK.Image`` with the same geometry."""

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img, meta: dict[str, str] | None = None) -> Volume:
        """Build a Volume from a ``SimpleITK.Image`` (3D, scalar)."""

        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=img.GetDirection(),
            meta=meta or {},
        )

    def index_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Map voxel indices (N, 3) in (z, y, x) order to world mm (N, 3) in (x, y, z) order."""
        ijk = np.asarray(zyx, dtype=float)[:, ::-1]
        d = np.asarray(self.direction).reshape(3, 3)
        return ijk * np.asarray(self.spacing) @ d.T + np.asarray(self.origin)


def fmt(t) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in t) + ")"
