"""The report reads as users expect (issue 24): a 1-based slice counter with the array index beside it, and
``report --label N`` for a multi-label mask."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lungtumor.cli import main
from lungtumor.imaging.io import write_volume
from lungtumor.report.assets import SCRIPT
from lungtumor.report.writer import write_report

from .test_report import make_case

#: A stand-in for the page's DOM: enough of it for the report script to run under node.
NODE_HARNESS = """
const data = %s;
const els = {};
function el(id) {
  if (!els[id]) {
    els[id] = { id: id, textContent: id === "report-data" ? JSON.stringify(data) : "", value: "%d",
                hidden: false, src: "", checked: true, addEventListener: function () {} };
  }
  return els[id];
}
global.document = { getElementById: el, querySelectorAll: function () { return []; } };
%s
console.log(els["slice-number"].textContent);
"""


def test_slice_counter_is_one_based_in_the_page(tmp_path: Path) -> None:
    img, mask = make_case()  # 24 slices, the tumour's largest slice is index 12
    html = write_report(img, mask, tmp_path, "c1").read_text(encoding="utf-8")
    counter = re.search(r'<span id="slice-number">([^<]*)</span>', html)
    assert counter and counter.group(1) == "Slice 13 of 24 (index 12)"
    assert "Slices are counted from 1" in html and "0-based array index" in html
    assert 'title="Show slice index 12"' in html


@pytest.mark.skipif(shutil.which("node") is None, reason="node is absent")
@pytest.mark.parametrize(
    "position, expect", [(0, "Slice 1 of 41 (index 0)"), (26, "Slice 27 of 41 (index 26)")]
)
def test_slice_counter_script_counts_from_one(tmp_path: Path, position: int, expect: str) -> None:
    zs = list(range(41))
    data = {
        "z": zs,
        "n_total": 41,
        "ct": {"lung": [""] * 41, "mediastinal": [""] * 41},
        "overlay": [None] * 41,
        "pos_mm": [float(z) for z in zs],
        "area_mm2": [0.0] * 41,
        "default": 0,
    }
    js = tmp_path / "page.js"
    js.write_text(NODE_HARNESS % (json.dumps(data), position, SCRIPT), encoding="utf-8")
    proc = subprocess.run(["node", str(js)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expect


def test_report_label_picks_the_tumour_of_a_multi_label_mask(tmp_path: Path, capsys) -> None:
    img, mask = make_case()
    ml = mask.array * 4
    ml[0, :5, :5] = 2  # another structure
    ct = write_volume(img, tmp_path / "c1.nii.gz")
    m = write_volume(mask.with_array(ml), tmp_path / "c1_labels.nii.gz")
    assert main(["report", "-i", str(ct), "--mask", str(m), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "values {0, 2, 4}" in err and "--label N" in err
    assert main(["report", str(ct), "--mask", str(m), "-o", str(tmp_path / "o"), "--label", "4"]) == 0
    html = (tmp_path / "o" / "c1_report.html").read_text(encoding="utf-8")
    ref = write_report(img, mask, tmp_path / "ref", "c1").read_text(encoding="utf-8")
    table = re.compile(r'<table id="lesion-table".*?</table>', re.S)  # the same lesions as the binary mask's
    assert table.search(html).group(0) == table.search(ref).group(0)
