"""Every command answers bad input with one line ``error: <file or option>: <problem>``, exit code 2, no
traceback, and leaves no partial output behind.

Each kind of bad input is one entry of ``KINDS``: a function that builds the bad input under ``tmp_path`` and
returns the command line, the words the error line must hold, and the folders that must not exist
afterwards. ``LUNGTUMOR_ERRORS_TABLE=docs/errors-observed.md pytest tests/robustness`` writes the observed
messages as the table in docs/errors.md.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from lt_testdata import GEOM, SHAPE, tiny_dataset

from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

from ._util import one_error_line, record_error, run_cli


@dataclass
class Bad:
    """A bad input: the command line, words the one error line must contain, paths that must not exist."""

    argv: list
    needles: tuple[str, ...]
    absent: list[Path] = field(default_factory=list)


class Fx:
    """Lazy access to the session fixtures (a kind that needs no model does not train one)."""

    def __init__(self, request, tmp_path: Path) -> None:
        self.request, self.tmp = request, tmp_path

    def __getattr__(self, name: str):
        return self.request.getfixturevalue(name)


# ----------------------------------------------------------------------------- builders


def _ct(path: Path, array: np.ndarray | None = None, **geom) -> Path:
    """A small valid CT (int16 HU) unless ``array`` is given."""
    if array is None:
        array = np.random.default_rng(0).integers(-1000, 400, size=SHAPE).astype(np.int16)
    write_volume(Volume(array, **(geom or GEOM)), path)
    return path


def _predict(fx: Fx, inp: Path, *needles: str) -> Bad:
    out = fx.tmp / "out"
    return Bad(["predict", inp, "--model", fx.tiny_run, "--out", out, "-q"], needles or (inp.name,), [out])


def _dataset(root: Path, n: int = 2) -> Path:
    return tiny_dataset(root, n)


def _json_dataset(fx: Fx, doc) -> tuple[Path, Path]:
    ds = _dataset(fx.tmp / "ds")
    (ds / "dataset.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return ds, ds / "dataset.json"


def _entry(i: int) -> dict:
    return {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}


def _prepare(fx: Fx, ds: Path, *needles: str) -> Bad:
    out = fx.tmp / "cache"
    return Bad(["prepare", ds, out, "-q"], needles, [out])


def _nrrd(path: Path, sizes: str, directions: str, body: bytes, kind: str = "short") -> Path:
    """A hand-written NRRD header (SimpleITK refuses to write some of these geometries itself)."""
    hdr = (
        f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
        f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
        "space origin: (0,0,0)\n\n"
    )
    path.write_bytes(hdr.encode() + body)
    return path


def _nifti_with_pixdim(fx: Fx, name: str, z_spacing: float) -> Path:
    src = _ct(fx.tmp / "ok.nii.gz")
    raw = bytearray(gzip.decompress(src.read_bytes()))
    pix = list(struct.unpack("<8f", raw[76:108]))
    pix[3] = z_spacing
    raw[76:108] = struct.pack("<8f", *pix)
    p = fx.tmp / name
    p.write_bytes(gzip.compress(bytes(raw)))
    src.unlink()
    return p


def _dicom(folder: Path, n: int, uid: str, start: int = 0, z0: float = 0.0) -> None:
    """``n`` CT slices of one series into ``folder`` (2.5 mm apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        sl = sitk.GetImageFromArray(np.full((16, 16), 100 + k, np.int16))
        sl.SetSpacing((0.8, 0.8))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{z0 + 2.5 * k:.4f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
            "0018|0050": "2.5",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"IM{start + k:04d}.dcm"))
        writer.Execute(sl)


