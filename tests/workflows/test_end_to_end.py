"""Golden end-to-end run: synth -> prepare -> train -> predict -> evaluate -> report on tiny phantoms,
then prediction on a real CT (skipped without ../shared/realdata)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.core.config_io import load_config
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.workflows.demo import run_demo


def _tiny_cfg():
    cfg = load_config(None, "demo")
    cfg.prep.size, cfg.prep.spacing_mm = (64, 64), 4.0
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.epochs, cfg.train.max_steps_per_epoch, cfg.train.batch_size, cfg.train.crop_size = 1, 3, 4, 0
    cfg.nodule.channels, cfg.nodule.steps, cfg.nodule.batch_size = (4, 8, 8), 3, 4
    return cfg


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = run_demo(
        out,
        cases=3,
        val_cases=1,
        test_cases=2,
        seed=3,
        progress=False,
        config=_tiny_cfg(),
        matrix=64,
        slices=16,
    )
    return out, res


def test_demo_writes_everything_on_the_input_grid(demo_run):
    out, res = demo_run
    pred = out / "predictions"
    cts = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))
    assert len(cts) == 2
    for ct_path in cts:
        case = ct_path.name[: -len(".nii.gz")]
        ct = read_volume(ct_path)
        mask = read_mask(pred / f"{case}_tumour.nii.gz", reference=ct)  # raises if the grid differs
        assert mask.array.dtype == np.uint8
        lesions = json.loads((pred / f"{case}_lesions.json").read_text())
        assert "lesions" in lesions
        assert (pred / f"{case}_report.html").is_file()
        assert (pred / f"{case}_animation.gif").is_file()
    summary = json.loads((pred / "evaluation_summary.json").read_text())
    assert summary["summary"]["n_cases"] == 2 and len(summary["cases"]) == 2
    assert (out / "run" / "checkpoints" / "best.ckpt").is_file()
    assert "held-out phantoms" in str(res)
    import torch

    from lungtumor.inference.detector import CKPT_KEY

    ck = torch.load(out / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert CKPT_KEY in ck  # the demo preset trains the 3D nodule detector beside the 2D model
    # its training phantoms have real-calibre hilar vessels (docs/decisions/0019)
    assert json.loads((out / "data" / "lesions.json").read_text())["train_hilar_vessels"] is True


def test_predict_without_the_nodule_detector_keeps_the_2d_lesions(demo_run, tmp_path):
    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    case = ct.name[: -len(".nii.gz")]
    args = ["predict", str(ct), "--model", str(out / "run"), "-q", "--no-postprocess"]
    assert main([*args, "--out", str(tmp_path / "with")]) == 0
    assert main([*args, "--out", str(tmp_path / "without"), "--no-nodules"]) == 0
    with_ = read_mask(tmp_path / "with" / f"{case}_tumour.nii.gz").array.astype(bool)
    without = read_mask(tmp_path / "without" / f"{case}_tumour.nii.gz").array.astype(bool)
    assert not (without & ~with_).any()  # the detector only adds lesions


def test_predict_is_deterministic(demo_run, tmp_path):
    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    case = ct.name[: -len(".nii.gz")]
    assert main(["predict", str(ct), "--model", str(out / "run"), "--out", str(tmp_path), "-q"]) == 0
    a = read_mask(tmp_path / f"{case}_tumour.nii.gz").array
    b = read_mask(out / "predictions" / f"{case}_tumour.nii.gz").array
    assert np.array_equal(a, b)


def test_predict_real_ct_keeps_its_exact_grid(demo_run, realdata, tmp_path):
    out, _ = demo_run
    src = realdata / "pyradiomics" / "lung2_image.nrrd"
    assert main(["predict", str(src), "--model", str(out / "run"), "--out", str(tmp_path), "-q"]) == 0
    ct = read_volume(src)
    mask = read_mask(tmp_path / "lung2_image_tumour.nii.gz")
    assert mask.shape == ct.shape == (61, 512, 512)
    assert ct.grid_mismatch(mask) is None


def test_predict_without_prob_map_gives_the_same_mask(demo_run, tmp_path):
    """Without --save-prob the mask is thresholded chunk by chunk; it equals the --save-prob path's mask."""
    import torch

    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume

    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    case = ct.name[: -len(".nii.gz")]
    loaded = load_checkpoint(out / "run")
    vol = read_volume(ct)
    kw = {"device": torch.device("cpu"), "batch_size": 4}
    prob, _ = predict_volume(loaded, vol, threshold=0.5, **kw)
    t = float(np.sort(prob, axis=None)[int(0.9 * prob.size)])  # a threshold that splits the voxels
    prob, mask = predict_volume(loaded, vol, threshold=t, **kw)
    none, chunked = predict_volume(loaded, vol, threshold=t, keep_prob=False, **kw)
    assert none is None and chunked.dtype == np.uint8 and np.array_equal(chunked, mask)
    assert np.array_equal(mask, (prob >= t).astype(np.uint8)) and 0 < mask.sum() < mask.size
    for n_models in (1, 2):  # one model, and an ensemble (the same model twice)
        args = [str(ct), *["--model", str(out / "run")] * n_models, "--threshold", str(t), "-q"]
        p, m = tmp_path / f"p{n_models}", tmp_path / f"m{n_models}"
        assert main(["predict", *args, "--out", str(p), "--save-prob"]) == 0
        assert main(["predict", *args, "--out", str(m)]) == 0
        assert (p / f"{case}_prob.nii.gz").is_file() and not (m / f"{case}_prob.nii.gz").exists()
        a = read_mask(p / f"{case}_tumour.nii.gz").array
        assert np.array_equal(a, read_mask(m / f"{case}_tumour.nii.gz").array)


