"""The HTML of the case report: template, inline CSS and JS, tables, loss curves.

Everything here builds one string. Every value that comes from input files goes through :func:`esc`
(``html.escape``); the viewer's data travels as JSON inside ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, and a Content-Security-Policy allows only this page's own script (by hash),
inline styles and ``data:`` images, so nothing can be fetched and injected markup could not run script.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lungtumor import __version__
from lungtumor.core.errors import InputError
from lungtumor.imaging.volume import Volume
from lungtumor.report.assets import CSS, SCRIPT

#: Column headers for known lesion fields; others are derived from the field name.
LESION_LABELS = {
    "lesion": "#",
    "label": "#",
    "id": "#",
    "volume_ml": "Volume (mL)",
    "volume_mm3": "Volume (mm³)",
    "long_axis_mm": "Long axis (mm)",
    "short_axis_mm": "Short axis (mm)",
    "long_axis_slice": "Long-axis slice",
    "max_3d_diameter_mm": "3D diameter (mm)",
    "diameter_3d_mm": "3D diameter (mm)",
    "centroid_mm": "Centroid x, y, z (mm)",
    "centroid_world_mm": "Centroid x, y, z (mm)",
    "centroid_index_zyx": "Centroid index z, y, x",
    "size_category_ajcc8_T": "Size category (AJCC 8 T)",
    "voxels": "Voxels",
    "slice_range": "Slices",
    "largest_slice": "Largest slice",
    "size_category": "Size category",
    "n_voxels": "Voxels",
}


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included)."""

    return html.escape(str(value), quote=True)


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


def _num_class(v: Any) -> str:
    return (
        ' class="num"'
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        else ""
    )


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


def lesion_table(rows: Sequence[dict[str, Any]], key_slices: Sequence[int | None]) -> str:
    """The lesion table; rows with a key slice jump the viewer to it when clicked."""
    if not rows:
        return '<p class="empty" id="lesion-table">No lesion in the mask.</p>'
    rows = [_merge_slice_span(r) for r in rows]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    head = "".join(f"<th{_num_class(rows[0].get(k))}>{esc(_header(k))}</th>" for k in keys)
    body = []
    for r, z in zip(rows, key_slices, strict=False):
        attr = f' data-slice="{int(z)}" title="Show slice {int(z)}" tabindex="0"' if z is not None else ""
        cells = "".join(f"<td{_num_class(r.get(k))}>{esc(fmt_value(k, r.get(k)))}</td>" for k in keys)
        body.append(f"<tr{attr}>{cells}</tr>")
    return (
        f'<div class="table-wrap"><table id="lesion-table" class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


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


def _card(label: str, value: str, ident: str) -> str:
    return f'<div class="stat" id="{ident}"><div class="stat-value">{esc(value)}</div><div class="stat-label">{esc(label)}</div></div>'


def _summary_cards(lesions: Sequence[dict[str, Any]], viewer: dict[str, Any], mask: Volume) -> str:
    total_ml = float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3 / 1000.0
    n_tum = int(np.count_nonzero(np.count_nonzero(mask.array.reshape(mask.shape[0], -1), axis=1)))
    cards = [
        _card("lesions", str(len(lesions)), "stat-lesions"),
        _card("total tumour volume", f"{total_ml:.2f} mL", "stat-volume"),
        _card("slices with tumour", f"{n_tum} of {viewer['n_total']}", "stat-slices"),
    ]
    diam = [r.get("diameter_3d_mm") or r.get("max_3d_diameter_mm") or r.get("long_axis_mm") for r in lesions]
    diam = [float(d) for d in diam if isinstance(d, (int, float)) and math.isfinite(float(d))]
    if diam:
        cards.append(_card("largest diameter", f"{max(diam):.1f} mm", "stat-diameter"))
    return '<div class="stats">' + "".join(cards) + "</div>"


def _ticks(viewer: dict[str, Any]) -> str:
    m = len(viewer["z"])
    marks = []
    for i, a in enumerate(viewer["area_mm2"]):
        if a > 0:
            left = 100.0 * i / max(1, m - 1)
            marks.append(f'<span style="left:{left:.3f}%"></span>')
    return '<div class="ticks" aria-hidden="true">' + "".join(marks) + "</div>"


def _curves_html(curves: dict[str, str | None] | None) -> str:
    """The training-curves section's body: the loss-curve image, or why there is none."""
    if curves is None:
        return '<p class="empty">No training run folder given (use <code>--run-dir</code>).</p>'
    if curves.get("img"):
        return f'<figure><img id="loss-curves" class="curves" src="{curves["img"]}" alt="training loss curves"><figcaption>From {esc(curves["source"])}</figcaption></figure>'
    return f'<p class="empty">{esc(curves.get("note") or "")}</p>'


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
) -> str:
    """The whole report page as one self-contained HTML string."""
    script = SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    i0 = viewer["default"]
    w, h = viewer["size"]
    ori = (
        '<span class="ori ori-t">A</span><span class="ori ori-b">P</span>'
        '<span class="ori ori-l">R</span><span class="ori ori-r">L</span>'
        if viewer["axis_aligned"]
        else ""
    )
    ov0 = viewer["overlay"][i0] if viewer["z"] else None
    ct0 = viewer["ct"]["lung"][i0] if viewer["z"] else ""
    meta_html = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in metadata_rows(case, image, mask, meta)
    )
    curves_html = _curves_html(curves)
    note = f'<p class="note">{esc(lesion_note)}</p>' if lesion_note else ""
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{esc(case)} · lung tumour report</title>
<style>{CSS}</style>
</head>
<body>
<header class="top">
  <div class="brand">lungtumor · CT lung tumour report</div>
  <h1 id="case-name">{esc(case)}</h1>
  <div class="sub">Generated {esc(now)} by lungtumor {esc(__version__)}</div>