def _checkpoint(fx: Fx) -> dict:
    return torch.load(fx.tiny_ckpt, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- image files (predict)


def corrupt_gzip(fx: Fx) -> Bad:
    p = _ct(fx.tmp / "ct.nii.gz", np.random.default_rng(1).integers(-1000, 400, (8, 64, 64)).astype(np.int16))
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 3, len(b) // 3 + 40):
        b[i] ^= 0x5A
    p.write_bytes(bytes(b))
    return _predict(fx, p, "ct.nii.gz", "corrupt")


def truncated_gzip(fx: Fx) -> Bad:
    p = _ct(fx.tmp / "ct.nii.gz")
    p.write_bytes(p.read_bytes()[:-100])
    return _predict(fx, p, "ct.nii.gz", "truncated")


def zero_byte_file(fx: Fx) -> Bad:
    p = fx.tmp / "ct.nii.gz"
    p.write_bytes(b"")
    return _predict(fx, p, "ct.nii.gz", "empty (0 bytes)")


def text_named_nii_gz(fx: Fx) -> Bad:
    p = fx.tmp / "notes.nii.gz"
    p.write_text("patient notes, not an image\n")
    return _predict(fx, p, "notes.nii.gz", "not gzip-compressed")


def gzip_not_nifti(fx: Fx) -> Bad:
    p = fx.tmp / "ct.nii.gz"
    p.write_bytes(gzip.compress(b"PK\x03\x04 a zip file inside gzip " * 40))
    return _predict(fx, p, "ct.nii.gz", "not a NIfTI image")


def image_2d(fx: Fx) -> Bad:
    p = fx.tmp / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(p))
    return _predict(fx, p, "slice.nii.gz", "2D", "3D volume is required")


def image_4d(fx: Fx) -> Bad:
    p = fx.tmp / "ct4d.nii.gz"
    v = Volume(np.zeros(SHAPE, np.int16), **GEOM).to_sitk()
    sitk.WriteImage(sitk.JoinSeries([v, v]), str(p))
    return _predict(fx, p, "ct4d.nii.gz", "4D", "3D volume is required")


def single_slice(fx: Fx) -> Bad:
    p = _ct(fx.tmp / "one.nii.gz", np.zeros((1, 16, 16), np.int16))
    return _predict(fx, p, "one.nii.gz", "at least 2 slices")


def nan_voxels(fx: Fx) -> Bad:
    a = np.zeros(SHAPE, np.float32)
    a[1, 2, 3] = np.nan
    p = _ct(fx.tmp / "nan.nii.gz", a)
    return _predict(fx, p, "nan.nii.gz", "1 NaN or infinite voxels")


def inf_voxels(fx: Fx) -> Bad:
    a = np.zeros(SHAPE, np.float32)
    a[0, 0, :2] = np.inf
    p = _ct(fx.tmp / "inf.nrrd", a)
    return _predict(fx, p, "inf.nrrd", "2 NaN or infinite voxels")


def sheared_direction(fx: Fx) -> Bad:
    body = np.zeros((4, 8, 8), "<i2").tobytes()
    p = _nrrd(fx.tmp / "shear.nrrd", "8 8 4", "(1,0,0) (0.5,1,0) (0,0,2.5)", body)
    return _predict(fx, p, "shear.nrrd", "direction matrix is not orthonormal")


def zero_spacing(fx: Fx) -> Bad:
    p = _nifti_with_pixdim(fx, "flat.nii.gz", 0.0)
    return _predict(fx, p, "flat.nii.gz", "invalid voxel spacing", "pixdim must be > 0")


def zero_spacing_nrrd(fx: Fx) -> Bad:
    body = np.zeros((4, 8, 8), "<i2").tobytes()
    p = _nrrd(fx.tmp / "flat.nrrd", "8 8 4", "(1,0,0) (0,1,0) (0,0,0)", body)
    return _predict(fx, p, "flat.nrrd", "invalid voxel spacing (1, 1, 0) mm")


def spacing_100mm(fx: Fx) -> Bad:
    p = _ct(fx.tmp / "thick.nii.gz", spacing=(0.8, 0.8, 100.0))
    return _predict(fx, p, "thick.nii.gz", "implausible voxel spacing", "100")


def huge_header_nrrd(fx: Fx) -> Bad:
    body = np.zeros(64, "<i2").tobytes()  # a few bytes of data; the header claims 20 TB
    p = _nrrd(fx.tmp / "huge.nrrd", "100000 100000 1000", "(1,0,0) (0,1,0) (0,0,1)", body)
    return _predict(fx, p, "huge.nrrd", "100000x100000x1000 voxels", "memory budget")


