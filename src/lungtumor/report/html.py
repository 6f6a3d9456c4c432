"""The HTML of the case report: a jinja2 template with autoescape, inline CSS and JS, tables, loss curves.

The page is ``templates/report.html.j2``, rendered with autoescape on and ``StrictUndefined``, so every value
from input files (case name, file names, DICOM tags, lesion fields, config values) is HTML-escaped by the
template. Only fragments this module builds itself are passed as :class:`markupsafe.Markup`: the CSS and
script constants, the Content-Security-Policy, the viewer's JSON and ``data:`` image URIs. The viewer's data
travels as JSON inside ``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped, and the
Content-Security-Policy allows only this page's own script (by hash), inline styles and ``data:`` images, so
nothing can be fetched and injected markup could not run script.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lungtumor import __version__
from lungtumor.core.errors import InputError
from lungtumor.imaging.volume import Volume
from lungtumor.report.assets import CSS, SCRIPT
from lungtumor.report.templating import environment

#: Column headers for known lesion fields; others are derived from the field name.
LESION_LABELS = {
    "lesion": "#",
    "label": "#",
    "id": "#",
    "volume_ml": "Volume (mL)",
    "volume_mm3": "Volume (mm³)",
    "long_axis_mm": "Long axis (mm)",
    "short_axis_mm": "Short axis (mm)",
    "long_axis_slice": "Long-axis slice index",
    "max_3d_diameter_mm": "3D diameter (mm)",
    "diameter_3d_mm": "3D diameter (mm)",
    "centroid_mm": "Centroid x, y, z (mm)",
    "centroid_world_mm": "Centroid x, y, z (mm)",
    "centroid_index_zyx": "Centroid index z, y, x",
    "size_category_ajcc8_T": "Size category (AJCC 8 T)",
    "voxels": "Voxels",
    "slice_range": "Slice indices",
    "largest_slice": "Largest slice index",
    "size_category": "Size category",
    "n_voxels": "Voxels",
}


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element."""
    s = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _header(key: str) -> str:
    if key in LESION_LABELS:
        return LESION_LABELS[key]
    words = key.split("_")
    unit = {"mm": "(mm)", "ml": "(mL)", "mm3": "(mm³)", "mm2": "(mm²)", "hu": "(HU)"}.get(words[-1].lower())
    if unit and len(words) > 1:
        words = words[:-1] + [unit]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def fmt_value(key: str, v: Any) -> str:
    """A lesion or metadata value as (unescaped) display text."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "—"
        return f"{f:.2f}" if abs(f) < 10 or key.endswith("_ml") else f"{f:.1f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        items = list(v)
        if "range" in key and len(items) == 2:
            return f"{fmt_value('', items[0])}–{fmt_value('', items[1])}"
        return ", ".join(fmt_value("", x) for x in items)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt_value(str(k), x)}" for k, x in v.items())
    return str(v)


def _is_num(v: Any) -> bool:
    """Whether a table cell holds a number (right-aligned)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _merge_slice_span(row: dict[str, Any]) -> dict[str, Any]:
    """``slice_first`` and ``slice_last`` shown as one ``slice_range`` column."""
    if "slice_first" in row and "slice_last" in row and "slice_range" not in row:
        out: dict[str, Any] = {}
        for k, v in row.items():
            if k == "slice_first":
                out["slice_range"] = (v, row["slice_last"])
            elif k != "slice_last":
                out[k] = v
        return out
    return row


def lesion_table(rows: Sequence[dict[str, Any]], key_slices: Sequence[int | None]) -> dict[str, Any] | None:
    """The lesion table as template data (``None`` without lesions): header cells, and rows with their key
    slice (the viewer jumps to it when the row is clicked) and cells; texts unescaped."""
    if not rows:
        return None
    rows = [_merge_slice_span(r) for r in rows]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    head = [{"text": _header(k), "num": _is_num(rows[0].get(k))} for k in keys]
    body = [
        {
            "slice": None if z is None else int(z),
            "cells": [{"text": fmt_value(k, r.get(k)), "num": _is_num(r.get(k))} for k in keys],
        }
        for r, z in zip(rows, key_slices, strict=False)
    ]
    return {"head": head, "rows": body}


def _num(v: float, digits: int) -> str:
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _vec(t: Sequence[float], digits: int = 3) -> str:
    return "(" + ", ".join(_num(float(v), digits) for v in t) + ")"


