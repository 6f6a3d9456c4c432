"""Model packages (issue 25): ``lungtumor export`` writes a .zip that ``predict --model`` loads directly, with
the same masks as the checkpoint, and that is refused when changed or from a newer format."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.inference import package
from lungtumor.inference.checkpoint import load_any, read_card
from lungtumor.inference.package import DETECTOR, MANIFEST, MODEL, PACKAGE_VERSION, read_members
from lungtumor.workflows.export import export_model
from lungtumor.workflows.predict import PredictOptions, predict_paths

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy the zip ``src`` to ``dst``, passing each (name, bytes) through ``change`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            item = change(name, zin.read(name))
            if item is not None:
                zout.writestr(item[0], item[1])


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pkg")
    return {
        name: export_model(FIX / f"{name}.ckpt", out / f"{name}.zip").files[0]
        for name in ("demo2d", "unet3d")
    }


def test_package_holds_weights_config_card_readme_and_hashes(packages):
    manifest, members = read_members(packages["demo2d"])
    assert manifest["format_version"] == PACKAGE_VERSION and manifest["nodule_detector"] is True
    assert set(members) == {MODEL, DETECTOR, "config.json", "preprocessing.json", "card.json", "README.md"}
    pre = json.loads(members["preprocessing.json"])
    assert set(pre) == {"stats", "prep"} and set(pre["stats"]) == {"mean", "std"}
    assert b"lungtumor predict" in members["README.md"]
    assert manifest["source"]["file"] == "demo2d.ckpt"
    _, members3 = read_members(packages["unet3d"])
    assert DETECTOR not in members3  # no detector in the checkpoint, none in the package


def test_export_is_reproducible(packages, tmp_path):
    again = export_model(FIX / "demo2d.ckpt", tmp_path / "again.zip").files[0]
    assert again.read_bytes() == packages["demo2d"].read_bytes()


@pytest.mark.parametrize(("name", "threshold"), [("demo2d", 0.25), ("unet3d", None)])
def test_predict_with_the_package_equals_the_checkpoint(packages, tmp_path, name, threshold):
    opts = PredictOptions(device="cpu", precision="32", threshold=threshold, save_prob=True)
    masks = {}
    for kind, model in (("ckpt", FIX / f"{name}.ckpt"), ("zip", packages[name])):
        (res,) = predict_paths([FIX / "ct.nii.gz"], [model], tmp_path / kind, opts)
        assert res.error is None, res.error
        masks[kind] = read_mask(tmp_path / kind / "ct_tumour.nii.gz").array
    assert masks["ckpt"].any()  # a phantom with a tumour found: the comparison is not of two empty masks
    assert np.array_equal(masks["ckpt"], masks["zip"])
    for f in ("ct_tumour.nii.gz", "ct_prob.nii.gz"):  # voxels and headers, byte for byte
        assert (tmp_path / "ckpt" / f).read_bytes() == (tmp_path / "zip" / f).read_bytes()
    assert np.array_equal(read_volume(tmp_path / "ckpt" / "ct_prob.nii.gz").array,
                          read_volume(tmp_path / "zip" / "ct_prob.nii.gz").array)  # fmt: skip
    manifest = json.loads((tmp_path / "zip" / "predict_manifest.json").read_text())
    assert manifest["models"][0]["path"] == str(packages[name])


def test_loaded_package_has_the_checkpoints_weights_and_card(packages):
    a, b = load_any(FIX / "demo2d.ckpt"), load_any(packages["demo2d"])
    for x, y in ((a.model, b.model), (a.nodule, b.nodule)):
        sa, sb = x.state_dict(), y.state_dict()
        assert sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert a.stats == b.stats and a.prep == b.prep and a.config == b.config
    assert read_card(packages["demo2d"]) == read_card(FIX / "demo2d.ckpt") == b.card


def test_cli_export_and_predict_with_the_zip(packages, tmp_path, capsys):
    assert main(["export", str(FIX / "unet3d.ckpt"), "-o", str(tmp_path / "m.zip"), "-q"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert main(["predict", str(FIX / "ct.nii.gz"), "--model", str(tmp_path / "m.zip"), "-o", str(tmp_path / "o"),
                 "--device", "cpu", "-q"]) == 0  # fmt: skip
    assert (tmp_path / "o" / "ct_tumour.nii.gz").is_file()


def _predict_error(model: Path, tmp_path: Path, capsys) -> str:
    rc = main(["predict", str(FIX / "ct.nii.gz"), "--model", str(model), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything is written
    return err


def test_a_tampered_member_is_refused_naming_it(packages, tmp_path, capsys):
    bad = tmp_path / "tampered.zip"

    def flip(name, data):
        if name == MODEL:
            data = data[:-1] + bytes([data[-1] ^ 1])  # one bit of one weight
        return name, data

    _rewrite(packages["demo2d"], bad, flip)
    err = _predict_error(bad, tmp_path, capsys)
    assert (
        err
        == f"error: {bad}: {MODEL} does not match its sha256 in {MANIFEST} (the file was changed or is corrupt)"
    )


def test_a_package_from_a_newer_format_is_refused(packages, tmp_path, capsys):
    future = tmp_path / "future.zip"

    def bump(name, data):
        if name == MANIFEST:
            doc = json.loads(data)
            doc["format_version"] = PACKAGE_VERSION + 1
            data = json.dumps(doc).encode()
        return name, data

    _rewrite(packages["demo2d"], future, bump)
    err = _predict_error(future, tmp_path, capsys)
    assert f"model package format version {PACKAGE_VERSION + 1} is newer than this lungtumor" in err
    assert "upgrade lungtumor" in err


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda n, d: None if n == "config.json" else (n, d), "config.json is missing from the package"),
        (lambda n, d: None if n == MANIFEST else (n, d), f"not a lungtumor model package (no {MANIFEST})"),
    ],
    ids=["missing member", "no manifest"],
)
def test_a_damaged_package_is_one_line_error(packages, tmp_path, capsys, change, needle):
    bad = tmp_path / "bad.zip"
    _rewrite(packages["demo2d"], bad, change)
    assert needle in _predict_error(bad, tmp_path, capsys)


def test_an_unlisted_member_and_a_non_zip_are_refused(packages, tmp_path, capsys):
    extra = tmp_path / "extra.zip"
    shutil.copy(packages["demo2d"], extra)
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("evil.py", "print('hi')")
    assert "evil.py is not listed in" in _predict_error(extra, tmp_path, capsys)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    assert "not a readable model package" in _predict_error(junk, tmp_path, capsys)


def test_export_refuses_a_bad_output_name(tmp_path):
    with pytest.raises(InputError, match=r"a model package is a \.zip file"):
        export_model(FIX / "demo2d.ckpt", tmp_path / "model.ckpt")
    assert not (tmp_path / "model.ckpt").exists()


def test_without_the_deploy_extra_packages_say_how_to_install_it(packages, tmp_path, monkeypatch):
    monkeypatch.setattr(package, "load_safetensors", None)
    monkeypatch.setattr(package, "save_safetensors", None)
    with pytest.raises(InputError, match=r"pip install 'lungtumor\[deploy\]'"):
        load_any(packages["demo2d"])
    with pytest.raises(InputError, match=r"pip install 'lungtumor\[deploy\]'"):
        export_model(FIX / "demo2d.ckpt", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
