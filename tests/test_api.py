"""The public API: every exported name resolves, ``import lungtumor`` stays light, and the example in
docs/api.md runs (on the pre-redesign 2D checkpoint fixture)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lungtumor

FIX = Path(__file__).resolve().parent / "fixtures" / "legacy_ckpt"


def test_every_public_name_resolves():
    for name in lungtumor.__all__:
        assert getattr(lungtumor, name) is not None, name
    with pytest.raises(AttributeError):
        _ = lungtumor.no_such_name


def test_import_lungtumor_does_not_import_torch():
    code = "import sys, lungtumor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_documented_example_runs(tmp_path):
    results = lungtumor.predict(
        FIX / "ct.nii.gz", FIX / "demo2d.ckpt", tmp_path, device="cpu", threshold=0.25
    )
    assert [r.error for r in results] == [None]
    ct = lungtumor.read_volume(FIX / "ct.nii.gz")
    mask = lungtumor.read_mask(tmp_path / "ct_tumour.nii.gz", reference=ct)
    assert mask.shape == ct.shape and mask.spacing == ct.spacing
    lesions = lungtumor.measure(mask)
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    assert sum(les.volume_ml for les in lesions) == pytest.approx(mask.array.sum() * voxel_ml, rel=1e-6)


def test_predict_names_an_unknown_option():
    with pytest.raises(lungtumor.InputError, match="unknown option"):
        lungtumor.predict(FIX / "ct.nii.gz", FIX / "demo2d.ckpt", "/nonexistent", treshold=0.3)
