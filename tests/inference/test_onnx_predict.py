"""``predict --model OUT_DIR`` with an ONNX export folder (issue 25): onnxruntime runs the networks through the
one Predictor, to the masks of the checkpoint, and a bad folder is one line. Skipped without onnx and
onnxruntime (``lungtumor[onnx]``, also in the ``test`` extra)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.data.phantom import make_case
from lungtumor.evaluation.metrics import dice
from lungtumor.imaging.io import read_mask, read_volume, write_volume
from lungtumor.inference.checkpoint import load_any, read_card
from lungtumor.inference.onnx_runtime import DESCRIPTION, OnnxNetwork
from lungtumor.workflows.onnx_export import export_onnx
from lungtumor.workflows.predict import PredictOptions, predict_paths

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
N_PHANTOMS = 6

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'lungtumor[onnx]')",
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The fixture checkpoints as ONNX folders: the 2D model with its detector, and the 3D model."""
    out = tmp_path_factory.mktemp("onnx")
    for name in ("demo2d", "unet3d"):
        export_onnx(FIX / f"{name}.ckpt", out / name)
    return {name: out / name for name in ("demo2d", "unet3d")}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    """Six small phantoms (16 x 64 x 64, 1-5 mm slices, 0-3 tumours) as NIfTI files."""
    out = tmp_path_factory.mktemp("phantoms")
    paths = []
    for seed in range(N_PHANTOMS):
        img, _, _ = make_case(seed, matrix=64, slices=16)
        paths.append(out / f"p{seed}.nii.gz")
        write_volume(img, paths[-1])
    return paths


# the tiny 2D fixture model stays under 0.5 everywhere: 0.25 gives it masks to compare
@pytest.mark.parametrize(("name", "threshold"), [("demo2d", 0.25), ("unet3d", None)])
def test_onnx_masks_agree_with_torch_on_six_phantoms(exports, phantoms, tmp_path, name, threshold):
    opts = PredictOptions(device="cpu", precision="32", threshold=threshold, save_prob=True, progress=False)
    for kind, model in (("torch", FIX / f"{name}.ckpt"), ("onnx", exports[name])):
        results = predict_paths(phantoms, [model], tmp_path / kind, opts)
        assert [r.error for r in results] == [None] * N_PHANTOMS
    found = 0
    for p in phantoms:
        stem = p.name.removesuffix(".nii.gz")
        a = read_mask(tmp_path / "torch" / f"{stem}_tumour.nii.gz").array
        b = read_mask(tmp_path / "onnx" / f"{stem}_tumour.nii.gz").array
        found += bool(a.any())
        assert (dice(a, b) if a.any() or b.any() else 1.0) >= 0.99, stem
        pa = read_volume(tmp_path / "torch" / f"{stem}_prob.nii.gz").array
        pb = read_volume(tmp_path / "onnx" / f"{stem}_prob.nii.gz").array
        assert np.abs(pa - pb).max() < 1e-4, stem
    assert found >= N_PHANTOMS // 2  # most comparisons are of masks with tumour voxels, not of two empty ones
    manifest = json.loads((tmp_path / "onnx" / "predict_manifest.json").read_text())
    (record,) = manifest["models"]
    assert record["runtime"] == "onnxruntime" and record["path"] == str(exports[name] / DESCRIPTION)
    assert record["nodule_detector"] is (name == "demo2d") and manifest["settings"]["precision"] == "32"


def test_loaded_export_has_the_checkpoints_config_and_onnx_networks(exports):
    a, b = load_any(FIX / "demo2d.ckpt"), load_any(exports["demo2d"])
    assert (
        isinstance(b.model, OnnxNetwork) and isinstance(b.nodule, OnnxNetwork) and b.runtime == "onnxruntime"
    )
    assert b.config == a.config and b.stats == a.stats and b.card == a.card == read_card(exports["demo2d"])
    assert load_any(exports["demo2d"], nodules=False).nodule is None
    assert load_any(exports["unet3d"] / DESCRIPTION).config.model.arch == "unet3d"  # the description file too


def test_bf16_is_refused_for_an_onnx_export(exports, phantoms, tmp_path):
    with pytest.raises(InputError, match="float32"):
        predict_paths(
            phantoms[:1], [exports["unet3d"]], tmp_path, PredictOptions(device="cpu", precision="bf16")
        )


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_description(folder: Path, change) -> None:
    doc = json.loads((folder / DESCRIPTION).read_text())
    change(doc)
    (folder / DESCRIPTION).write_text(json.dumps(doc))


def _no_description(d: Path) -> None:
    (d / DESCRIPTION).unlink()


def _no_detector(d: Path) -> None:
    (d / "detector.onnx").unlink()


def _changed_model(d: Path) -> None:
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10])


def _newer(d: Path) -> None:
    _edit_description(d, lambda doc: doc.update(format_version=99))


def _not_json(d: Path) -> None:
    (d / DESCRIPTION).write_text("{not json")


def _wrong_shape(d: Path) -> None:
    _edit_description(d, lambda doc: doc["files"]["model.onnx"]["input"].update(shape=["batch", 3, 32, 32]))


def _corrupt_unhashed(d: Path) -> None:  # an export without sha256s (format version 0) of a broken file
    _edit_description(d, lambda doc: [doc.pop("format_version"), doc["files"]["model.onnx"].pop("sha256")])
    (d / "model.onnx").write_bytes(b"not an onnx file")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_description, "an ONNX folder without onnx_export.json"),
        (_no_detector, "detector.onnx: missing"),
        (_changed_model, "model.onnx: does not match its sha256"),
        (_newer, "format version 99 is newer"),
        (_not_json, "onnx_export.json: not readable JSON"),
        (_wrong_shape, "takes inputs of shape [3, 32, 32], but its config predicts with [3, 64, 64]"),
        (_corrupt_unhashed, "model.onnx: not a readable ONNX model"),
    ],
)
def test_a_bad_onnx_folder_is_one_line(exports, phantoms, tmp_path, capsys, damage, message):
    bad = _copy(exports["demo2d"], tmp_path / "bad")
    damage(bad)
    assert main(["predict", str(phantoms[0]), "--model", str(bad), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o").exists()  # nothing written for a model that did not load


def test_without_onnxruntime_the_error_names_the_extra(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec then says it is not there
    with pytest.raises(
        InputError, match=r"onnxruntime, and it is not installed: pip install 'lungtumor\[onnx\]'"
    ):
        load_any(exports["unet3d"])


def test_an_onnx_folder_is_not_exported_again(exports, tmp_path):
    with pytest.raises(InputError, match="is an ONNX export already"):
        export_onnx(exports["unet3d"], tmp_path / "again")
    assert not (tmp_path / "again").exists()