def huge_header_mha(fx: Fx) -> Bad:
    p = fx.tmp / "huge.mha"
    p.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 1000\nElementType = MET_FLOAT\n"
        b"ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n" + bytes(256)
    )
    return _predict(fx, p, "huge.mha", "100000x100000x1000 voxels", "memory budget")


def missing_input(fx: Fx) -> Bad:
    return _predict(fx, fx.tmp / "nope.nii.gz", "nope.nii.gz", "no such file or folder")


def unsupported_type(fx: Fx) -> Bad:
    p = fx.tmp / "scan.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return _predict(fx, p, "scan.png", "holds no CT images" if p.is_dir() else "unsupported file type")


def rgb_image(fx: Fx) -> Bad:
    p = fx.tmp / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((*SHAPE, 3), np.uint8), isVector=True), str(p))
    return _predict(fx, p, "rgb.nrrd", "3 components per voxel")


def empty_input_folder(fx: Fx) -> Bad:
    d = fx.tmp / "cts"
    d.mkdir()
    (d / "readme.txt").write_text("no images here")
    return _predict(fx, d, "cts", "folder holds no CT images")


def dicom_two_series(fx: Fx) -> Bad:
    d = fx.tmp / "dicom"
    _dicom(d, 3, "1.2.826.0.1.3680043.2.1125.1.1")
    _dicom(d, 3, "1.2.826.0.1.3680043.2.1125.1.2", start=10)
    return _predict(fx, d, "dicom", "2 DICOM series")


def dicom_missing_slice(fx: Fx) -> Bad:
    d = fx.tmp / "dicom"
    _dicom(d, 6, "1.2.826.0.1.3680043.2.1125.1.3")
    (d / "IM0003.dcm").unlink()
    return _predict(fx, d, "dicom", "gap of 5.00 mm", "missing slice")


# ----------------------------------------------------------------------------- labels (check)


def _check_label(fx: Fx, array: np.ndarray, *needles: str, **geom) -> Bad:
    ds = _dataset(fx.tmp / "ds")
    write_volume(Volume(array, **(geom or GEOM)), ds / "labelsTr" / "c1.nii.gz")
    return Bad(["check", ds, "-q"], ("c1.nii.gz", *needles))


def label_float_half(fx: Fx) -> Bad:
    m = np.zeros(SHAPE, np.float32)
    m[1, 1, 1], m[2, 2, 2] = 0.5, 1.0
    return _check_label(fx, m, "non-binary values {0, 0.5, 1}")


def label_values_012(fx: Fx) -> Bad:
    m = np.zeros(SHAPE, np.uint8)
    m[1, 1, 1], m[2, 2, 2] = 1, 2
    return _check_label(fx, m, "label has values {0, 1, 2}; expected 0 and 1")


def label_other_grid(fx: Fx) -> Bad:
    return _check_label(fx, np.zeros((6, 16, 20), np.uint8), "not on the image grid", "shape")


def label_other_affine(fx: Fx) -> Bad:
    return _check_label(
        fx, np.zeros(SHAPE, np.uint8), "not on the image grid", "origin", spacing=(0.8, 0.8, 2.5),
        origin=(-10.0, 5.0, 140.0),
    )  # fmt: skip


def label_missing(fx: Fx) -> Bad:
    ds = _dataset(fx.tmp / "ds")
    (ds / "labelsTr" / "c1.nii.gz").unlink()
    return Bad(["check", ds, "-q"], ("c1.nii.gz", "no label with the same name"))


# ----------------------------------------------------------------------------- dataset.json (check, prepare)


def invalid_json(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, '{"training": [')
    return _prepare(fx, ds, "dataset.json", "invalid JSON at line 1")


def json_missing_training(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"name": "x", "test": []})
    return _prepare(fx, ds, "dataset.json", "missing key 'training'")