</header>
<main>
{_summary_cards(lesions, viewer, mask)}
<section class="card" id="viewer">
  <h2>Axial slices</h2>
  <div class="viewer">
    <div class="stage" id="stage" style="aspect-ratio:{w}/{h}">
      <img id="ct-image" src="{ct0}" alt="CT slice">
      <img id="overlay-image" src="{ov0 or ""}" alt="tumour overlay"{"" if ov0 else " hidden"}>
      {ori}
    </div>
    <div class="controls">
      <div class="readout"><span id="slice-number">Slice {viewer["z"][i0] if viewer["z"] else 0} / {viewer["n_total"] - 1}</span>
        <span id="slice-position"></span><span id="slice-area"></span></div>
      <input type="range" id="slice-slider" min="0" max="{max(0, len(viewer["z"]) - 1)}" value="{i0}" aria-label="Slice">
      {_ticks(viewer)}
      <div class="row"><span class="lbl">Window</span>
        <label><input type="radio" name="window" id="window-lung" value="lung" checked> Lung (W1500 / L−600)</label>
        <label><input type="radio" name="window" id="window-mediastinal" value="mediastinal"> Mediastinal (W400 / L40)</label></div>
      <div class="row"><label><input type="checkbox" id="overlay-toggle" checked> <span class="swatch"></span> Tumour overlay</label></div>
      <div class="row"><button type="button" id="jump-largest">Go to largest tumour slice</button></div>
      <p class="hint">Drag the slider, use the arrow keys, or scroll over the image. Red ticks mark slices with tumour.
        Slice numbers are 0-based array indices, as in the lesion table; {len(viewer["z"])} of {viewer["n_total"]} slices are embedded.</p>
    </div>
  </div>
</section>
<section class="card" id="lesions">
  <h2>Lesions</h2>
  {lesion_table(lesions, key_slices)}
  {note}
  <p class="note">Click a row to show its slice. The size category follows the AJCC 8th edition T size thresholds by greatest dimension; it is a size category, not a stage.</p>
</section>
<section class="card" id="training">
  <h2>Training curves</h2>
  {curves_html}
</section>
<section class="card" id="metadata">
  <h2>Input</h2>
  <div class="table-wrap"><table id="metadata-table" class="kv">{meta_html}</table></div>
</section>
</main>
<footer>Automatic segmentation for research use; not a diagnostic device. Review every result.</footer>
<script type="application/json" id="report-data">{_json_for_script(viewer)}</script>
<script>{script}</script>
</body>
</html>
"""
