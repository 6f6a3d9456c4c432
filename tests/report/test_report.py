"""Tests of the HTML report, GIF animation and montage (lungtumor.report), including a headless-browser test."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pytest
from PIL import Image

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.report.templating import environment
from lungtumor.report.writer import (
    report_files,
    safe_filename,
    select_slices,
    write_animation,
    write_montage,
    write_report,
)

EVIL = "<script>alert(1)</script>"
EVIL_TAG = "<img src=x onerror=alert(2)>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def make_case(shape=(24, 64, 64), spacing=(0.8, 0.8, 2.0), centre=(12, 30, 36), radius_mm=7.0):
    """A CT-like volume (air, body, lung) with a spherical tumour, and its mask."""
    z, y, x = np.indices(shape)
    ct = np.full(shape, -1000, np.int16)
    ct[((y - 32) ** 2 + (x - 32) ** 2) < 30**2] = 40
    ct[((y - 30) ** 2 + (x - 36) ** 2) < 18**2] = -850
    sx, sy, sz = spacing
    tumour = ((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + (
        (x - centre[2]) * sx
    ) ** 2 < radius_mm**2
    ct[tumour] = 30
    img = Volume(ct, spacing=spacing, origin=(-25.0, -25.0, 100.0), meta={"SeriesDescription": EVIL_TAG})
    return img, img.with_array(tumour.astype(np.uint8))


@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.fixture(scope="module")
def evil_report(case, tmp_path_factory) -> Path:
    img, mask = case
    out = tmp_path_factory.mktemp("evil")
    return write_report(img, mask, out, EVIL, meta={"Image file": f"{EVIL_TAG}.nii.gz"})


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_select_slices_keeps_all_tumour_slices():
    assert select_slices(50, [3, 4], max_slices=200) == list(range(50))
    tumour = list(range(101, 131))
    zs = select_slices(300, tumour, max_slices=40)
    assert set(tumour) <= set(zs)
    assert zs == sorted(set(zs)) and zs[0] == 0 and zs[-1] == 299
    assert len(zs) <= 40 + len(tumour)
    assert len(select_slices(1000, range(500), max_slices=100)) <= 200


def test_safe_filename():
    assert safe_filename(EVIL) == "script_alert_1_script"
    assert safe_filename("../../x") == "x"
    assert safe_filename("///") == "case"
    assert safe_filename("lung_001") == "lung_001"


def test_report_is_self_contained(evil_report: Path, capsys):
    html = _html(evil_report)
    assert evil_report.name == "script_alert_1_script_report.html"
    assert not re.search(r"https?://", html)
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"\b(src|href)\s*=\s*[\"']?(?!data:|#)[a-z]+:", html, re.I)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for ident in (
        'id="slice-slider"',
        'id="overlay-toggle"',
        'id="ct-image"',
        'id="overlay-image"',
        'id="lesion-table"',
    ):
        assert ident in html
    assert html.count("data:image/jpeg;base64,") >= 2 * 24  # every slice, two windows
    assert capsys.readouterr().out == ""  # library prints nothing


def test_report_escapes_input_strings(evil_report: Path):
    html = _html(evil_report)
    assert EVIL not in html
    assert EVIL_TAG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    # only the page's own two script elements: the JSON data and the viewer code
    assert len(re.findall(r"<script\b", html)) == 2


def test_report_escapes_script_case_name_everywhere(case, tmp_path):
    """The template autoescapes a ``<script>`` case name wherever it appears: title, heading, tables."""
    img, mask = case
    lesions = [{"label": 1, "size_category": EVIL}]
    html = _html(write_report(img, mask, tmp_path, EVIL, lesions=lesions, meta={EVIL: EVIL}))
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert EVIL not in html and "<script>alert" not in html
    assert f"<title>{escaped} · lung tumour report</title>" in html
    assert f'<h1 id="case-name">{escaped}</h1>' in html
    assert f"<tr><th>Case</th><td>{escaped}</td></tr>" in html
    assert f"<tr><th>{escaped}</th><td>{escaped}</td></tr>" in html
    assert f"<td>{escaped}</td></tr></tbody>" in html  # lesion table cell
    assert len(re.findall(r"<script\b", html)) == 2


def test_report_trusted_fragments_are_not_escaped(evil_report: Path):
    """CSP, script, JSON data and data: URIs are passed as Markup: byte-exact, not entity-escaped."""
    html = _html(evil_report)
    script = re.findall(r"<script>(.*?)</script>", html, re.S)[-1]
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    assert f"script-src 'sha256-{digest}'" in html  # the CSP still allows exactly the page's script
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    viewer = json.loads(data.group(1))
    assert re.search(r'<img id="ct-image" src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', html)
    assert viewer["ct"]["lung"][viewer["default"]] in html


def test_report_template_autoescapes_and_rejects_undefined():
    env = environment()
    assert env.from_string("{{ x }}").render(x=EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("report.html.j2").render()


def test_report_lesion_table_from_dataclasses(case, tmp_path):
    @dataclass
    class FakeLesion:
        label: int
        volume_ml: float
        long_axis_mm: float
        long_axis_slice: int
        slice_first: int
        slice_last: int
        size_category: str

    img, mask = case
    lesions = [FakeLesion(1, 1.234, 14.0, 12, 9, 15, "T1b <x>")]
    html = _html(write_report(img, mask, tmp_path, "c1", lesions=lesions))
    table = html[html.index('id="lesion-table"') : html.index("</table>", html.index('id="lesion-table"'))]
    assert "Volume (mL)" in table and "1.23" in table and "14.0" in table
    assert "9–15" in table  # slice_first/slice_last merged
    assert 'data-slice="12"' in table
    assert "T1b &lt;x&gt;" in table


def test_report_measures_lesions_itself(case, tmp_path):
    img, mask = case
    html = _html(write_report(img, mask, tmp_path, "c2"))
    assert 'id="lesion-table"' in html
    assert "Volume (mL)" in html
    assert '<td class="num">1</td>' in html  # one lesion numbered 1


def test_report_without_tumour(case, tmp_path):
    img, mask = case
    empty = mask.with_array(np.zeros_like(mask.array))
    html = _html(write_report(img, empty, tmp_path, "empty", lesions=[]))
    assert "No lesion in the mask." in html
    assert Image.open(write_montage(img, empty, tmp_path / "m.png")).format == "PNG"


def test_report_rejects_mask_off_grid(case, tmp_path):
    img, mask = case
    shifted = Volume(mask.array, spacing=mask.spacing, origin=(0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="not on the image grid"):
        write_report(img, shifted, tmp_path, "x")
    assert not list(tmp_path.iterdir())


def test_report_run_dir_curves(case, tmp_path):
    img, mask = case
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss,val_dice\n0,10,0.9,,\n0,10,,0.8,0.2\n1,20,0.5,,\n1,20,,0.45,0.6\n"
    )
    html = _html(write_report(img, mask, tmp_path / "a", "c", run_dir=run))
    assert 'id="loss-curves"' in html and "From metrics.csv" in html
    png = Image.new("RGB", (20, 10), (0, 128, 0))
    png.save(run / "loss_curves.png")
    html = _html(write_report(img, mask, tmp_path / "b", "c", run_dir=run))
    assert "From loss_curves.png" in html
    with pytest.raises(InputError, match="run folder does not exist"):
        write_report(img, mask, tmp_path / "c", "c", run_dir=tmp_path / "nope")


def test_animation_and_montage_are_valid_images(case, tmp_path):
    img, mask = case
    gif = Image.open(write_animation(img, mask, tmp_path / "a.gif"))
    assert gif.format == "GIF" and gif.n_frames == img.shape[0]
    montage = Image.open(write_montage(img, mask, tmp_path / "m.png"))
    assert montage.format == "PNG" and montage.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "m.png"]  # no temp files left


def _write_case(folder: Path, name: str) -> tuple[Path, Path]:
    img, mask = make_case()
    folder.mkdir(parents=True, exist_ok=True)
    return write_volume(img, folder / f"{name}.nii.gz"), write_volume(mask, folder / f"{name}_mask.nii.gz")


def test_report_files_and_cli(tmp_path, capsys):
    img_path, mask_path = _write_case(tmp_path / "in", EVIL_TAG)
    out = tmp_path / "out"
    rc = main(["report", str(img_path), "--mask", str(mask_path), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in out.iterdir())
    stem = safe_filename(EVIL_TAG)
    assert names == sorted([f"{stem}_animation.gif", f"{stem}_montage.png", f"{stem}_report.html"])
    assert len(printed) == 3
    html = _html(out / f"{stem}_report.html")
    assert EVIL_TAG not in html and "&lt;img src=x onerror=alert(2)&gt;.nii.gz" in html
    assert Image.open(out / f"{stem}_animation.gif").n_frames > 1
    assert Image.open(out / f"{stem}_montage.png").format == "PNG"


def test_report_files_bad_input(tmp_path, capsys):
    img_path, mask_path = _write_case(tmp_path, "c")
    with pytest.raises(InputError, match="missing_mask.nii.gz: no such file"):
        report_files(img_path, tmp_path / "missing_mask.nii.gz", tmp_path / "out")
    other = Volume(np.zeros((5, 8, 8), np.uint8))
    write_volume(other, tmp_path / "small.nii.gz")
    rc = main(
        ["report", str(img_path), "--mask", str(tmp_path / "small.nii.gz"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "small.nii.gz" in err and "\n" not in err


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("/usr/bin/chromium is absent")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_report_in_browser(browser, evil_report: Path, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    requests: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(evil_report.as_uri())
    page.wait_for_load_state("load")

    assert page.inner_text("#case-name") == EVIL
    assert EVIL_TAG in page.inner_text("#metadata-table")
    assert len(page.query_selector_all("img")) == 2  # the injected <img> is text, not an element

    ct, ov, slider = page.locator("#ct-image"), page.locator("#overlay-image"), page.locator("#slice-slider")
    label = page.locator("#slice-number")
    assert label.inner_text() == "Slice 13 of 24 (index 12)"  # the largest tumour slice
    assert ov.is_visible()
    src0 = ct.get_attribute("src")

    slider.focus()
    page.keyboard.press("ArrowRight")
    assert label.inner_text() == "Slice 14 of 24 (index 13)"
    assert ct.get_attribute("src") != src0
    page.keyboard.press("Home")
    assert label.inner_text() == "Slice 1 of 24 (index 0)"
    assert not ov.is_visible()  # no tumour on slice 0
    page.click("#jump-largest")
    assert label.inner_text() == "Slice 13 of 24 (index 12)" and ov.is_visible()

    page.click("#overlay-toggle")
    assert not ov.is_visible()
    page.click("#overlay-toggle")
    assert ov.is_visible()

    lung_src = ct.get_attribute("src")
    page.click("#window-mediastinal")
    assert ct.get_attribute("src") != lung_src
    page.click("#window-lung")
    assert ct.get_attribute("src") == lung_src

    slider.focus()
    page.keyboard.press("Home")
    assert label.inner_text() == "Slice 1 of 24 (index 0)"
    page.click("#lesion-table tbody tr")  # jumps to the lesion's long-axis slice
    assert label.inner_text() == "Slice 13 of 24 (index 12)"

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert dialogs == []
    assert errors == []
    assert requests == [evil_report.as_uri()]
    page.close()
