"""Per-lesion measurements of a tumour mask: volume, RECIST-like axial diameters, 3D diameter, size category.

A lesion is a 26-connected 3D component of the mask (:func:`lungtumor.postprocessing.filters.label_components`).

Diameter definition (validated on voxelised spheres and ellipsoids in ``tests/evaluation/test_measure.py``; see the
"measurement and metrics checks" section of BENCHMARKS.md): a voxelised shape holds the voxels whose centre
lies inside it. The Feret diameter of the voxel *centres* underestimates the true diameter (about 0.1 px for
large discs, 1 px for elongated ellipses) and the Feret diameter of the voxel *corners* overestimates it
(about +1.2 px for discs). We report the distance between the two farthest voxel centres **plus half the
smallest voxel edge** (half an in-plane pixel), which stays within about half a pixel of the analytic value for
round and elongated shapes. The short axis is the longest straight line perpendicular to the long axis
(RECIST), on the same slice, that stays inside the lesion's pixels (a line crossing n pixels measures n pixels,
which is unbiased for 1D sampling), and at most the long axis (the two estimators differ by up to half a
pixel on a disc centred on a pixel). "Axial" means the array's z planes. Known limit: a lesion whose
greatest dimension runs along z is under-read by up to about one slice thickness, since its ends fall
between slices.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from lungtumor.core.errors import InputError, atomic_write_text, ensure_writable_dir
from lungtumor.core.paths import unique_stems
from lungtumor.imaging.components import component_sizes, label_components_in_box, paint
from lungtumor.imaging.io import IMAGE_SUFFIXES, case_name, is_image_path, read_mask
from lungtumor.imaging.orientation import to_canonical
from lungtumor.imaging.volume import Volume

#: Size categories by greatest dimension (mm), AJCC 8th edition lung T thresholds (upper bounds, inclusive).
AJCC8_T_SIZE_MM: tuple[tuple[float, str], ...] = (
    (10.0, "T1a"),
    (20.0, "T1b"),
    (30.0, "T1c"),
    (40.0, "T2a"),
    (50.0, "T2b"),
    (70.0, "T3"),
)
SIZE_FIELD = "size_category_ajcc8_T"
SIZE_NOTE = (
    "AJCC 8th edition T category by size only (greatest dimension = largest 3D diameter); "
    "not a stage: invasion, nodules and nodes are not assessed"
)
UNITS = {
    "volume_ml": "mL",
    "long_axis_mm": "mm",
    "short_axis_mm": "mm",
    "diameter_3d_mm": "mm",
    "centroid_world_mm": "mm, (x, y, z) LPS world coordinates",
    "centroid_index_zyx": "voxel index (z, y, x) in canonical LPS order (the file's own for LPS storage)",
    "long_axis_slice": "axial slice index (0-based, canonical LPS order: feet to head)",
    "slice_first": "axial slice index (0-based, canonical LPS order: feet to head)",
    "slice_last": "axial slice index (0-based, canonical LPS order: feet to head)",
}
DEFINITIONS = {
    "lesion": "26-connected 3D component of the mask; lesions are numbered by decreasing volume",
    "long_axis_mm": "largest in-plane Feret diameter over the axial slices (voxel centres + half a pixel)",
    "short_axis_mm": "longest line inside the lesion perpendicular to the long axis, on the same slice",
    "diameter_3d_mm": "largest 3D Feret diameter (voxel centres + half the smallest voxel edge)",
    SIZE_FIELD: SIZE_NOTE,
}


@dataclass
class Lesion:
    """Measurements of one lesion (units in the field names; coordinates as documented in :data:`UNITS`)."""

    label: int
    voxels: int
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    long_axis_slice: int
    diameter_3d_mm: float
    centroid_world_mm: tuple[float, float, float]
    centroid_index_zyx: tuple[float, float, float]
    slice_first: int
    slice_last: int
    size_category_ajcc8_T: str


def size_category_ajcc8(greatest_dimension_mm: float) -> str:
    """AJCC 8th edition lung T category by size alone: T1a <= 10 mm < T1b <= 20 < T1c <= 30 < T2a <= 40 <
    T2b <= 50 < T3 <= 70 mm < T4. A size category, not a stage."""
    if not math.isfinite(greatest_dimension_mm) or greatest_dimension_mm < 0:
        raise ValueError(
            f"greatest dimension must be a finite non-negative length, got {greatest_dimension_mm}"
        )
    for upper, cat in AJCC8_T_SIZE_MM:
        if greatest_dimension_mm <= upper:
            return cat
    return "T4"


def _hull_points(pts: np.ndarray) -> np.ndarray:
    """The convex-hull vertices of ``pts`` (N, d); all points when the hull is degenerate and small."""
    if len(pts) <= 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # collinear or coplanar points
        try:
            return pts[ConvexHull(pts, qhull_options="QJ").vertices]
        except QhullError:
            return pts


def _feret(pts_mm: np.ndarray, spacing: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest distance between points (N, d) in mm plus half the smallest voxel edge, and its direction."""
    half = 0.5 * float(np.min(spacing))
    if len(pts_mm) == 1:
        u = np.zeros(pts_mm.shape[1])
        u[int(np.argmin(spacing))] = 1.0
        return 2.0 * half, u
    v = _hull_points(pts_mm)
    best, pair = -1.0, (0, 0)
    for start in range(0, len(v), 2048):  # bounded memory for large hulls
        d2 = ((v[start : start + 2048, None, :] - v[None, :, :]) ** 2).sum(-1)
        k = int(np.argmax(d2))
        if d2.flat[k] > best:
            best = float(d2.flat[k])
            pair = (start + k // len(v), k % len(v))
    d = math.sqrt(best)
    u = (v[pair[1]] - v[pair[0]]) / d
    return d + half, u


def _longest_perpendicular_chord(sl: np.ndarray, sp_yx: np.ndarray, u: np.ndarray) -> float:
    """Longest straight run inside the pixel region ``sl`` (y, x) along lines perpendicular to ``u``, in mm.

    Lines are sampled every 0.1 pixel and spaced 0.25 pixel apart; a sample is inside when the pixel it falls
    in is set, so a line crossing n pixels along an axis measures n pixels (unbiased 1D sampling). Run lengths
    are averaged over 5 neighbouring lines (about one pixel) before taking the maximum."""
    v = np.array([-u[1], u[0]])
    pix = float(sp_yx.min())
    idx = np.argwhere(sl)
    pts = idx * sp_yx
    centre = pts.mean(axis=0)
    half = float(np.sqrt(((pts - centre) ** 2).sum(1)).max()) + 2 * pix
    t = np.arange(-half, half + 1e-9, 0.25 * pix)
    step = 0.1 * pix
    s = np.arange(-half, half + 1e-9, step)
    runs = np.zeros(len(t))
    for i in range(0, len(t), 64):  # bounded memory
        p = centre + t[i : i + 64, None, None] * u + s[None, :, None] * v  # (lines, samples, 2) mm
        ij = np.rint(p / sp_yx).astype(np.int64)
        ok = (ij >= 0).all(-1) & (ij[..., 0] < sl.shape[0]) & (ij[..., 1] < sl.shape[1])
        inside = np.zeros(ok.shape, dtype=bool)
        inside[ok] = sl[ij[ok][:, 0], ij[ok][:, 1]]
        for j, row in enumerate(inside):
            if row.any():
                d = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
                runs[i + j] = (np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).max() * step
    # The maximum over many noisy parallel lines is biased upwards; average each line with its neighbours
    # within +-0.5 pixel first.
    smooth = np.convolve(runs, np.ones(5) / 5, mode="same")
    return float(max(smooth.max(), pix))


def _axial_diameters(comp: np.ndarray, spacing_xyz: np.ndarray, z0: int) -> tuple[float, float, int]:
    """(long axis mm, short axis mm, slice index) of a lesion crop ``comp`` (z, y, x) starting at slice ``z0``."""
    sp_yx = spacing_xyz[[1, 0]]
    best = (-1.0, 0.0, z0)
    for k in range(comp.shape[0]):
        sl = comp[k]
        if not sl.any():
            continue
        edge = sl & ~ndi.binary_erosion(sl)
        pts = np.argwhere(edge) * sp_yx
        long_mm, u = _feret(pts, sp_yx)
        if long_mm > best[0]:
            # the two estimators differ by up to half a pixel (a disc centred on a pixel centre reads its
            # perpendicular run n pixels long, its long axis n - 1 pixels + half): RECIST's short axis never
            # exceeds the long one
            short_mm = min(_longest_perpendicular_chord(sl, sp_yx, u), long_mm)
            best = (long_mm, short_mm, z0 + k)
    return best


def measure_lesions(mask: Volume) -> list[Lesion]:
    """Measure every lesion (26-connected component) of a binary mask.

    Args:
        mask: Volume whose array (z, y, x) is {0, 1}; spacing (x, y, z) mm. Any stored orientation: the
            measures are taken on its axial slices (``imaging.orientation.to_canonical``), and the voxel indices
            reported (slices, centroid index) are those of that canonical order: the stored ones for LPS
            storage (direction identity); for a RAS-stored file (diag(-1, -1, 1)) the slice index is the
            file's own, while y and x run the other way.

    Returns:
        Lesions numbered 1..n by decreasing volume.
    """

    mask, _ = to_canonical(mask)  # "axial" means along world z, whatever the array order
    # labels of the mask's bounding box only (uint16 when they fit), and each lesion's work on its own box
    box, labels, n = label_components_in_box(mask.array)
    if n == 0:
        return []
    spacing = np.asarray(mask.spacing, dtype=float)  # (x, y, z)
    sp_zyx = spacing[::-1]
    counts = component_sizes(labels, n)
    boxes = ndi.find_objects(labels, max_label=n)
    origin = np.array([s.start for s in box])
    lesions: list[Lesion] = []
    for i in sorted(range(1, n + 1), key=lambda j: -counts[j]):
        sl = boxes[i - 1]
        comp = labels[sl] == i
        offset = origin + np.array([s.start for s in sl])
        idx = np.argwhere(comp)
        centroid_zyx = idx.mean(axis=0) + offset
        surface = comp & ~ndi.binary_erosion(comp, structure=np.ones((3, 3, 3), bool))
        d3, _ = _feret(np.argwhere(surface) * sp_zyx, sp_zyx)
        long_mm, short_mm, z_long = _axial_diameters(comp, spacing, int(offset[0]))
        lesions.append(
            Lesion(
                label=len(lesions) + 1,
                voxels=int(counts[i]),
                volume_ml=float(counts[i]) * mask.voxel_volume_mm3 / 1000.0,
                long_axis_mm=round(long_mm, 3),
                short_axis_mm=round(short_mm, 3),
                long_axis_slice=z_long,
                diameter_3d_mm=round(d3, 3),
                centroid_world_mm=tuple(
                    round(float(c), 3) for c in mask.index_to_world(centroid_zyx[None])[0]
                ),
                centroid_index_zyx=tuple(round(float(c), 3) for c in centroid_zyx),
                slice_first=int(offset[0] + idx[:, 0].min()),
                slice_last=int(offset[0] + idx[:, 0].max()),
                size_category_ajcc8_T=size_category_ajcc8(d3),
            )
        )
    return lesions


def lesion_labels(mask: Volume) -> tuple[np.ndarray, int]:
    """The lesions of a binary mask as a label map numbered as :func:`measure_lesions` numbers them.

    Args:
        mask: Volume whose array (z, y, x) is {0, 1}, in any stored orientation.

    Returns:
        (labels, n): uint16 (int32 beyond 65535 lesions) array of the mask's own shape and array order (not the
        canonical one), 0 background and k = lesion k (by decreasing volume; ties in canonical scan order,
        as ``measure_lesions``); n lesions.
    """
    can, ro = to_canonical(mask)
    box, labels, n = label_components_in_box(can.array)
    out = np.zeros(can.shape, np.uint16 if n <= 65535 else np.int32)
    if n:
        counts = component_sizes(labels, n)
        table = np.zeros(n + 1, out.dtype)
        table[sorted(range(1, n + 1), key=lambda j: -counts[j])] = np.arange(1, n + 1)
        paint(out[box], labels, table)  # a slab at a time
    return np.ascontiguousarray(ro.restore(out)), n


def _totals(lesions: Sequence[Lesion]) -> dict:
    return {
        "n_lesions": len(lesions),
        "total_volume_ml": round(sum(les.volume_ml for les in lesions), 4),
        "largest_diameter_3d_mm": max((les.diameter_3d_mm for les in lesions), default=0.0),
        "largest_long_axis_mm": max((les.long_axis_mm for les in lesions), default=0.0),
        "sum_long_axes_mm": round(sum(les.long_axis_mm for les in lesions), 3),
    }


CSV_FIELDS = (
    ["case"]
    + [f for f in Lesion.__dataclass_fields__ if f not in ("centroid_world_mm", "centroid_index_zyx")]
    + [
        "centroid_x_mm",
        "centroid_y_mm",
        "centroid_z_mm",
        "centroid_z_index",
        "centroid_y_index",
        "centroid_x_index",
    ]
)


def write_lesions(lesions: Sequence[Lesion], case: str, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<case>_lesions.json`` (lesions, case totals, units, definitions) and ``<case>_lesions.csv``
    (a row per lesion) into ``out_dir``, atomically.

    Returns:
        (json_path, csv_path).
    """
    out = ensure_writable_dir(out_dir)
    doc = {
        "case": case,
        "units": UNITS,
        "definitions": DEFINITIONS,
        "totals": _totals(lesions),
        "lesions": [asdict(les) for les in lesions],
    }
    json_path = out / f"{case}_lesions.json"
    atomic_write_text(json_path, json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for les in lesions:
        row = {k: v for k, v in asdict(les).items() if k in CSV_FIELDS}
        cx, cy, cz = les.centroid_world_mm
        iz, iy, ix = les.centroid_index_zyx
        row.update(case=case, centroid_x_mm=cx, centroid_y_mm=cy, centroid_z_mm=cz)
        row.update(centroid_z_index=iz, centroid_y_index=iy, centroid_x_index=ix)
        w.writerow(row)
    csv_path = out / f"{case}_lesions.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def summary_line(case: str, lesions: Sequence[Lesion]) -> str:
    """One printable line per case: lesion count, total volume, largest lesion."""
    t = _totals(lesions)
    if not lesions:
        return f"{case}: no lesions"
    big = max(lesions, key=lambda les: les.diameter_3d_mm)
    return (
        f"{case}: {t['n_lesions']} lesion(s), total {t['total_volume_ml']:.2f} mL; largest 3D diameter "
        f"{big.diameter_3d_mm:.1f} mm (size category {big.size_category_ajcc8_T}, size only), "
        f"long/short axis {big.long_axis_mm:.1f}/{big.short_axis_mm:.1f} mm on slice {big.long_axis_slice}"
    )


def collect_masks(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The mask files to measure: a file as given; a folder gives its ``*_tumour`` masks when it has any (a
    ``predict`` output folder, whose ``*_prob`` maps are not masks), otherwise every image file in it (a
    folder of labels), sorted. A folder without either is an error.

    Raises:
        InputError: a folder holds no mask files.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            out.append(p)  # a missing or unreadable file is that mask's own error
            continue
        files = sorted(
            f for f in p.iterdir() if f.is_file() and is_image_path(f) and not f.name.startswith(".")
        )
        masks = [f for f in files if case_name(f).endswith("_tumour")]
        chosen = masks or [f for f in files if not case_name(f).endswith("_prob")]
        if not chosen:
            raise InputError(p, f"folder holds no mask files ({', '.join(IMAGE_SUFFIXES)})")
        out.extend(chosen)
    return out


def measure_files(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    errors: list[str] | None = None,
    *,
    label: int | None = None,
) -> Iterator[str]:
    """Measure each mask file (folders as :func:`collect_masks` expands them) and write its JSON and CSV into
    ``out_dir``; yields one printable line per mask.

    ``errors``: a mask that cannot be measured (missing, unreadable, not binary) appends its one-line
    message here and the others go on; None: its :class:`InputError` is raised. ``label``: the masks are
    multi-label and the voxels equal to it are the tumour (``measure --label N``). Two masks with the same
    file name get distinct output names (:func:`lungtumor.core.paths.unique_stems`: ``<name>_<parent folder>``).

    Raises:
        InputError: (besides the above) the output folder is not writable, or a folder holds no masks.
    """
    masks = collect_masks(paths)
    stems = unique_stems([(case_name(p), p) for p in masks])
    for p, stem in zip(masks, stems, strict=True):
        try:
            vol = read_mask(p, label=label, label_option="--label")
        except InputError as e:
            if errors is None:
                raise
            errors.append(str(e))
            continue
        ensure_writable_dir(out_dir)  # made once a mask is read: bad masks alone leave no folder behind
        lesions = measure_lesions(vol)
        json_path, _ = write_lesions(lesions, stem, out_dir)
        yield f"{summary_line(stem, lesions)} -> {json_path}"
