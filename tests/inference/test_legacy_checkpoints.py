"""Checkpoints written before the package was laid out by stage (commit 9a4b200) still load and predict
the same probabilities and masks (tests/fixtures/legacy_ckpt/make.py made them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.workflows.predict import PredictOptions, predict_paths

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"


@pytest.mark.parametrize(
    ("ckpt", "threshold", "expected"),
    [
        ("demo2d", None, "demo2d"),
        ("unet3d", None, "unet3d"),
        ("demo2d", 0.25, "demo2d_t025"),
    ],
)
def test_a_pre_redesign_checkpoint_predicts_what_it_did(ckpt, threshold, expected, tmp_path):
    opts = PredictOptions(save_prob=True, device="cpu", precision="32", threshold=threshold)
    (res,) = predict_paths([FIX / "ct.nii.gz"], [FIX / f"{ckpt}.ckpt"], tmp_path, opts)
    assert res.error is None
    mask = read_mask(tmp_path / "ct_tumour.nii.gz").array
    want = read_mask(FIX / f"{expected}_tumour.nii.gz").array
    assert mask.shape == want.shape
    assert np.array_equal(mask, want)
    if threshold is None:
        prob = read_volume(tmp_path / "ct_prob.nii.gz").array
        want_prob = read_volume(FIX / f"{ckpt}_prob.nii.gz").array
        np.testing.assert_allclose(prob, want_prob, atol=1e-5)