def metadata_rows(case: str, image: Volume, mask: Volume, meta: dict[str, str]) -> list[tuple[str, str]]:
    """(name, value) rows describing the input; values unescaped."""
    a = image.array
    d = np.asarray(image.direction).reshape(3, 3)
    ext = [n * s for n, s in zip(image.shape[::-1], image.spacing, strict=True)]
    tumour_ml = float(np.count_nonzero(mask.array)) * image.voxel_volume_mm3 / 1000.0
    rows: list[tuple[str, str]] = [("Case", case)]
    rows += [(str(k), str(v)) for k, v in meta.items()]
    rows += [
        ("Shape (z, y, x)", " × ".join(str(n) for n in image.shape)),
        ("Spacing (x, y, z)", _vec(image.spacing) + " mm"),
        ("Extent (x, y, z)", _vec(ext, 1) + " mm"),
        ("Origin (x, y, z)", _vec(image.origin, 2) + " mm (LPS)"),
        ("Direction", " / ".join(_vec(row) for row in d)),
        ("Voxel type", str(a.dtype)),
        ("HU range", f"{float(a.min()):.0f} to {float(a.max()):.0f} (mean {float(a.mean()):.0f})"),
        ("Tumour voxels", f"{int(np.count_nonzero(mask.array))} ({tumour_ml:.2f} mL)"),
    ]
    rows += [(f"DICOM {k}", str(v)) for k, v in image.meta.items()]
    return rows


# ----------------------------------------------------------------------------- loss curves


def loss_curve_section(run_dir: Path) -> dict[str, str | None]:
    """The run folder's loss curves as ``{"img": data URI or None, "source": str, "note": str}``.

    Uses ``loss_curves.png`` when present, else plots ``metrics.csv``.

    Raises:
        InputError: ``run_dir`` is not a folder.
    """
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder does not exist")
    png = run_dir / "loss_curves.png"
    csv_path = run_dir / "metrics.csv"
    if png.is_file():
        data = png.read_bytes()
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return {
                "img": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                "source": png.name,
                "note": "",
            }
        return {"img": None, "source": png.name, "note": f"{png.name} is not a PNG file."}
    if csv_path.is_file():
        try:
            img = plot_metrics_csv(csv_path)
        except (OSError, ValueError, csv.Error, UnicodeDecodeError) as e:
            return {"img": None, "source": csv_path.name, "note": f"Could not read {csv_path.name}: {e}"}
        if img is None:
            return {
                "img": None,
                "source": csv_path.name,
                "note": f"{csv_path.name} holds no numeric columns.",
            }
        return {
            "img": "data:image/png;base64," + base64.b64encode(img).decode("ascii"),
            "source": csv_path.name,
            "note": "",
        }
    return {
        "img": None,
        "source": "",
        "note": "The run folder holds neither loss_curves.png nor metrics.csv.",
    }


