"""``lungtumor models install|list|remove`` and ``predict --model NAME`` (issue 25). Every test names its own
``--models-dir`` under tmp_path: the user's real models folder is never touched."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from lungtumor.cli import main
from lungtumor.imaging.io import read_mask
from lungtumor.inference import store
from lungtumor.workflows.export import export_model

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return export_model(FIX / "demo2d.ckpt", tmp_path_factory.mktemp("pkg") / "demo2d.zip").files[0]


@pytest.fixture(autouse=True)
def no_user_folder(monkeypatch, tmp_path):
    """A run that forgot --models-dir would land here, not in the user's data folder."""
    monkeypatch.setattr(store, "default_models_dir", lambda: tmp_path / "default-models")


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_install_list_predict_by_name_and_remove(package, tmp_path, capsys):
    models = tmp_path / "models"
    rc, out, _ = _run(capsys, "models", "install", package, "--name", "lung-v1", "--models-dir", models)
    assert rc == 0 and (models / "lung-v1.zip").is_file() and "--model lung-v1" in out
    rc, out, _ = _run(capsys, "models", "list", "--models-dir", models)
    assert rc == 0 and "lung-v1: unet2d, nodule detector" in out
    rc, out, err = _run(capsys, "predict", FIX / "ct.nii.gz", "--model", "lung-v1", "--models-dir", models,
                        "-o", tmp_path / "by_name", "--threshold", "0.25", "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    rc, _, err = _run(capsys, "predict", FIX / "ct.nii.gz", "--model", FIX / "demo2d.ckpt",
                      "-o", tmp_path / "by_path", "--threshold", "0.25", "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    by_name = read_mask(tmp_path / "by_name" / "ct_tumour.nii.gz").array
    assert by_name.any() and (by_name == read_mask(tmp_path / "by_path" / "ct_tumour.nii.gz").array).all()
    rc, out, _ = _run(capsys, "models", "remove", "lung-v1", "--models-dir", models)
    assert rc == 0 and not (models / "lung-v1.zip").exists()
    rc, out, _ = _run(capsys, "models", "list", "--models-dir", models)
    assert rc == 0 and "no models installed" in out
    assert not (tmp_path / "default-models").exists()


def test_install_defaults_to_the_file_name_and_refuses_to_overwrite(package, tmp_path, capsys):
    models = tmp_path / "models"
    assert _run(capsys, "models", "install", package, "--models-dir", models)[0] == 0
    assert (models / "demo2d.zip").is_file()
    rc, _, err = _run(capsys, "models", "install", package, "--models-dir", models)
    assert rc == 2 and err.strip() == (
        f"error: demo2d: a model of this name is installed ({models / 'demo2d.zip'}); pass --force to replace it"
    )
    assert _run(capsys, "models", "install", package, "--models-dir", models, "--force")[0] == 0


def test_install_checks_the_package_first(package, tmp_path, capsys):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, data + b" " if name == "config.json" else data)
    rc, _, err = _run(capsys, "models", "install", bad, "--models-dir", tmp_path / "models")
    assert rc == 2 and "config.json does not match its sha256" in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b", "x.zip"])
def test_bad_names_are_refused(package, tmp_path, capsys, name):
    rc, _, err = _run(capsys, "models", "install", package, "--name", name, "--models-dir", tmp_path / "m")
    assert rc == 2 and err.startswith("error: --name:") and len(err.strip().splitlines()) == 1


def test_unknown_names_are_one_line_errors(package, tmp_path, capsys):
    models = tmp_path / "models"
    _run(capsys, "models", "install", package, "--name", "known", "--models-dir", models)
    rc, _, err = _run(capsys, "predict", FIX / "ct.nii.gz", "--model", "nosuch", "--models-dir", models,
                      "-o", tmp_path / "out", "-q")  # fmt: skip
    assert rc == 2 and err.strip() == (
        f"error: nosuch: no such checkpoint or run folder, and no installed model of this name "
        f"(installed in {models}: known)"
    )
    rc, _, err = _run(capsys, "models", "remove", "nosuch", "--models-dir", models)
    assert rc == 2 and "no installed model of this name" in err


def test_a_path_wins_over_an_installed_name(package, tmp_path, monkeypatch):
    models = tmp_path / "models"
    store.install(package, "ct.nii.gz", models)  # a name that is also an existing file here
    monkeypatch.chdir(FIX)
    assert store.resolve_model("ct.nii.gz", models) == Path("ct.nii.gz")
    assert store.resolve_model("demo2d.ckpt", models) == Path("demo2d.ckpt")


def test_the_default_folder_is_the_users_data_folder(monkeypatch):
    monkeypatch.undo()  # the real function, only asked where it points
    path = store.default_models_dir()
    assert path.name == "models" and "lungtumor" in path.parts