def json_entry_missing_label(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"training": [_entry(0), {"image": "./imagesTr/c1.nii.gz"}]})
    return Bad(["check", ds, "-q"], ("dataset.json", "training[1]", "missing key 'label'"))


def json_duplicate_case(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"training": [_entry(0), _entry(1), _entry(0)]})
    return _prepare(fx, ds, "dataset.json", "duplicate case 'c0'")


def json_dotdot_path(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"training": [_entry(0), {"image": "../../evil.nii.gz", "label": "x.nii.gz"}]})
    return _prepare(fx, ds, "training[1]", "'../../evil.nii.gz' points outside the dataset folder")


def json_absolute_outside(fx: Fx) -> Bad:
    other = _ct(fx.tmp / "elsewhere.nii.gz")
    ds, _ = _json_dataset(fx, {"training": [{"image": str(other), "label": "./labelsTr/c0.nii.gz"}]})
    return Bad(["check", ds, "-q"], ("training[0]", "elsewhere.nii.gz", "points outside the dataset folder"))


def json_nul_in_path(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"training": [{"image": "./imagesTr/c0\u0000.nii.gz", "label": "l.nii.gz"}]})
    return _prepare(fx, ds, "training[0]", "not a valid path", "null byte")


def json_deeply_nested(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, "[" * 200_000)
    return _prepare(fx, ds, "dataset.json", "nested too deeply")


def empty_dataset(fx: Fx) -> Bad:
    ds, _ = _json_dataset(fx, {"training": []})
    return _prepare(fx, ds, "dataset.json", "dataset has no training cases")


def dataset_missing(fx: Fx) -> Bad:
    return Bad(["check", fx.tmp / "no_such_ds", "-q"], ("no_such_ds", "dataset folder does not exist"))


def dataset_empty_folder(fx: Fx) -> Bad:
    (fx.tmp / "emptyds").mkdir()
    return _prepare(fx, fx.tmp / "emptyds", "emptyds", "no dataset.json and no imagesTr/")


# ----------------------------------------------------------------------------- checkpoints (predict)


def _predict_ckpt(fx: Fx, ckpt: Path, *needles: str) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    out = fx.tmp / "out"
    return Bad(["predict", ct, "--model", ckpt, "--out", out, "-q"], (ckpt.name, *needles), [out])


def ckpt_not_ours(fx: Fx) -> Bad:
    p = fx.tmp / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, p)
    return _predict_ckpt(fx, p, "not a lungtumor checkpoint")


def ckpt_random_bytes(fx: Fx) -> Bad:
    p = fx.tmp / "model.ckpt"
    p.write_bytes(os.urandom(4096))
    return _predict_ckpt(fx, p, "not a readable checkpoint")


def ckpt_other_config(fx: Fx) -> Bad:
    ck = _checkpoint(fx)
    ck["hyper_parameters"]["lungtumor"]["config"]["model"]["base_channels"] = 8
    p = fx.tmp / "wide.ckpt"
    torch.save(ck, p)
    return _predict_ckpt(fx, p, "checkpoint does not match its config")


def ckpt_truncated(fx: Fx) -> Bad:
    p = fx.tmp / "best.ckpt"
    data = fx.tiny_ckpt.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return _predict_ckpt(fx, p, "not a readable checkpoint")


def ckpt_missing(fx: Fx) -> Bad:
    run = fx.tmp / "run"
    run.mkdir()
    return _predict_ckpt(fx, run, "best.ckpt", "checkpoint not found")


# ----------------------------------------------------------------------------- output folders


def out_under_a_file(fx: Fx) -> Bad:
    f = fx.tmp / "report.pdf"
    f.write_text("a file, not a folder")
    ct = _ct(fx.tmp / "ct.nii.gz")
    return Bad(
        ["predict", ct, "--model", fx.tiny_run, "--out", f / "out", "-q"], ("report.pdf", "cannot create")
    )


def _enospc(*_a, **_k):
    raise OSError(28, "No space left on device")


