"""The HTML page of ``lungtumor compare``: the category and its rule, the registration, the lesion table, and the
two scans side by side at each lesion with the long axes drawn (PNG, base64-embedded).

The page is ``templates/compare.html.j2``, rendered with autoescape on and ``StrictUndefined``: every value
from the inputs (file names, lesion fields) is escaped. It makes no network request (a Content-Security-Policy
forbids any and allows no script). Slices are axial, in canonical LPS order, shown radiologically (patient
right on the image's left, anterior at the top) with square pixels in mm.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial import ConvexHull, QhullError

from lungtumor import __version__
from lungtumor.evaluation.measure import Lesion
from lungtumor.followup.assess import Assessment
from lungtumor.followup.registration import Registration
from lungtumor.imaging.volume import Volume
from lungtumor.report.templating import environment

#: Lung display window (HU): width 1500, level -600.
LUNG_WINDOW = (-1350.0, 150.0)
#: Most lesion figures on one page (the largest rows first, as listed).
MAX_FIGURES = 20
#: Half-width (mm) of a figure's crop, the same on both sides: this, or 1.2 x the longer long axis of the two.
MIN_HALF_MM = 25.0
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def world_to_index(vol: Volume, xyz_mm: Sequence[float]) -> np.ndarray:
    """Continuous voxel index (z, y, x) of a world point (x, y, z mm)."""
    d = np.asarray(vol.direction).reshape(3, 3)
    ijk = d.T @ (np.asarray(xyz_mm, float) - np.asarray(vol.origin)) / np.asarray(vol.spacing)
    return ijk[::-1]


def long_axis_endpoints(sl: np.ndarray, sp_yx: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two farthest pixel centres (y, x index) of a bool slice ``sl``, measured in mm; None when empty.
    For drawing only: the reported long axis is :func:`lungtumor.evaluation.measure.measure_lesions`'."""
    idx = np.argwhere(sl).astype(float)
    if len(idx) == 0:
        return None
    pts = idx * np.asarray(sp_yx, float)
    if len(pts) > 3:
        try:
            keep = ConvexHull(pts, qhull_options="QJ").vertices
            idx, pts = idx[keep], pts[keep]
        except QhullError:
            pass
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return idx[i], idx[j]


def _panel(
    ax, ct: Volume, labels: np.ndarray, lesion: Lesion | None, point_zyx: np.ndarray, title: str, half: float
) -> None:
    """One side: the axial slice through the lesion's long axis (or through ``point_zyx``), cropped ``half`` mm
    around it, with the lesion's outline and its long axis."""
    z = lesion.long_axis_slice if lesion else int(round(float(point_zyx[0])))
    if not 0 <= z < ct.shape[0]:
        ax.text(0.5, 0.5, "outside the scan", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        return
    sx, sy = ct.spacing[0], ct.spacing[1]
    cy, cx = lesion.centroid_index_zyx[1:] if lesion else point_zyx[1:]
    y0, y1 = max(0, int(cy - half / sy)), min(ct.shape[1], int(cy + half / sy) + 1)
    x0, x1 = max(0, int(cx - half / sx)), min(ct.shape[2], int(cx + half / sx) + 1)
    img = np.clip(ct.array[z, y0:y1, x0:x1].astype(np.float32), *LUNG_WINDOW)
    extent = (x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5)
    ax.imshow(img, cmap="gray", extent=extent, aspect=sy / sx, interpolation="nearest")
    if lesion is not None:
        own = labels[z, y0:y1, x0:x1] == lesion.label
        if own.any():
            ax.contour(np.arange(x0, x1), np.arange(y0, y1), own.astype(float), levels=[0.5], colors="#ff3b30",
                       linewidths=1.0)  # fmt: skip
            ends = long_axis_endpoints(own, (sy, sx))
            if ends is not None:
                (ya, xa), (yb, xb) = ends
                ax.plot([xa + x0, xb + x0], [ya + y0, yb + y0], color="#ffd60a", linewidth=1.5)
    else:
        ax.plot([point_zyx[2]], [point_zyx[1]], marker="+", color="#0a84ff", markersize=14)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def lesion_figures(
    base_ct: Volume,
    fu_ct: Volume,
    base_labels: np.ndarray,
    fu_labels: np.ndarray,
    a: Assessment,
    reg: Registration,
    max_figures: int = MAX_FIGURES,
) -> list[dict[str, str]]:
    """``{"caption", "png"}`` (base64) per row of the assessment, up to ``max_figures``: the baseline and the
    follow-up side by side at the row's lesions (canonical CTs and their lesion labels (z, y, x), numbered as
    measure numbers them). A missing side shows the other side's centroid carried through the registration."""
    base = {les.label: les for les in a.baseline}
    fu = {les.label: les for les in a.followup}
    out = []
    for row, m in zip(a.rows[:max_figures], a.matches[:max_figures], strict=True):
        bl = base[m.baseline[0]] if m.baseline else None
        fl = fu[m.followup[0]] if m.followup else None
        if bl is not None:
            b_pt = np.asarray(bl.centroid_index_zyx)
            f_pt = world_to_index(fu_ct, reg.to_followup(np.asarray([bl.centroid_world_mm]))[0])
        else:
            f_pt = np.asarray(fl.centroid_index_zyx)  # type: ignore[union-attr]
            b_pt = world_to_index(base_ct, reg.to_baseline(np.asarray([fl.centroid_world_mm]))[0])  # type: ignore[union-attr]
        fig = Figure(figsize=(7.2, 3.6))
        axes = fig.subplots(1, 2)
        b_title = (
            f"baseline lesion {bl.label}: {bl.long_axis_mm:.1f} mm, slice {bl.long_axis_slice}"
            if bl
            else "baseline: no lesion"
        )
        f_title = (
            f"follow-up lesion {fl.label}: {fl.long_axis_mm:.1f} mm, slice {fl.long_axis_slice}"
            if fl
            else "follow-up: no lesion"
        )
        half = max([MIN_HALF_MM] + [1.2 * les.long_axis_mm for les in (bl, fl) if les is not None])
        _panel(axes[0], base_ct, base_labels, bl, b_pt, b_title, half)  # one crop (mm) for both sides
        _panel(axes[1], fu_ct, fu_labels, fl, f_pt, f_title, half)
        fig.tight_layout()
        caption = f"{row['kind']}: baseline {row['baseline_lesions'] or '-'} / follow-up {row['followup_lesions'] or '-'}"
        out.append({"caption": caption, "png": _png(fig)})
    return out


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def render_compare_html(
    doc: dict[str, Any], rows: Sequence[dict[str, Any]], figures: Sequence[dict[str, str]]
) -> str:
    """The page from ``response.json``'s document, the lesions.csv rows and the lesion figures."""
    columns = list(rows[0]) if rows else []
    return (
        environment()
        .get_template("compare.html.j2")
        .render(
            doc=doc,
            recist=doc["recist"],
            registration=doc["registration"],
            columns=columns,
            rows=[[_cell(r[c]) for c in columns] for r in rows],
            figures=figures,
            more=max(0, len(rows) - len(figures)),
            csp=CSP,
            version=__version__,
        )
    )
