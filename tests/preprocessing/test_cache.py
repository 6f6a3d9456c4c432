"""One cache reader for both kinds: 2D and 3D caches open through ``Cache.open`` with the same interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungtumor.core.config_io import load_config
from lungtumor.core.errors import InputError
from lungtumor.data.phantom import synth_dataset
from lungtumor.preprocessing.cache import Cache, check_split
from lungtumor.preprocessing.prepare import prepare_dataset
from lungtumor.preprocessing.prepare3d import prepare_dataset_3d


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("caches")
    ds = root / "ds"
    synth_dataset(ds, n_train=3, n_test=0, seed=2, matrix=64, slices=16, workers=1)
    c2 = load_config(None, "demo")
    c2.prep.size = (64, 64)
    prepare_dataset(ds, root / "c2", c2.prep, val_cases=1, folds=0, progress=False, workers=1)
    c3 = load_config(None, "3d")
    c3.vol3d.target_spacing = (2.0, 2.0, 2.5)
    prepare_dataset_3d(ds, root / "c3", c3.vol3d, val_cases=1, folds=0, progress=False)
    return root / "c2", root / "c3"


def test_both_kinds_open_with_one_interface(caches) -> None:
    for root, kind in zip(caches, ("2d", "3d"), strict=True):
        cache = Cache.open(root)
        assert cache.kind == kind and len(cache.train) == 2 and len(cache.val) == 1
        for name in cache.train + cache.val:
            img, seg = cache.image(name), cache.seg(name)
            assert img.shape == seg.shape == cache.cases[name].shape == cache.shapes[name]
            assert img.dtype == np.float16 and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
        assert cache.stats and (cache.spacing is None) == (kind == "2d")
        assert cache.prep.get("kind", "2d") == kind
    c3 = Cache.open(caches[1], "3d")
    for name in c3.train + c3.val:
        fg = c3.array(name, "fg")  # tumour voxel indices (none in a tumour-free case)
        assert fg.ndim == 2 and fg.shape[1] == 3 and all(c3.seg(name)[tuple(i)] == 1 for i in fg[:50])
        assert (len(fg) > 0) == bool(c3.seg(name).any())
    c3.load_into_memory([name])
    assert not isinstance(c3.image(name), np.memmap)


def test_a_cache_of_the_other_kind_is_refused_in_one_line(caches) -> None:
    c2, c3 = caches
    with pytest.raises(InputError, match="not a 3D cache"):
        Cache.open(c2, "3d")
    with pytest.raises(InputError, match="a 3D cache; train it with the 3D recipe"):
        Cache.open(c3, "2d")


def test_a_cache_without_kind_is_2d_and_a_wrong_array_shape_names_the_file(caches, tmp_path) -> None:
    import shutil

    root = tmp_path / "old"
    shutil.copytree(caches[0], root)
    meta = json.loads((root / "cache.json").read_text())
    meta.pop("kind", None)  # caches written before the kind was named
    (root / "cache.json").write_text(json.dumps(meta))
    cache = Cache.open(root, "2d")
    name = cache.train[0]
    np.save(root / "cases" / f"{name}_seg.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match=f"{name}_seg.npy: shape \\(3, 4, 4\\) differs from cache.json"):
        Cache.open(root).seg(name)


def test_check_split_names_the_problem(caches) -> None:
    cache = Cache.open(caches[1])
    with pytest.raises(InputError, match="case 'nope' is not in cache.json"):
        check_split(cache, ["nope"], cache.val)
    with pytest.raises(InputError, match="no validation cases"):
        check_split(cache, cache.train, [])