def plot_metrics_csv(path: Path) -> bytes | None:
    """Plot a (Lightning-style, sparse) metrics CSV: losses on one panel, other metrics on another. PNG bytes."""

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = list(rows[0].keys())
    xkey = "epoch" if "epoch" in cols else ("step" if "step" in cols else None)
    skip = {"epoch", "step", "lr", "learning_rate", "time", "epoch_time"}
    series: dict[str, dict[float, list[float]]] = {}
    for i, r in enumerate(rows):
        try:
            x = float(r[xkey]) if xkey and r.get(xkey) not in (None, "") else float(i)
        except ValueError:
            x = float(i)
        for c in cols:
            if c is None or c in skip or r.get(c) in (None, ""):
                continue
            try:
                y = float(r[c])
            except ValueError:
                continue
            if math.isfinite(y):
                series.setdefault(c, {}).setdefault(x, []).append(y)
    if not series:
        return None
    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [(t, s) for t, s in (("Loss", losses), ("Metrics", others)) if s]
    fig = Figure(figsize=(5.2 * len(panels), 3.4))
    FigureCanvasAgg(fig)
    for i, (title, group) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, pts in sorted(group.items()):
            xs = sorted(pts)
            ax.plot(xs, [float(np.mean(pts[x])) for x in xs], marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel(xkey or "row")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ----------------------------------------------------------------------------- page


def _summary_cards(
    lesions: Sequence[dict[str, Any]], viewer: dict[str, Any], mask: Volume
) -> list[dict[str, str]]:
    """The summary cards above the viewer as ``{"ident", "value", "label"}`` dicts."""
    total_ml = float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3 / 1000.0
    n_tum = int(np.count_nonzero(np.count_nonzero(mask.array.reshape(mask.shape[0], -1), axis=1)))
    cards = [
        {"ident": "stat-lesions", "value": str(len(lesions)), "label": "lesions"},
        {"ident": "stat-volume", "value": f"{total_ml:.2f} mL", "label": "total tumour volume"},
        {"ident": "stat-slices", "value": f"{n_tum} of {viewer['n_total']}", "label": "slices with tumour"},
    ]
    diam = [r.get("diameter_3d_mm") or r.get("max_3d_diameter_mm") or r.get("long_axis_mm") for r in lesions]
    diam = [float(d) for d in diam if isinstance(d, (int, float)) and math.isfinite(float(d))]
    if diam:
        cards.append({"ident": "stat-diameter", "value": f"{max(diam):.1f} mm", "label": "largest diameter"})
    return cards


def _ticks(viewer: dict[str, Any]) -> list[str]:
    """Slider tick positions (percent, formatted) of the embedded slices with tumour."""
    m = len(viewer["z"])
    return [f"{100.0 * i / max(1, m - 1):.3f}" for i, a in enumerate(viewer["area_mm2"]) if a > 0]


def _curves_context(curves: dict[str, str | None] | None) -> dict[str, Any] | None:
    """The training-curves section's template data: the loss-curve image, or why there is none."""
    if curves is None:
        return None
    img = curves.get("img")
    return {
        # Trusted: a data: URI that loss_curve_section built from base64 (no quote, < or &).
        "img": Markup(img) if img else None,
        "source": curves.get("source") or "",
        "note": curves.get("note") or "",
    }


def _csp(script: str) -> str:
    """The Content-Security-Policy: no fetches, inline styles, ``data:`` images, only ``script`` may run."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def render_html(
    *,
    case: str,
    image: Volume,
    mask: Volume,
    viewer: dict[str, Any],
    lesions: Sequence[dict[str, Any]],
    lesion_note: str,
    key_slices: Sequence[int | None],
    meta: dict[str, str],
    curves: dict[str, str | None] | None,
    warnings: Sequence[str] = (),
) -> str:
    """The whole report page as one self-contained HTML string; ``warnings`` are shown above everything
    (e.g. a model trained only on phantoms)."""
    i0 = viewer["default"]
    w, h = viewer["size"]
    ov0 = viewer["overlay"][i0] if viewer["z"] else None
    ct0 = viewer["ct"]["lung"][i0] if viewer["z"] else ""
    context = {
        "case": case,
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": __version__,
        # Trusted, built here from constants and a base64 hash; escaping would turn its quotes into entities.
        "csp": Markup(_csp(SCRIPT)),
        # Trusted constants of this package; raw text inside <style>/<script>, where entities are not decoded
        # (and the script must stay byte-identical to match its CSP hash).
        "css": Markup(CSS),
        "script": Markup(SCRIPT),
        # Trusted: JSON with <, > and & escaped as \u003c etc., safe raw inside <script>.
        "data_json": Markup(_json_for_script(viewer)),
        # Trusted: data: URIs that the writer built from base64 PNG/JPEG bytes.
        "ct_src": Markup(ct0),
        "overlay_src": Markup(ov0) if ov0 else "",
        "width": w,
        "height": h,
        "axis_aligned": bool(viewer["axis_aligned"]),
        "slice_index": viewer["z"][i0] if viewer["z"] else 0,
        "n_total": viewer["n_total"],
        "n_embedded": len(viewer["z"]),
        "slider_max": max(0, len(viewer["z"]) - 1),
        "slider_value": i0,
        "ticks": _ticks(viewer),
        "cards": _summary_cards(lesions, viewer, mask),
        "lesion_table": lesion_table(lesions, key_slices),
        "lesion_note": lesion_note,
        "curves": _curves_context(curves),
        "metadata": metadata_rows(case, image, mask, meta),
        "warnings": [str(w) for w in warnings],
    }
    return environment().get_template("report.html.j2").render(context)