def disk_full_writing_mask(fx: Fx) -> Bad:
    def half_then_full(image, path, *a, **k):
        Path(path).write_bytes(b"\x1f\x8b partial")  # what a full disk leaves: a torn file
        _enospc()

    assert fx.tiny_run  # build the session's model before writes start failing
    ct = _ct(fx.tmp / "ct.nii.gz")
    fx.monkeypatch.setattr(sitk, "WriteImage", half_then_full)
    return _predict(fx, ct, "ct_tumour.nii.gz", "cannot write image", "No space left on device")


def disk_full_after_the_mask(fx: Fx) -> Bad:
    import lungtumor.evaluation.measure

    assert fx.tiny_run
    fx.monkeypatch.setattr(lungtumor.evaluation.measure, "atomic_write_text", _enospc)
    ct = _ct(fx.tmp / "ct.nii.gz")
    return _predict(fx, ct, "ct.nii.gz", "No space left on device")  # and the case's mask is removed


def out_is_a_file(fx: Fx) -> Bad:
    f = fx.tmp / "masks"
    f.write_text("a file")
    return Bad(
        ["synth", f, "--cases", "1", "--test-cases", "0", "--matrix", "48", "-q"], ("masks", "not a folder")
    )


# ----------------------------------------------------------------------------- options and configs


def unknown_preset(fx: Fx) -> Bad:
    bad = _prepare(
        fx, fx.tiny_dataset, "--preset", "invalid choice: 'tiny'", "'3d', 'default', 'demo', 'seed2d'"
    )
    bad.argv += ["--preset", "tiny"]
    return bad


def unknown_model(fx: Fx) -> Bad:
    cfg = fx.tmp / "cfg.yaml"
    cfg.write_text("model: {arch: resnet9000}\n")
    out = fx.tmp / "run"
    argv = ["train", fx.tiny_cache, "--out", out, "--config", cfg, "-q"]
    return Bad(
        argv, ("model.arch", "unknown architecture 'resnet9000'", "valid names: unet2d, unet3d"), [out]
    )


def config_unknown_key(fx: Fx) -> Bad:
    cfg = fx.tmp / "cfg.yaml"
    cfg.write_text("train: {epochz: 3}\n")
    out = fx.tmp / "run"
    argv = ["train", fx.tiny_cache, "--out", out, "--config", cfg, "-q"]
    return Bad(argv, ("cfg.yaml", "unknown key train.epochz", "valid keys:"), [out])


def config_wrong_type(fx: Fx) -> Bad:
    cfg = fx.tmp / "cfg.yaml"
    cfg.write_text("train: {epochs: many}\n")
    out = fx.tmp / "run"
    argv = ["train", fx.tiny_cache, "--out", out, "--config", cfg, "-q"]
    return Bad(argv, ("cfg.yaml", "train.epochs: expected an integer, got 'many'"), [out])


def config_invalid_yaml(fx: Fx) -> Bad:
    cfg = fx.tmp / "cfg.yaml"
    cfg.write_text("train: {epochs: 3\n")
    bad = _prepare(fx, fx.tiny_dataset, "cfg.yaml", "invalid YAML")
    bad.argv += ["--config", cfg]
    return bad


def option_wrong_type(fx: Fx) -> Bad:
    out = fx.tmp / "run"
    return Bad(
        ["train", fx.tiny_cache, "--out", out, "--epochs", "ten"],
        ("--epochs", "invalid int value: 'ten'"),
        [out],
    )


def option_missing(fx: Fx) -> Bad:
    return Bad(
        ["predict", fx.tmp / "ct.nii.gz"], ("the following arguments are required: --model, -o/--out",)
    )


def threshold_out_of_range(fx: Fx) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    out = fx.tmp / "out"
    argv = ["predict", ct, "--model", fx.tiny_run, "--out", out, "--threshold", "1.5", "-q"]
    return Bad(argv, ("--threshold", "1.5 is not a probability in (0, 1)"), [out])


