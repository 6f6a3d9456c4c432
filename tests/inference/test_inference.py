"""How predict finds its cases (``inference.collect_inputs``) and checks its options, without a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungtumor.core.errors import InputError
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.workflows.predict import PredictOptions, collect_inputs, predict_paths


def _ct(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(Volume(np.zeros((3, 8, 8), np.int16)), path)


def _dicom(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # the preamble marker is what is looked at
    return path


def test_a_folder_gives_its_cts_and_dicom_subfolders_and_names_the_rest(tmp_path):
    _ct(tmp_path / "b.nii.gz")
    _ct(tmp_path / "a.nrrd")
    _dicom(tmp_path / "series1" / "IM0001")  # no suffix: found by its marker
    _ct(tmp_path / "deeper" / "c.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    _ct(tmp_path / "b_tumour.nii.gz")
    _ct(tmp_path / "b_prob.nii.gz")
    skipped: list = []
    cases = collect_inputs([tmp_path], skipped)
    assert [n for n, _ in cases] == ["a", "b", "series1"]
    got = {p.name: why for p, why in skipped}
    assert set(got) == {"deeper", "empty", "readme.md", "b_tumour.nii.gz", "b_prob.nii.gz"}
    assert "sub-folders are not searched" in got["deeper"] and "not a CT image" in got["readme.md"]
    assert "lungtumor output" in got["b_tumour.nii.gz"]
    assert collect_inputs([tmp_path]) == cases  # without the list: the same cases


def test_a_stray_dicom_file_does_not_turn_a_folder_of_cts_into_a_series(tmp_path):
    _ct(tmp_path / "lung_042.nii.gz")
    _dicom(tmp_path / "stray.dcm")
    skipped: list = []
    assert collect_inputs([tmp_path], skipped) == [("lung_042", tmp_path / "lung_042.nii.gz")]
    assert [(p.name, "DICOM file beside other CT images" in w) for p, w in skipped] == [("stray.dcm", True)]
    series = tmp_path / "series"
    for i in range(3):
        _dicom(series / f"{i}.dcm")
    (series / "DICOMDIR.txt").write_text("x")  # a non-image file beside a series: still the series
    assert collect_inputs([series]) == [("series", series)]


def test_a_folder_with_nothing_to_predict_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="folder holds no CT images"):
        collect_inputs([tmp_path])
    with pytest.raises(InputError, match="no such file or folder"):
        collect_inputs([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (PredictOptions(threads=0), "--threads"),
        (PredictOptions(threads=-1), "--threads"),
        (PredictOptions(min_lesion_mm3=float("nan")), "--min-lesion-mm3"),
        (PredictOptions(min_lesion_mm3=-1.0), "--min-lesion-mm3"),
        (PredictOptions(min_z_extent_ratio=float("inf")), "--min-z-extent-ratio"),
        (PredictOptions(threshold=float("nan")), "--threshold"),
        (PredictOptions(batch_size=-2), "--batch-size"),
    ],
)
def test_bad_options_are_input_errors_before_any_output(opts, needle, tmp_path):
    import torch

    from lungtumor.core.config import RunConfig
    from lungtumor.core.config_io import to_dict
    from lungtumor.models import create_model

    cfg = RunConfig()
    net = create_model(cfg.model)
    ck = tmp_path / "m.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"lungtumor": {"config": to_dict(cfg), "stats": {"mean": 0.0, "std": 1.0}}},
        },
        ck,
    )
    ct = _ct(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match=needle):
        predict_paths([ct], ck, tmp_path / "out", opts)
    assert not (tmp_path / "out").exists()
