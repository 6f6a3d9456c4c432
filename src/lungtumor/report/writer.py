"""Case reports: a self-contained HTML page, a GIF animation and a PNG montage of the tumour slices.

The HTML page (``<case>_report.html``) holds everything inline (slice images as data URIs, CSS, JS) and makes
no network request; a Content-Security-Policy forbids any. It shows a slice scroller with the CT in a lung
or mediastinal window and the tumour mask as a toggleable overlay, the lesion table, the input's metadata and
the training loss curves when a run folder is given. Every string that comes from the input (case name,
file names, DICOM tags) is HTML-escaped.

Slices are shown radiologically: patient right on the image's left, anterior at the top (for axis-aligned
images), with in-plane pixels resampled to square physical size.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from lungtumor.core.errors import InputError, atomic_path, atomic_write_text, ensure_writable_dir
from lungtumor.evaluation.measure import measure_lesions
from lungtumor.imaging.io import case_name, read_mask, read_volume
from lungtumor.imaging.orientation import stored_order_note, to_canonical
from lungtumor.imaging.volume import Volume
from lungtumor.report.html import loss_curve_section, render_html

#: Display windows as (width, level) in HU.
WINDOWS: dict[str, tuple[float, float]] = {"lung": (1500.0, -600.0), "mediastinal": (400.0, 40.0)}
#: Largest in-plane size (pixels) of an embedded slice image.
MAX_PIXELS = 256
#: Evenly spaced slices embedded when a volume has more; every tumour slice is added on top.
MAX_SLICES = 200
#: Width (pixels) of one montage tile.
MONTAGE_TILE = 200
#: Overlay colour (RGB) of the tumour mask.
OVERLAY_RGB = (255, 59, 48)


@dataclasses.dataclass
class SliceGeometry:
    """How axial slices are turned into display images."""

    flip_rows: bool
    flip_cols: bool
    size: tuple[int, int]  # (width, height) in display pixels
    axis_aligned: bool


def safe_filename(case: str) -> str:
    """``case`` reduced to characters safe in a file name (letters, digits, ``.``, ``_``, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", case).strip("._")
    return s or "case"


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to 0..255 with a display window (``width``, ``level``)."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width), 0, 255).round().astype(np.uint8)


def select_slices(n: int, tumour_slices: Sequence[int], max_slices: int = MAX_SLICES) -> list[int]:
    """Slices to embed: all when ``n <= max_slices``, else evenly spaced ones plus every tumour slice.

    When there are more tumour slices than ``max_slices`` they are themselves evenly thinned to that many.
    """
    if n <= max_slices:
        return list(range(n))
    chosen = set(np.linspace(0, n - 1, max_slices).round().astype(int).tolist())
    tum = sorted(set(int(z) for z in tumour_slices))
    if len(tum) > max_slices:
        tum = [tum[i] for i in np.linspace(0, len(tum) - 1, max_slices).round().astype(int)]
    return sorted(chosen | set(tum))


def slice_geometry(vol: Volume, max_pixels: int = MAX_PIXELS) -> SliceGeometry:
    """Display flips and size for ``vol``'s axial slices (square physical pixels, at most ``max_pixels``)."""
    d = np.asarray(vol.direction).reshape(3, 3)
    aligned = bool(abs(d[0, 0]) > 0.7 and abs(d[1, 1]) > 0.7)
    _, ny, nx = vol.shape
    sx, sy = vol.spacing[0], vol.spacing[1]
    p = min(sx, sy)
    w, h = nx * sx / p, ny * sy / p
    k = min(1.0, max_pixels / max(w, h))
    return SliceGeometry(
        flip_rows=aligned and d[1, 1] < 0,
        flip_cols=aligned and d[0, 0] < 0,
        size=(max(1, round(w * k)), max(1, round(h * k))),
        axis_aligned=aligned,
    )


def _orient(a: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    if geom.flip_rows:
        a = a[::-1]
    if geom.flip_cols:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def _resize(a: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    if (a.shape[1], a.shape[0]) == size:
        return a.astype(np.float32, copy=False)
    return np.asarray(
        Image.fromarray(a.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32
    )


def render_slice(image: Volume, mask: Volume, z: int, geom: SliceGeometry) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice at display size: (HU float32 (h, w), tumour fraction float32 (h, w) in 0..1)."""

    hu = _resize(_orient(image.array[z], geom), geom.size, Image.Resampling.LANCZOS)
    frac = _resize(_orient(mask.array[z] > 0, geom), geom.size, Image.Resampling.BILINEAR)
    return hu, np.clip(frac, 0.0, 1.0)


def overlay_rgba(frac: np.ndarray, fill_alpha: float = 0.35) -> np.ndarray:
    """RGBA overlay (h, w, 4) uint8: semi-transparent fill plus an opaque contour of the tumour."""

    inside = frac >= 0.5
    if not inside.any():
        inside = frac > 0  # keep tiny lesions visible after downsampling
    edge = inside & ~ndimage.binary_erosion(inside)
    alpha = np.clip(frac * fill_alpha, 0, fill_alpha)
    alpha[edge] = 1.0
    rgba = np.zeros(frac.shape + (4,), np.uint8)
    rgba[..., :3] = OVERLAY_RGB
    rgba[..., 3] = (alpha * 255).round().astype(np.uint8)
    return rgba


def blend(gray: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """RGB (h, w, 3) uint8: a windowed slice with the overlay of :func:`overlay_rgba` composited on it."""
    rgba = overlay_rgba(frac).astype(np.float32)
    a = rgba[..., 3:] / 255.0
    base = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    return (base * (1 - a) + rgba[..., :3] * a).round().astype(np.uint8)


def encode_image(a: np.ndarray, fmt: str = "PNG", quality: int = 85) -> bytes:
    """Encode a uint8 array (h, w), (h, w, 3) or (h, w, 4) as PNG or JPEG bytes."""

    buf = io.BytesIO()
    img = Image.fromarray(a)
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    """A ``data:`` URI holding ``data``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def tumour_area_per_slice(mask: Volume) -> np.ndarray:
    """Tumour area per axial slice in mm² (float array of length z)."""
    sx, sy = mask.spacing[0], mask.spacing[1]
    return np.count_nonzero(mask.array.reshape(mask.shape[0], -1), axis=1) * (sx * sy)


def _check_pair(image: Volume, mask: Volume) -> None:
    why = image.grid_mismatch(mask)
    if why:
        raise InputError("mask", f"label is not on the image grid: {why}")


# ----------------------------------------------------------------------------- lesions


def lesion_rows(mask: Volume, lesions: Sequence[Any] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Lesions as plain dicts, and a note on how they were measured.

    ``lesions`` may be dataclasses (e.g. ``lungtumor.evaluation.measure.Lesion``) or dicts. When ``None`` they are
    measured with ``lungtumor.evaluation.measure.measure_lesions``. The note is
    empty (kept for callers that show one).
    """
    note = ""
    if lesions is None:
        lesions = measure_lesions(mask)
    rows = []
    for les in lesions:
        if dataclasses.is_dataclass(les) and not isinstance(les, type):
            rows.append(dataclasses.asdict(les))
        elif isinstance(les, dict):
            rows.append(dict(les))
        else:
            rows.append(dict(vars(les)))
    return rows, note


def lesion_key_slice(row: dict[str, Any]) -> int | None:
    """The slice to show for a lesion row: its long-axis or largest slice, else the middle of its range."""
    for key in ("long_axis_slice", "largest_slice", "max_area_slice"):
        v = row.get(key)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
    rng = row.get("slice_range")
    if (
        isinstance(rng, (list, tuple))
        and len(rng) == 2
        and all(isinstance(v, (int, np.integer)) for v in rng)
    ):
        return (int(rng[0]) + int(rng[1])) // 2
    return None


# ----------------------------------------------------------------------------- GIF and montage


def write_animation(
    image: Volume, mask: Volume, path: str | os.PathLike, *, max_frames: int = 80, frame_ms: int = 80
) -> Path:
    """Write a looping GIF scrolling through the axial slices (lung window, tumour overlay), atomically.

    All frames share one palette, built from a sample of them: no per-frame colour flicker, and mapping a
    frame onto it costs about 0.1 ms against 7 ms for Pillow's own per-frame quantisation (256² frames)."""

    _check_pair(image, mask)
    p = Path(path)
    geom = slice_geometry(image)
    area = tumour_area_per_slice(mask)
    zs = select_slices(image.shape[0], np.flatnonzero(area).tolist(), max_frames)
    w, lvl = WINDOWS["lung"]
    frames = []
    for z in zs:
        hu, frac = render_slice(image, mask, z, geom)
        rgb = Image.fromarray(blend(window_to_uint8(hu, w, lvl), frac))
        ImageDraw.Draw(rgb).text((4, 2), f"z {z}", fill=(255, 255, 0))
        frames.append(rgb)
    sample = frames[:: max(1, len(frames) // 8)][:8]
    strip = Image.new("RGB", (frames[0].width, frames[0].height * len(sample)))
    for i, f in enumerate(sample):
        strip.paste(f, (0, i * f.height))
    palette = strip.quantize(colors=256)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    with atomic_path(p) as tmp:
        indexed[0].save(
            tmp, format="GIF", save_all=True, append_images=indexed[1:], duration=frame_ms, loop=0
        )
    return p


def write_montage(image: Volume, mask: Volume, path: str | os.PathLike, *, max_tiles: int = 24) -> Path:
    """Write a PNG montage of the tumour slices (lung window, overlay), atomically.

    Up to ``max_tiles`` tumour slices, evenly spaced and always including the one with the largest area,
    each labelled with its slice index and tumour area (mm²), cropped to a square around all tumour pixels.
    Without any tumour, evenly spaced slices through the volume are shown instead.
    """

    _check_pair(image, mask)
    p = Path(path)
    geom = slice_geometry(image)
    area = tumour_area_per_slice(mask)
    tum = np.flatnonzero(area)
    if len(tum):
        picks = set(tum[np.linspace(0, len(tum) - 1, min(max_tiles, len(tum))).round().astype(int)].tolist())
        picks.add(int(np.argmax(area)))
        zs = sorted(picks)[-max_tiles:] if len(picks) > max_tiles else sorted(picks)
        title = f"Tumour slices ({len(tum)} with tumour, {len(zs)} shown)"
    else:
        zs = sorted(
            set(np.linspace(0, image.shape[0] - 1, min(12, image.shape[0])).round().astype(int).tolist())
        )
        title = "No tumour in the mask: evenly spaced slices"
    tiles = [render_slice(image, mask, z, geom) for z in zs]
    box = _crop_box([frac for _, frac in tiles], geom.size)
    ncol = min(6, len(zs))
    nrow = -(-len(zs) // ncol)
    aspect = (box[1].stop - box[1].start) / (box[0].stop - box[0].start)
    tw = MONTAGE_TILE
    th = max(1, round(tw / aspect))
    label_h, title_h, pad = 16, 24, 4
    sheet = Image.new("RGB", (ncol * (tw + pad) + pad, title_h + nrow * (th + label_h + pad)), "black")
    draw = ImageDraw.Draw(sheet)
    font, unit = _font(12)
    draw.text((pad, 4), title, fill="white", font=_font(14)[0])
    w, lvl = WINDOWS["lung"]
    for i, (z, (hu, frac)) in enumerate(zip(zs, tiles, strict=True)):
        x0 = pad + (i % ncol) * (tw + pad)
        y0 = title_h + (i // ncol) * (th + label_h + pad)
        tile = Image.fromarray(blend(window_to_uint8(hu, w, lvl), frac)[box[0], box[1]])
        sheet.paste(tile.resize((tw, th), Image.Resampling.BILINEAR), (x0, y0 + label_h))
        draw.text((x0, y0 + 1), f"z {z}  ·  {area[z]:.0f} {unit}", fill="white", font=font)
    with atomic_path(p) as tmp:
        sheet.save(tmp, format="PNG")
    return p


def _font(size: int) -> tuple[Any, str]:
    """A TrueType font at ``size`` px and the area unit it can draw: matplotlib's DejaVu Sans (it has ``²``),
    else Pillow's bitmap font with ``mm2``."""

    try:
        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size), "mm²"
    except (ImportError, OSError):
        return ImageFont.load_default(), "mm2"


def _crop_box(
    fracs: Sequence[np.ndarray], size: tuple[int, int], min_frac: float = 0.4
) -> tuple[slice, slice]:
    """(rows, cols) slices of a square around all tumour pixels, with margin; at least ``min_frac`` of the image."""
    w, h = size
    union = np.zeros((h, w), bool)
    for f in fracs:
        union |= f > 0
    if not union.any():
        return slice(0, h), slice(0, w)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    side = int(min(max(h, w), max(2.0 * max(rows[-1] - rows[0], cols[-1] - cols[0]), min_frac * max(h, w))))
    out = []
    for lo_hi, n in (((rows[0], rows[-1]), h), ((cols[0], cols[-1]), w)):
        s = min(side, n)
        start = int(np.clip((lo_hi[0] + lo_hi[1]) // 2 - s // 2, 0, n - s))
        out.append(slice(start, start + s))
    return out[0], out[1]


# ----------------------------------------------------------------------------- HTML


def viewer_data(image: Volume, mask: Volume, max_slices: int = MAX_SLICES) -> dict[str, Any]:
    """Everything the slice scroller needs: per embedded slice its index, position, images and tumour area."""
    geom = slice_geometry(image)
    area = tumour_area_per_slice(mask)
    zs = select_slices(image.shape[0], np.flatnonzero(area).tolist(), max_slices)
    ct: dict[str, list[str]] = {name: [] for name in WINDOWS}
    overlay: list[str | None] = []
    for z in zs:
        hu, frac = render_slice(image, mask, z, geom)
        for name, (w, lvl) in WINDOWS.items():
            ct[name].append(data_uri(encode_image(window_to_uint8(hu, w, lvl), "JPEG"), "image/jpeg"))
        overlay.append(data_uri(encode_image(overlay_rgba(frac)), "image/png") if frac.any() else None)
    pos = image.index_to_world(np.array([[z, 0, 0] for z in zs]))[:, 2] if zs else np.zeros(0)
    default_z = int(np.argmax(area)) if area.any() else image.shape[0] // 2
    return {
        "z": zs,
        "n_total": int(image.shape[0]),
        "pos_mm": [round(float(v), 2) for v in pos],
        "area_mm2": [round(float(area[z]), 1) for z in zs],
        "ct": ct,
        "overlay": overlay,
        "default": int(np.argmin(np.abs(np.asarray(zs) - default_z))),
        "size": list(geom.size),
        "axis_aligned": geom.axis_aligned,
    }


def write_report(
    image: Volume,
    mask: Volume,
    out_dir: str | os.PathLike,
    case: str,
    lesions: Sequence[Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    meta: dict[str, str] | None = None,
    warnings: Sequence[str] = (),
    stem: str | None = None,
) -> Path:
    """Write ``<case>_report.html`` (self-contained, no network access) into ``out_dir``; return its path.

    Args:
        image: the CT (HU).
        mask: the tumour mask on the CT's grid.
        out_dir: output folder (created).
        case: case name, shown escaped; the file name uses :func:`safe_filename` of it.
        lesions: measured lesions (dataclasses or dicts); measured from ``mask`` when ``None``.
        run_dir: training run folder; its ``loss_curves.png`` or ``metrics.csv`` is included.
        meta: extra metadata to list (e.g. input file names, the model and its settings).
        warnings: shown at the top of the page (e.g. a model trained only on phantoms).
        stem: the file-name stem (``<stem>_report.html``; default :func:`safe_filename` of ``case``): predict
            gives each input a distinct one.

    Raises:
        InputError: mask not on the image grid, run folder missing, output folder not writable.
    """

    _check_pair(image, mask)
    out = ensure_writable_dir(out_dir)
    curves = loss_curve_section(Path(run_dir)) if run_dir is not None else None
    rows, note = lesion_rows(mask, lesions)
    html = render_html(
        case=case,
        image=image,
        mask=mask,
        viewer=viewer_data(image, mask),
        lesions=rows,
        lesion_note=note,
        key_slices=[lesion_key_slice(r) for r in rows],
        meta=dict(meta or {}),
        curves=curves,
        warnings=warnings,
    )
    path = out / f"{stem or safe_filename(case)}_report.html"
    atomic_write_text(path, html)
    return path


def report_files(
    image: str | os.PathLike,
    mask: str | os.PathLike,
    out: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    *,
    label: int | None = None,
) -> list[Path]:
    """Read a CT and its mask and write the HTML report, GIF animation and PNG montage into ``out``.
    ``label``: the mask is multi-label and the voxels equal to it are the tumour (``report --label N``).

    Returns:
        [report.html, animation.gif, montage.png] paths.

    Raises:
        InputError: missing or unreadable files, mask not on the CT's grid, bad output folder.
    """
    stored = read_volume(image)
    img, ro = to_canonical(stored)  # shown as axial slices, LPS order
    msk = img.with_array(
        ro.apply(read_mask(mask, reference=stored, label=label, label_option="--label").array)
    )
    out_dir = ensure_writable_dir(out)
    meta = {"Image file": Path(image).name, "Mask file": Path(mask).name, **stored_order_note(stored, ro)}
    return write_all(img, msk, out_dir, case_name(image), run_dir=run_dir, meta=meta)


def write_all(
    image: Volume,
    mask: Volume,
    out_dir: str | os.PathLike,
    case: str,
    lesions=None,
    run_dir: str | os.PathLike | None = None,
    meta: dict[str, str] | None = None,
    warnings: Sequence[str] = (),
    stem: str | None = None,
) -> list[Path]:
    """The HTML report, the GIF animation and the PNG montage of one case: [html, gif, png], named
    ``<stem>_report.html`` etc. (``stem`` default: :func:`safe_filename` of ``case``)."""
    out_dir = Path(out_dir)
    html = write_report(
        image, mask, out_dir, case, lesions=lesions, run_dir=run_dir, meta=meta, warnings=warnings, stem=stem
    )
    stem = stem or safe_filename(case)
    gif = write_animation(image, mask, out_dir / f"{stem}_animation.gif")
    montage = write_montage(image, mask, out_dir / f"{stem}_montage.png")
    return [html, gif, montage]