def unknown_device(fx: Fx) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    out = fx.tmp / "out"
    argv = ["predict", ct, "--model", fx.tiny_run, "--out", out, "--device", "tpu", "-q"]
    return Bad(argv, ("--device", "unknown device 'tpu'; use auto, cpu, cuda (or gpu), cuda:N, mps"), [out])


def device_index_for_train(fx: Fx) -> Bad:
    out = fx.tmp / "run"
    argv = ["train", fx.tiny_cache, "--out", out, "--device", "cuda:99", "-q"]  # GPU 99: on no machine
    return Bad(argv, ("--device", "CUDA device"), [out])


def threads_below_one(fx: Fx) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    out = fx.tmp / "out"
    argv = ["predict", ct, "--model", fx.tiny_run, "--out", out, "--threads", "0", "-q"]
    return Bad(argv, ("--threads", "must be at least 1, got 0"), [out])


def min_lesion_nan(fx: Fx) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    out = fx.tmp / "out"
    argv = ["predict", ct, "--model", fx.tiny_run, "--out", out, "--min-lesion-mm3", "nan", "-q"]
    return Bad(argv, ("--min-lesion-mm3", "must be a finite number >= 0, got nan"), [out])


def synth_bad_matrix(fx: Fx) -> Bad:
    out = fx.tmp / "synth"
    return Bad(["synth", out, "--matrix", "10", "-q"], ("--matrix", "between 48 and 1024"), [out])


# ----------------------------------------------------------------------------- other commands


def evaluate_missing_dir(fx: Fx) -> Bad:
    gt = fx.tmp / "gt"
    gt.mkdir()
    _ct(gt / "c0.nii.gz", np.zeros(SHAPE, np.uint8))
    return Bad(["evaluate", fx.tmp / "preds", gt, "-q"], ("preds",))


def evaluate_no_matching_case(fx: Fx) -> Bad:
    gt, preds, out = fx.tmp / "gt", fx.tmp / "preds", fx.tmp / "ev"
    gt.mkdir()
    preds.mkdir()
    _ct(gt / "c0.nii.gz", np.zeros(SHAPE, np.uint8))
    _ct(preds / "other_tumour.nii.gz", np.zeros(SHAPE, np.uint8))
    return Bad(["evaluate", preds, gt, "--out", out, "-q"], ("preds", "no prediction matches"), [out])


def measure_folder_without_masks(fx: Fx) -> Bad:
    masks, out = fx.tmp / "masks", fx.tmp / "m"
    masks.mkdir()
    (masks / "notes.txt").write_text("not a mask")
    return Bad(["measure", masks, "--out", out], ("masks", "folder holds no mask files"), [out])


def measure_multi_label(fx: Fx) -> Bad:
    m = np.zeros(SHAPE, np.uint8)
    m[1, 1, 1], m[2, 2, 2] = 1, 3
    mask, out = _ct(fx.tmp / "ml.nii.gz", m), fx.tmp / "m"
    return Bad(["measure", mask, "--out", out], ("ml.nii.gz", "values {0, 1, 3}", "--label N"), [out])


def slot_given_twice(fx: Fx) -> Bad:
    out = fx.tmp / "ds"
    return Bad(
        ["synth", out, "-o", fx.tmp / "other", "-q"],
        ("lungtumor synth", "unrecognized arguments", "already given: OUT as -o/--out"),
        [out],
    )


def report_mask_off_grid(fx: Fx) -> Bad:
    ct = _ct(fx.tmp / "ct.nii.gz")
    m = _ct(fx.tmp / "mask.nii.gz", np.zeros((6, 16, 20), np.uint8))
    out = fx.tmp / "rep"
    return Bad(
        ["report", ct, "--mask", m, "--out", out, "-q"], ("mask.nii.gz", "not on the image grid"), [out]
    )


def demo_out_under_a_file(fx: Fx) -> Bad:
    f = fx.tmp / "blocker"
    f.write_text("x")
    return Bad(["demo", "--out", f / "demo", "-q"], ("blocker", "cannot create output folder"))


def train_not_a_cache(fx: Fx) -> Bad:
    d = fx.tmp / "notcache"
    d.mkdir()
    out = fx.tmp / "run"
    return Bad(["train", d, "--out", out, "-q"], ("notcache",), [out])


