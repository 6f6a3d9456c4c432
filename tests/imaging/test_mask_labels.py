"""read_mask on multi-label masks: ``label=N`` picks the tumour; without it the error suggests the option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungtumor.core.errors import InputError
from lungtumor.imaging.io import read_mask, write_volume
from lungtumor.imaging.volume import Volume

SPACING = (0.8, 0.8, 2.5)


def _multi(tmp_path: Path, dtype=np.uint8) -> tuple[Path, np.ndarray]:
    a = np.zeros((4, 8, 8), dtype)
    a[1, 2:4, 2:4] = 1  # e.g. a lung
    a[2, 5:7, 5:7] = 5  # the GTV
    return write_volume(Volume(a, spacing=SPACING), tmp_path / "ml.nii.gz"), a


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_label_selects_voxels_equal_to_it(tmp_path: Path, dtype) -> None:
    path, a = _multi(tmp_path, dtype)
    m = read_mask(path, label=5)
    assert m.array.dtype == np.uint8 and np.array_equal(m.array, (a == 5).astype(np.uint8))
    assert read_mask(path, label=1).array.sum() == 4
    assert read_mask(path, label=7).array.sum() == 0  # a label the mask does not hold: empty, not an error


def test_multi_label_error_suggests_the_option_only_when_asked(tmp_path: Path) -> None:
    path, _ = _multi(tmp_path)
    with pytest.raises(InputError) as e:
        read_mask(path)
    assert str(e.value).endswith("label has values {0, 1, 5}; expected 0 and 1")  # check, prepare: no option
    with pytest.raises(InputError, match=r"expected 0 and 1 \(a multi-label mask: .* with --pred-label N\)"):
        read_mask(path, label_option="--pred-label")
    with pytest.raises(InputError, match="--label: must be a label value of 1 or more, got 0"):
        read_mask(path, label=0)


def test_probability_map_gets_no_label_hint(tmp_path: Path) -> None:
    a = np.zeros((4, 8, 8), np.float32)
    a[1, 1, 1] = 0.5
    path = write_volume(Volume(a, spacing=SPACING), tmp_path / "prob.nii.gz")
    with pytest.raises(InputError) as e:
        read_mask(path, label_option="--label")
    assert "non-binary values {0, 0.5}" in str(e.value) and "--label" not in str(e.value)


def test_label_keeps_the_grid_check(tmp_path: Path) -> None:
    path, a = _multi(tmp_path)
    other = Volume(np.zeros((4, 8, 9), np.int16), spacing=SPACING)
    with pytest.raises(InputError, match="not on the image grid"):
        read_mask(path, reference=other, label=5)
    same = Volume(np.zeros(a.shape, np.int16), spacing=SPACING)
    assert read_mask(path, reference=same, label=5).array.sum() == 4
