"""The detector's training cubes come from the canonical HU of the cache's source CTs, not from the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lungtumor.core.config import NoduleConfig, PrepConfig
from lungtumor.core.errors import InputError
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.inference.detector import PATCH_HU, candidates_on_grid
from lungtumor.preprocessing.detector_grid import hu_on_detector_grid
from lungtumor.preprocessing.frame import frame_spacing, geometry
from lungtumor.preprocessing.prepare import prepare_dataset
from lungtumor.training.detector import cache_patches, source_images

PREP = PrepConfig(resize="spacing", spacing_mm=2.0, size=(40, 40))
CFG = NoduleConfig(patch=8)


def _chest(seed: int) -> tuple[Volume, np.ndarray]:
    """Soft tissue with two lungs, a 9 mm nodule in the left one and a bone bar (1200 HU); 1.5 mm voxels, so
    the detector's 2 mm grid differs from the stored one."""
    shape = (24, 50, 50)
    hu = np.full(shape, 40, np.int16)
    hu[4:20, 8:42, 5:22] = -850
    hu[4:20, 8:42, 28:45] = -850
    hu[:, 45:48, 10:40] = 1200
    z, y, x = np.indices(shape)
    c = (12, 25 + seed, 13)
    nodule = (((z - c[0]) * 1.5) ** 2 + ((y - c[1]) * 1.5) ** 2 + ((x - c[2]) * 1.5) ** 2) <= 4.5**2
    hu[nodule] = 30
    return Volume(hu, spacing=(1.5, 1.5, 1.5)), nodule.astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("det")
    for sub in ("imagesTr", "labelsTr"):
        (root / "data" / sub).mkdir(parents=True)
    for i in range(2):
        vol, mask = _chest(i)
        write_volume(vol, root / "data" / "imagesTr" / f"c{i}.nii.gz")
        write_volume(vol.with_array(mask), root / "data" / "labelsTr" / f"c{i}.nii.gz")
    prepare_dataset(root / "data", root / "cache", PREP, val_cases=1, folds=0, workers=1)
    return root


def test_cubes_are_cut_from_the_source_ct_on_the_detector_grid(prepared):
    ps = cache_patches(prepared / "cache", ["c0"], CFG, workers=1)
    vol, _ = _chest(0)
    geom = geometry(vol, PREP)
    grid = hu_on_detector_grid(vol.array, geom, frame_spacing(geom, vol.spacing), CFG.spacing_mm)
    centres = candidates_on_grid(grid, CFG)
    assert len(ps.lesion) == len(centres) > 0 and (ps.lesion >= 0).any()  # the nodule gives a candidate
    padded = np.pad(np.clip(grid, *PATCH_HU), 4, constant_values=PATCH_HU[0]).astype(np.float16)
    for k, (z, y, x) in enumerate(centres):
        assert np.array_equal(ps.hu[k], padded[z : z + 8, y : y + 8, x : x + 8])


def test_a_missing_or_changed_source_is_a_one_line_error(prepared, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(prepared / "cache", cache)
    meta = json.loads((cache / "cache.json").read_text())
    assert source_images(cache, meta["source"], ["c0"]) == {
        "c0": prepared / "data" / "imagesTr" / "c0.nii.gz"
    }
    with pytest.raises(InputError, match=r"cache\.json: names no source dataset"):
        source_images(cache, None, ["c0"])
    data = tmp_path / "data"
    shutil.copytree(prepared / "data", data)
    meta["source"]["path"] = str(data)
    (cache / "cache.json").write_text(json.dumps(meta))
    vol, mask = _chest(0)
    write_volume(Volume(vol.array[:20], spacing=vol.spacing), data / "imagesTr" / "c0.nii.gz")
    for workers in (1, 2):  # in a worker process too: the error crosses back to the parent intact
        with pytest.raises(InputError, match=r"c0\.nii\.gz: changed since the cache was prepared"):
            cache_patches(cache, ["c0", "c1"], CFG, workers=workers)
    shutil.rmtree(data)
    with pytest.raises(InputError, match=r"cache\.json: its source dataset .* cannot be read"):
        cache_patches(cache, ["c0"], CFG, workers=1)


def test_train_with_the_detector_checks_the_source_before_the_2d_model(prepared, tmp_path):
    from lungtumor.core.config_io import load_config
    from lungtumor.training.run import train

    cache = tmp_path / "cache"
    shutil.copytree(prepared / "cache", cache)
    meta = json.loads((cache / "cache.json").read_text())
    meta["source"]["path"] = str(tmp_path / "gone")
    (cache / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="source dataset"):
        train(cache, tmp_path / "run", load_config(None, "demo"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