def train_existing_run(fx: Fx) -> Bad:
    import shutil

    run = shutil.copytree(fx.tiny_run, fx.tmp / "run")
    return Bad(
        ["train", fx.tiny_cache, "--out", run, "-q"], ("run", "already holds a training run", "--resume")
    )


def train_resume_nothing(fx: Fx) -> Bad:
    out = fx.tmp / "fresh"
    argv = ["train", fx.tiny_cache, "--out", out, "--resume", "-q"]
    return Bad(argv, ("last.ckpt", "checkpoint not found"), [out])


def train_checkpoints_linked_out(fx: Fx) -> Bad:
    out, outside = fx.tmp / "run", fx.tmp / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "checkpoints").symlink_to(outside, target_is_directory=True)
    argv = ["train", fx.tiny_cache, "--out", out, "-q"]
    return Bad(argv, ("run/checkpoints", "is a symbolic link out of the output folder; remove it"))


def train_detector_source_gone(fx: Fx) -> Bad:
    import json
    import shutil

    cache = shutil.copytree(fx.tiny_cache, fx.tmp / "cache")
    meta = json.loads((cache / "cache.json").read_text())
    meta["source"]["path"] = str(fx.tmp / "moved")
    (cache / "cache.json").write_text(json.dumps(meta))
    out = fx.tmp / "run"
    argv = ["train", cache, "--out", out, "--config", fx.tiny_config, "-q"]  # demo: with the nodule detector
    return Bad(
        argv, ("cache.json", "source dataset", "cannot be read", "run prepare again"), [out / "checkpoints"]
    )


