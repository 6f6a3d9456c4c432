"""Axial, canonical array order for any stored orientation, and back.

The models see array slices ``array[k]`` as axial images with the patient's anterior at the top and the
patient's right on the left (radiological view), because that is how the training data is laid out: array
axes (z, y, x) along world (S, P, L), LPS, the identity direction. A CT stored otherwise (a positive-diagonal
NIfTI affine, read as direction diag(-1, -1, 1); feet-first slices; a sagittal or coronal acquisition) is the
same image in another array order. :func:`to_canonical` reorders it by axis permutations and flips only (no
resampling, so no voxel value changes) so that each array axis runs along the world axis it is closest to, in
the positive direction; :meth:`Reorient.restore` puts an array computed on that grid back into the input's
order, so outputs keep the input's exact geometry. The axis order and flips are SimpleITK's
``DICOMOrient(image, "LPS")`` choice (asked of the filter), so the grid is the one it gives (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from lungtumor.imaging.volume import Volume


@dataclass(frozen=True)
class Reorient:
    """How the input's array became the canonical one: ``canonical = flip(input.transpose(axes), flips)``.

    Attributes:
        axes: for each canonical array axis (z, y, x), the input array axis it comes from.
        flips: canonical array axes that are reversed after the transpose.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[int, ...] = ()

    @property
    def identity(self) -> bool:
        """True when the input is already canonical (the arrays are the same)."""
        return self.axes == (0, 1, 2) and not self.flips

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Input-order (z, y, x) array → canonical order (a view, no copy)."""
        a = np.transpose(array, self.axes)
        return np.flip(a, self.flips) if self.flips else a

    def restore(self, array: np.ndarray) -> np.ndarray:
        """Canonical-order array → the input's order (a view, no copy): the inverse of :meth:`apply`."""
        a = np.flip(array, self.flips) if self.flips else array
        return np.transpose(a, np.argsort(self.axes))


def _permute_and_flip(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """SimpleITK's ``DICOMOrient(..., "LPS")`` choice for a direction matrix: (permute order, flip axes), both in
    ITK's (x, y, z) axis order; output axis i is input axis ``order[i]``, then reversed where ``flips[i]``. Asked
    of the filter itself on a 2x2x2 image with that direction (oblique axes follow ITK's nearest-axis rule)."""

    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection(tuple(float(v) for v in direction.ravel()))
    f = sitk.DICOMOrientImageFilter()
    f.SetDesiredCoordinateOrientation("LPS")
    f.Execute(probe)
    return tuple(int(v) for v in f.GetPermuteOrder()), tuple(bool(v) for v in f.GetFlipAxes())  # type: ignore[return-value]


def to_canonical(vol: Volume) -> tuple[Volume, Reorient]:
    """``vol`` reordered so that array axes (z, y, x) run along world +S, +P, +L (LPS) as nearly as its
    direction allows (the grid of SimpleITK's ``DICOMOrient(image, "LPS")``), with the same world position for
    every voxel; and the :class:`Reorient` that undoes it.

    An input that is canonical already comes back as it is (the same object). Otherwise the array is a
    view (transposed and flipped); spacing, origin and direction describe the new order exactly.
    """
    d = np.asarray(vol.direction, dtype=float).reshape(3, 3)
    if np.allclose(d, np.eye(3), atol=1e-6):
        return vol, Reorient()
    order, flip = _permute_and_flip(d)  # ITK axes (x, y, z): new voxel axis j = old voxel axis order[j]
    # numpy axes are ITK's reversed: canonical array axis a is ITK output axis 2 - a
    axes = tuple(2 - order[2 - a] for a in range(3))
    flips = tuple(a for a in range(3) if flip[2 - a])
    ro = Reorient(axes, flips)  # type: ignore[arg-type]
    if ro.identity:
        return vol, ro
    sign = [-1.0 if flip[j] else 1.0 for j in range(3)]
    spacing = tuple(vol.spacing[order[j]] for j in range(3))
    new_d = np.stack([sign[j] * d[:, order[j]] for j in range(3)], axis=1)
    corner = np.zeros(3)  # the input voxel (x, y, z) that becomes canonical voxel (0, 0, 0)
    shape_xyz = vol.array.shape[::-1]
    for j in range(3):
        if flip[j]:
            corner[order[j]] = shape_xyz[order[j]] - 1
    origin = np.asarray(vol.origin) + d @ (corner * np.asarray(vol.spacing))
    out = Volume(
        ro.apply(vol.array),
        spacing=spacing,  # type: ignore[arg-type]
        origin=tuple(origin),  # type: ignore[arg-type]
        direction=tuple(new_d.ravel()),
        meta=dict(vol.meta),
    )
    return out, ro


def from_canonical(array: np.ndarray, like: Volume, ro: Reorient) -> Volume:
    """A volume on ``like``'s grid (the input's) from an ``array`` computed on its canonical grid, made
    contiguous (writers and numpy consumers want it so)."""
    return like.with_array(np.ascontiguousarray(ro.restore(array)))


def canonical_pair(image: Volume, label: Volume) -> tuple[Volume, Volume]:
    """An image and its label on the same grid, both in canonical order (for training caches)."""
    can, ro = to_canonical(image)
    if ro.identity:
        return image, label
    return can, can.with_array(ro.apply(label.array))


def stored_order_note(stored: Volume, ro: Reorient) -> dict[str, str]:
    """A report metadata row saying that ``stored`` was reordered (empty when it was canonical already)."""
    if ro.identity:
        return {}
    d = np.asarray(stored.direction).reshape(3, 3)
    rows = " / ".join("(" + ", ".join(f"{v:.3g}" for v in r) + ")" for r in d)
    shape = " × ".join(str(n) for n in stored.shape)
    return {
        "Stored array order": f"reordered to axial LPS slices for prediction and display; as stored: shape "
        f"(z, y, x) {shape}, direction {rows} (outputs are written in this order)"
    }