def test_lungs_only_predicts_the_lungs_slices_and_nothing_else(demo_run, tmp_path):
    """With the lung gate on, predict runs the model on the lungs' slices plus 30 mm only: there the
    probabilities are those of the whole-volume run, elsewhere 0."""
    from dataclasses import replace

    import torch
    from scipy import ndimage as ndi

    from lungtumor.imaging.lungs import lung_z_range
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume

    out, _ = demo_run
    vol = read_volume(sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0])
    a = vol.array
    body = ndi.binary_fill_holes(a[-1] > -500)  # the body with its lungs
    belly = np.where(body, 40, -1000).astype(a.dtype)  # all soft tissue, air outside
    vol = replace(vol, array=np.concatenate([np.repeat(belly[None], 20, axis=0), a]))  # 20 abdomen slices
    lo, hi = lung_z_range(vol.array, vol.spacing)
    assert 0 < lo < 20 and hi == len(vol.array)  # 30 mm above the lowest lung slice, not the abdomen's start
    loaded = load_checkpoint(out / "run")
    kw = {"device": torch.device("cpu"), "batch_size": 4, "threshold": 0.5}
    full, _ = predict_volume(loaded, vol, **kw)
    part, _ = predict_volume(loaded, vol, z_range=(lo, hi), **kw)
    np.testing.assert_allclose(part[lo:hi], full[lo:hi], rtol=0, atol=1e-5)
    assert not part[:lo].any() and full[:lo].any()
    # the command: a threshold that marks most of the body makes one component reaching into the abdomen;
    # with the gate on, only its part on the predicted slices is there; the demo preset has it off (decision 0004)
    from lungtumor.imaging.io import write_volume

    write_volume(vol, tmp_path / "ct.nii.gz")
    t = float(np.quantile(full[lo:hi][full[lo:hi] > 0], 0.3))
    assert not load_config(None, "demo").infer.lung_gate
    runs = (
        ([], "default"),
        (["--lung-gate"], "on"),
        (["--no-postprocess"], "off"),
        (["--no-lung-gate"], "nogate"),
    )
    for gate, name in runs:
        args = ["predict", str(tmp_path / "ct.nii.gz"), "--model", str(out / "run"), "--threshold", str(t)]
        assert main([*args, *gate, "--out", str(tmp_path / name), "-q"]) == 0
    on = read_mask(tmp_path / "on" / "ct_tumour.nii.gz").array
    off = read_mask(tmp_path / "off" / "ct_tumour.nii.gz").array
    assert on[lo:].any() and not on[:lo].any() and off[:lo].any()
    nogate = read_mask(tmp_path / "nogate" / "ct_tumour.nii.gz").array
    assert nogate[:lo].any()  # the gate alone turned off
    np.testing.assert_array_equal(read_mask(tmp_path / "default" / "ct_tumour.nii.gz").array, nogate)


def _splitting_threshold(run, ct) -> float:
    """A threshold that makes the tiny model mark about 10 % of the voxels of ``ct`` (it is barely trained)."""
    import torch

    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume

    loaded, dev = load_checkpoint(run), torch.device("cpu")
    prob, _ = predict_volume(loaded, read_volume(ct), threshold=0.5, device=dev, batch_size=4)
    return float(np.sort(prob, axis=None)[int(0.9 * prob.size)])