KINDS: dict[str, tuple[str, Callable[[Fx], Bad]]] = {
    "corrupt gzip (bytes flipped in the compressed stream)": ("predict", corrupt_gzip),
    "truncated .nii.gz": ("predict", truncated_gzip),
    "zero-byte file": ("predict", zero_byte_file),
    "text file named .nii.gz": ("predict", text_named_nii_gz),
    "gzip file that holds no NIfTI": ("predict", gzip_not_nifti),
    "2D image": ("predict", image_2d),
    "4D image": ("predict", image_4d),
    "single-slice volume": ("predict", single_slice),
    "NaN voxels": ("predict", nan_voxels),
    "infinite voxels": ("predict", inf_voxels),
    "sheared (non-orthogonal) direction matrix, hand-written NRRD": ("predict", sheared_direction),
    "zero spacing in a NIfTI header": ("predict", zero_spacing),
    "zero spacing in a NRRD header": ("predict", zero_spacing_nrrd),
    "absurd spacing (100 mm)": ("predict", spacing_100mm),
    "NRRD header claiming 100000x100000x1000 voxels": ("predict", huge_header_nrrd),
    "MHA header claiming 100000x100000x1000 voxels": ("predict", huge_header_mha),
    "missing input file": ("predict", missing_input),
    "unsupported file type (.png)": ("predict", unsupported_type),
    "RGB (3-component) image": ("predict", rgb_image),
    "input folder without images": ("predict", empty_input_folder),
    "DICOM folder with two series": ("predict", dicom_two_series),
    "DICOM series with a missing slice": ("predict", dicom_missing_slice),
    "float label with 0.5": ("check", label_float_half),
    "label with values {0,1,2}": ("check", label_values_012),
    "label on another grid (shape)": ("check", label_other_grid),
    "label with the same shape, another affine": ("check", label_other_affine),
    "image without a label": ("check", label_missing),
    "dataset.json: invalid JSON": ("prepare", invalid_json),
    "dataset.json: missing 'training'": ("prepare", json_missing_training),
    "dataset.json: entry without 'label'": ("check", json_entry_missing_label),
    "dataset.json: duplicate case": ("prepare", json_duplicate_case),
    "dataset.json: path with ..": ("prepare", json_dotdot_path),
    "dataset.json: absolute path outside the dataset": ("check", json_absolute_outside),
    "dataset.json: NUL byte in a path": ("prepare", json_nul_in_path),
    "dataset.json: nested 200000 deep": ("prepare", json_deeply_nested),
    "empty dataset (no training cases)": ("prepare", empty_dataset),
    "dataset folder does not exist": ("check", dataset_missing),
    "empty dataset folder": ("prepare", dataset_empty_folder),
    "checkpoint that is not ours": ("predict", ckpt_not_ours),
    "checkpoint of random bytes": ("predict", ckpt_random_bytes),
    "checkpoint from another model config": ("predict", ckpt_other_config),
    "truncated checkpoint": ("predict", ckpt_truncated),
    "run folder without a checkpoint": ("predict", ckpt_missing),
    "output folder under a regular file": ("predict", out_under_a_file),
    "output path is a file": ("synth", out_is_a_file),
    "disk full while writing a mask": ("predict", disk_full_writing_mask),
    "disk full after the mask was written": ("predict", disk_full_after_the_mask),
    "unknown --preset": ("prepare", unknown_preset),
    "unknown model name": ("train", unknown_model),
    "config YAML with an unknown key": ("train", config_unknown_key),
    "config YAML with a wrong type": ("train", config_wrong_type),
    "config file that is not YAML": ("prepare", config_invalid_yaml),
    "option value of the wrong type": ("train", option_wrong_type),
    "missing required option": ("predict", option_missing),
    "--threshold out of range": ("predict", threshold_out_of_range),
    "unknown --device": ("predict", unknown_device),
    "train --device cuda:N of a GPU the machine does not have": ("train", device_index_for_train),
    "output folder given twice (OUT and -o)": ("synth", slot_given_twice),
    "--threads below 1": ("predict", threads_below_one),
    "--min-lesion-mm3 not a number": ("predict", min_lesion_nan),
    "synth --matrix out of range": ("synth", synth_bad_matrix),
    "evaluate: prediction folder missing": ("evaluate", evaluate_missing_dir),
    "evaluate: no prediction matches a case by name": ("evaluate", evaluate_no_matching_case),
    "measure: folder without masks": ("measure", measure_folder_without_masks),
    "measure: multi-label mask without --label": ("measure", measure_multi_label),
    "report: mask not on the CT grid": ("report", report_mask_off_grid),
    "demo: output under a regular file": ("demo", demo_out_under_a_file),
    "train: folder that is not a cache": ("train", train_not_a_cache),
    "train: run folder already holds a run": ("train", train_existing_run),
    "train --resume with nothing to resume": ("train", train_resume_nothing),
    "train: RUN/checkpoints is a symlink out of the run folder": ("train", train_checkpoints_linked_out),
    "train with the nodule detector, its source dataset moved": ("train", train_detector_source_gone),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input(kind: str, tmp_path: Path, capsys, request) -> None:
    command, build = KINDS[kind]
    bad = build(Fx(request, tmp_path))
    assert bad.argv[0] == command
    rc, _, err = run_cli(capsys, *bad.argv)
    line = one_error_line(err, *bad.needles)
    assert rc == 2, (rc, line)
    for p in bad.absent:
        assert not p.exists(), f"{p} was left behind"
    leftovers = [p for p in tmp_path.rglob(".tmp-*")]
    assert not leftovers, leftovers
    record_error(kind, command, line, tmp_path)


def test_at_least_30_kinds() -> None:
    assert len(KINDS) >= 30


def test_huge_header_is_refused_before_allocating(tmp_path: Path) -> None:
    """The header's size is checked against the budget before any voxel is read: no big allocation."""
    from lungtumor.core.errors import InputError
    from lungtumor.imaging.io import read_volume

    body = np.zeros(64, "<i2").tobytes()
    small = _nrrd(tmp_path / "big.nrrd", "4000 4000 1000", "(1,0,0) (0,1,0) (0,0,1)", body)  # claims 32 GB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="memory budget"):
        read_volume(small)
    with pytest.raises(InputError, match="memory budget of 0.0156 GiB"):
        read_volume(small, memory_budget=16 << 20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"