@pytest.mark.parametrize(
    ("perm", "flips"),
    [((0, 1, 2), (True, True, False)), ((0, 1, 2), (False, False, True)), ((2, 0, 1), (False, True, False))],
    ids=["ras-stored", "head-to-feet", "permuted"],
)
def test_predict_gives_the_same_world_mask_for_any_stored_orientation(demo_run, tmp_path, perm, flips):
    """The same CT stored in another array order (a positive-diagonal NIfTI affine, reversed slices, permuted
    axes) gets the same tumour voxels in the world, written on that file's own grid, and the same lesions."""
    import SimpleITK as sitk

    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    case = ct.name[: -len(".nii.gz")]
    other = tmp_path / "other" / f"{case}.nii.gz"
    other.parent.mkdir()
    sitk.WriteImage(sitk.Flip(sitk.PermuteAxes(sitk.ReadImage(str(ct)), perm), flips), str(other))
    t = str(_splitting_threshold(out / "run", ct))
    for src, dst in ((ct, tmp_path / "a"), (other, tmp_path / "b")):
        args = [str(src), "--model", str(out / "run"), "--threshold", t, "--no-postprocess", "--report"]
        assert main(["predict", *args, "--out", str(dst), "-q"]) == 0
    html = [(tmp_path / d / f"{case}_report.html").read_text(encoding="utf-8") for d in ("a", "b")]
    assert "Stored array order" not in html[0] and "Stored array order" in html[1]  # the report says so
    a = sitk.ReadImage(str(tmp_path / "a" / f"{case}_tumour.nii.gz"))
    b = sitk.ReadImage(str(tmp_path / "b" / f"{case}_tumour.nii.gz"))
    stored = sitk.ReadImage(str(other))
    assert b.GetSize() == stored.GetSize() and b.GetDirection() == stored.GetDirection()
    assert np.allclose(b.GetOrigin(), stored.GetOrigin(), atol=1e-4)
    back = sitk.Resample(b, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0)  # onto the first grid
    assert sitk.GetArrayFromImage(a).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(a))
    la = json.loads((tmp_path / "a" / f"{case}_lesions.json").read_text())["lesions"]
    lb = json.loads((tmp_path / "b" / f"{case}_lesions.json").read_text())["lesions"]
    assert [x["long_axis_mm"] for x in la] == [x["long_axis_mm"] for x in lb]
    assert np.allclose([x["centroid_world_mm"] for x in la], [x["centroid_world_mm"] for x in lb], atol=1e-3)


def test_predict_tta_flag_averages_the_mirrored_prediction(demo_run, tmp_path):
    """`predict --tta` = mean of the prediction and the mirrored prediction of the mirrored CT."""
    import torch

    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume

    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    case = ct.name[: -len(".nii.gz")]
    base = [str(ct), "--model", str(out / "run"), "--save-prob", "--threads", "1", "-q"]
    assert main(["predict", *base, "--out", str(tmp_path / "off"), "--no-tta"]) == 0
    assert main(["predict", *base, "--out", str(tmp_path / "on"), "--tta"]) == 0
    off = read_volume(tmp_path / "off" / f"{case}_prob.nii.gz").array
    on = read_volume(tmp_path / "on" / f"{case}_prob.nii.gz").array
    assert not np.allclose(on, off, atol=1e-4)  # the flag changes something
    from lungtumor.core.runtime import cpu_has_bf16

    loaded = load_checkpoint(out / "run")
    prec = "bf16" if cpu_has_bf16() else "32"  # what predict's precision "auto" picks on this CPU
    kw = {"device": torch.device("cpu"), "batch_size": 4, "precision": prec}
    ref, _ = predict_volume(loaded, read_volume(ct), threshold=0.5, tta=True, **kw)
    assert np.allclose(on, ref, atol=1e-3)


def test_predict_says_what_a_folder_holds_that_it_does_not_predict(demo_run, tmp_path, capsys):
    """A batch over a folder skips nothing silently: other files, sub-folders without a DICOM series, a
    stray DICOM file beside the CTs and predict's own outputs are named on stderr; the CTs are predicted."""
    import shutil

    out, _ = demo_run
    ct = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))[0]
    inp = tmp_path / "in"
    (inp / "nested").mkdir(parents=True)
    shutil.copy(ct, inp / "a.nii.gz")
    shutil.copy(ct, inp / "nested" / "b.nii.gz")
    (inp / "notes.txt").write_text("x")
    (inp / "stray.dcm").write_bytes(b"\0" * 200)
    (inp / ".hidden").write_text("x")
    shutil.copy(ct, inp / "old_tumour.nii.gz")
    rc = main(["predict", str(inp), "--model", str(out / "run"), "--out", str(tmp_path / "o"), "-q"])
    cap = capsys.readouterr()
    assert rc == 0 and (tmp_path / "o" / "a_tumour.nii.gz").exists()
    assert len(list((tmp_path / "o").glob("*_tumour.nii.gz"))) == 1
    notes = cap.err.strip().splitlines()
    assert len(notes) == 4 and all(n.startswith("note: skipped ") for n in notes), notes
    for name, why in (("nested", "sub-folders are not searched"), ("notes.txt", "not a CT image"),
                      ("stray.dcm", "DICOM file beside other CT images"), ("old_tumour.nii.gz", "lungtumor output")):  # fmt: skip
        assert any(name in n and why in n for n in notes), (name, notes)
