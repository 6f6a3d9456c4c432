"""Preprocessing round trips, the cache format, splits and resumability."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import lungtumor.preprocessing.cache_writer as write_mod
import lungtumor.preprocessing.frame as geom_mod
from lungtumor.core.config import PrepConfig
from lungtumor.core.errors import InputError
from lungtumor.core.presets import preset
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.frame import (
    PrepGeometry,
    preprocess_mask,
    preprocess_volume,
    restore_geometry,
    restore_mask,
)
from lungtumor.preprocessing.prepare import make_splits, prepare_dataset

RECIPES = {
    "seed2d": preset("seed2d").prep,
    "default": PrepConfig(),
    "default_crop": PrepConfig(spacing_mm=0.5, size=(128, 128)),  # field of view cropped
}
STATS = {"mean": -500.0, "std": 400.0}


def _grid(shape, spacing):
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing[::-1], strict=True))
    return np.meshgrid(z, y, x, indexing="ij")


def _ct_with_sphere(shape=(40, 180, 200), spacing=(0.8, 0.75, 2.0), radius_mm=10.0, direction=None):
    """Smooth CT-like HU (body ellipse, lung-dark inside) and a {0,1} sphere of ``radius_mm``."""
    zz, yy, xx = _grid(shape, spacing)
    cz, cy, cx = (n * s / 2 for n, s in zip(shape, spacing[::-1], strict=True))
    r = np.sqrt((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2)
    body = ((yy - cy) / (0.45 * shape[1] * spacing[1])) ** 2 + (
        (xx - cx) / (0.45 * shape[2] * spacing[0])
    ) ** 2
    hu = np.where(body < 1, -800.0 + 200 * np.cos(xx / 15.0) * np.sin(yy / 20.0), -1000.0)
    hu = hu + 850.0 * np.exp(-(r**2) / (2 * (radius_mm / 2) ** 2))
    mask = (r <= radius_mm).astype(np.uint8)
    kw = {"direction": direction} if direction else {}
    return Volume(hu.astype(np.float32), spacing=spacing, origin=(-80.0, -70.0, -40.0), **kw), mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("name", list(RECIPES))
def test_shapes_and_geometry(name: str) -> None:
    p = RECIPES[name]
    vol, mask = _ct_with_sphere()
    x, geom = preprocess_volume(vol, p, STATS)
    assert x.dtype == np.float32 and x.shape == (40, *p.size)
    assert geom.orig_shape == (40, 180, 200) and geom.size == tuple(p.size)
    assert PrepGeometry.from_dict(json.loads(json.dumps(geom.to_dict()))) == geom
    seg = preprocess_mask(mask, geom)
    assert seg.dtype == np.uint8 and seg.shape == x.shape and set(np.unique(seg)) == {0, 1}
    back = restore_geometry(x, geom)
    assert back.dtype == np.float32 and back.shape == vol.shape


def test_spacing_recipe_resamples_to_target() -> None:
    vol, _ = _ct_with_sphere(shape=(4, 180, 200), spacing=(0.8, 0.75, 2.0))
    _, geom = preprocess_volume(vol, PrepConfig(spacing_mm=1.5), STATS)
    assert geom.resized == (90, 107)  # 180*0.75/1.5, 200*0.8/1.5
    assert geom.offset == ((256 - 90) // 2, (256 - 107) // 2)


def test_normalisation_values() -> None:
    vol, _ = _ct_with_sphere(shape=(3, 64, 64), spacing=(1.5, 1.5, 2.0))
    p = PrepConfig(size=(64, 64))  # already at 1.5 mm: no resampling, no padding
    x, _ = preprocess_volume(vol, p, STATS)
    expect = (np.clip(vol.array, -1000, 500) - np.float32(-500.0)) / np.float32(400.0)
    np.testing.assert_allclose(x, expect, rtol=1e-6, atol=1e-6)
    xd, _ = preprocess_volume(vol, PrepConfig(norm="divide", size=(64, 64)), None)
    np.testing.assert_allclose(xd, vol.array / 3071.0, rtol=1e-6)
    with pytest.raises(ValueError, match="stats"):
        preprocess_volume(vol, p, None)


@pytest.mark.parametrize("name", list(RECIPES))
def test_integer_and_float_input_agree(name: str) -> None:
    vol, _ = _ct_with_sphere(shape=(5, 60, 70))
    vi = vol.with_array(np.round(vol.array).astype(np.int16))
    vf = vol.with_array(vi.array.astype(np.float32))
    np.testing.assert_array_equal(
        preprocess_volume(vi, RECIPES[name], STATS)[0], preprocess_volume(vf, RECIPES[name], STATS)[0]
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_restore_of_smooth_blob_is_close(name: str) -> None:
    p = RECIPES[name]
    vol, _ = _ct_with_sphere(radius_mm=12.0)
    zz, yy, xx = _grid(vol.shape, vol.spacing)
    blob = np.exp(-((yy - 70) ** 2 + (xx - 75) ** 2) / (2 * 15.0**2)).astype(np.float32)
    _, geom = preprocess_volume(vol, p, STATS)
    # resample the blob like an image (bilinear), then map it back
    prepared = geom_mod._prepared_hu(vol.with_array(blob), PrepConfig(**{**p.__dict__, "norm": "divide"}))[0]
    prepared[prepared == -1000.0] = 0.0  # padding value of the helper
    back = restore_geometry(prepared, geom)
    inside = np.ones_like(blob, bool)
    if name == "default_crop":  # only the field of view survives; elsewhere restore gives 0
        h, w = geom.resized
        oy, ox = geom.offset
        ys = slice(int(np.ceil(-oy * vol.shape[1] / h)) + 1, int((-oy + 128) * vol.shape[1] / h) - 1)
        xs = slice(int(np.ceil(-ox * vol.shape[2] / w)) + 1, int((-ox + 128) * vol.shape[2] / w) - 1)
        inside[:] = False
        inside[:, ys, xs] = True
        assert np.abs(back[~inside]).max() <= 1.0
        assert back[:, 0, 0].max() == 0.0
    assert np.abs(back - blob)[inside].max() < 0.02


@pytest.mark.parametrize("name", ["seed2d", "default"])
def test_mask_roundtrip_dice_20mm_sphere(name: str) -> None:
    p = RECIPES[name]
    vol, mask = _ct_with_sphere(radius_mm=10.0)
    _, geom = preprocess_volume(vol, p, STATS)
    seg = preprocess_mask(mask, geom)
    back = restore_geometry(seg.astype(np.float32), geom) > 0.5
    assert _dice(back, mask.astype(bool)) > 0.9


@pytest.mark.parametrize("name", list(RECIPES))
def test_restore_mask_is_the_thresholded_restore(name: str) -> None:
    """The chunked restore + threshold of predict equals thresholding the full restored map, bit for bit."""
    chunk = geom_mod.CHUNK
    z = 2 * chunk + 3  # two full chunks and a partial one
    vol, _ = _ct_with_sphere(shape=(z, 90, 100), spacing=(0.8, 0.75, 2.0))
    _, geom = preprocess_volume(vol, RECIPES[name], STATS)
    prob = np.random.default_rng(4).random((z, *geom.size), dtype=np.float32)
    full = restore_geometry(prob, geom)
    t = float(np.sort(full, axis=None)[full.size // 2])  # a value that occurs: ties (>=) count
    expect = full >= t
    mask = restore_mask(prob, geom, t)
    assert mask.dtype == np.uint8 and mask.shape == vol.shape
    np.testing.assert_array_equal(mask, expect.view(np.uint8))
    # the check can see chunking mistakes: every slice's mask differs from its neighbours', both classes
    # occur in every slice (a chunk misplaced, dropped or left unwritten would not match)
    assert all(not np.array_equal(expect[k], expect[k + 1]) for k in range(z - 1))
    assert expect.any(axis=(1, 2)).all() and (~expect).any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match="prepared shape"):
        restore_mask(prob[:-1], geom, t)


def test_non_identity_direction_keeps_array_axes() -> None:
    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    vol, mask = _ct_with_sphere(direction=rot)
    ref, _ = _ct_with_sphere()
    x1, g1 = preprocess_volume(vol, RECIPES["default"], STATS)
    x2, g2 = preprocess_volume(ref, RECIPES["default"], STATS)
    np.testing.assert_array_equal(x1, x2)  # voxel-space resize: direction does not matter
    assert g1 == g2


# ----------------------------------------------------------------------------- splits


def test_splits_seed_proportions_and_folds() -> None:
    names = [f"lung_{i:03d}" for i in range(64)]
    s = make_splits(names, folds=5, seed=7)
    assert len(s["train"]) == 58 and len(s["val"]) == 6
    assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == set(names)
    vals = [n for f in s["folds"] for n in f["val"]]
    assert len(s["folds"]) == 5 and sorted(vals) == sorted(names)  # every patient in exactly one fold's val
    for f in s["folds"]:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 64
    assert make_splits(names, folds=5, seed=7) == s
    assert make_splits(names, folds=5, seed=8)["val"] != s["val"]
    assert len(make_splits(names[:5])["val"]) == 1
    assert len(make_splits(names[:3], folds=5)["folds"]) == 3


# ----------------------------------------------------------------------------- the cache


def _dataset(root: Path, n: int = 4) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        vol, mask = _ct_with_sphere(shape=(12 + i, 60, 70), spacing=(1.2, 1.1, 2.5), radius_mm=6.0 + i)
        vol = vol.with_array(np.round(vol.array).astype(np.int16))
        write_volume(vol, root / "imagesTr" / f"case_{i}.nii.gz")
        write_volume(vol.with_array(mask), root / "labelsTr" / f"case_{i}.nii.gz")
    return root


def _snapshot(out: Path) -> dict[str, bytes]:
    files = [*sorted((out / "cases").iterdir()), out / "cache.json", out / "splits.json"]
    return {f.name: f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("ds") / "data")


def test_cache_format(small_ds: Path, tmp_path: Path) -> None:
    from lungtumor.imaging.io import read_mask, read_volume

    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "c", p, folds=2, seed=1)
    cache = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert cache["version"] == 1 and cache["complete"] is True and cache["prep"]["size"] == [64, 64]
    # stats: mean/std of the clipped, resampled HU of all training cases
    hus = [geom_mod._prepared_hu(read_volume(small_ds / f"imagesTr/case_{i}.nii.gz"), p) for i in range(4)]
    # (a deterministic 1-in-8 subsample: even slices, rows and columns of the resized, unpadded HU)
    vals = np.concatenate(
        [
            h[
                ::2,
                g.offset[0] : g.offset[0] + g.resized[0] : 2,
                g.offset[1] : g.offset[1] + g.resized[1] : 2,
            ].ravel()
            for h, g in hus
        ]
    )
    assert cache["stats"]["mean"] == pytest.approx(vals.mean(dtype=np.float64), rel=1e-6)
    assert cache["stats"]["std"] == pytest.approx(vals.std(dtype=np.float64), rel=1e-5)
    n_t = n_s = 0
    for i, e in enumerate(cache["cases"]):
        img = np.load(tmp_path / "c" / "cases" / f"{e['name']}_img.npy", mmap_mode="r")
        seg = np.load(tmp_path / "c" / "cases" / f"{e['name']}_seg.npy", mmap_mode="r")
        assert isinstance(img, np.memmap) and img.dtype == np.float16 and seg.dtype == np.uint8
        assert list(img.shape) == e["prepared_shape"] == [12 + i, 64, 64] == list(seg.shape)
        assert e["orig_shape"] == [12 + i, 60, 70] and e["n_slices"] == 12 + i
        assert e["orig_spacing"] == pytest.approx([1.2, 1.1, 2.5])
        assert (
            e["tumour_slices"] == [int(k) for k in np.flatnonzero(seg.any(axis=(1, 2)))]
            and e["tumour_slices"]
        )
        vol = read_volume(small_ds / f"imagesTr/{e['name']}.nii.gz")
        mask = read_mask(small_ds / f"labelsTr/{e['name']}.nii.gz")
        assert e["tumour_ml"] == pytest.approx(mask.array.sum() * vol.voxel_volume_mm3 / 1000)
        # exactly what predict computes with the stored stats
        x, geom = preprocess_volume(vol, p, cache["stats"])
        np.testing.assert_array_equal(img, x.astype(np.float16))
        np.testing.assert_array_equal(seg, preprocess_mask(mask.array, geom))
        n_t += len(e["tumour_slices"])
        n_s += e["n_slices"]
    assert cache["tumour_slice_fraction"] == pytest.approx(n_t / n_s)
    splits = json.loads((tmp_path / "c" / "splits.json").read_text())
    assert splits["seed"] == 1 and len(splits["val"]) == 1 and len(splits["folds"]) == 2


def test_cases_stored_in_another_orientation_give_the_same_cache(small_ds: Path, tmp_path: Path) -> None:
    """Training data in any array order is prepared as predict sees it: axial slices in LPS order."""
    import SimpleITK as sitk

    other = tmp_path / "other"
    for sub in ("imagesTr", "labelsTr"):
        (other / sub).mkdir(parents=True)
        for f in sorted((small_ds / sub).iterdir()):  # RAS storage: the array flipped along x and y
            sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(f)), (True, True, False)), str(other / sub / f.name))
    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "a", p, folds=0, seed=1)
    prepare_dataset(other, tmp_path / "b", p, folds=0, seed=1)
    a, b = (json.loads((tmp_path / k / "cache.json").read_text()) for k in ("a", "b"))
    assert a["stats"] == b["stats"] and a["cases"] == b["cases"]
    for e in a["cases"]:
        for kind in ("img", "seg"):
            name = f"{e['name']}_{kind}.npy"
            np.testing.assert_array_equal(
                np.load(tmp_path / "a/cases" / name), np.load(tmp_path / "b/cases" / name)
            )


def test_divide_recipe_stats(small_ds: Path, tmp_path: Path) -> None:
    prepare_dataset(small_ds, tmp_path / "c", preset("seed2d").prep, folds=0)
    cache = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert cache["stats"] == {"mean": 0.0, "std": 3071.0}
    assert json.loads((tmp_path / "c" / "splits.json").read_text())["folds"] == []


def test_resume_after_kill_is_byte_identical(small_ds: Path, tmp_path: Path, monkeypatch) -> None:
    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "ref", p)
    ref = _snapshot(tmp_path / "ref")

    for kill_at in (3, 6):  # during the read pass, then during the normalise pass
        out = tmp_path / f"killed{kill_at}"
        real_save = write_mod.save_npy
        calls = {"n": 0}

        def dying_save(path, arr, calls=calls, kill_at=kill_at, real_save=real_save):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt
            real_save(path, arr)

        monkeypatch.setattr(write_mod, "save_npy", dying_save)
        with pytest.raises(KeyboardInterrupt):
            prepare_dataset(small_ds, out, p, memory_budget=0 if kill_at == 6 else 1 << 30)
        monkeypatch.setattr(write_mod, "save_npy", real_save)
        assert not (out / "cache.json").exists()
        assert not [f for f in (out / "cases").iterdir() if f.name.startswith(".tmp")]
        summary = prepare_dataset(small_ds, out, p)
        assert "reused" in summary
        assert _snapshot(out) == ref

    # a complete cache is not read again
    summary = prepare_dataset(small_ds, tmp_path / "ref", p)
    assert "(0 read, 4 reused)" in summary
    assert _snapshot(tmp_path / "ref") == ref


def test_spill_to_disk_gives_same_bytes(small_ds: Path, tmp_path: Path) -> None:
    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "a", p)
    prepare_dataset(small_ds, tmp_path / "b", p, memory_budget=0)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    assert not list((tmp_path / "b" / ".state").glob("*_hu.npy"))  # spill files are removed


def test_changed_case_is_redone(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", n=3)
    p = PrepConfig(size=(64, 64))
    prepare_dataset(ds, tmp_path / "c", p)
    vol, mask = _ct_with_sphere(shape=(9, 60, 70), spacing=(1.2, 1.1, 2.5), radius_mm=5.0)
    write_volume(
        vol.with_array(np.round(vol.array).astype(np.int16) + 100), ds / "imagesTr" / "case_1.nii.gz"
    )
    write_volume(vol.with_array(mask), ds / "labelsTr" / "case_1.nii.gz")
    prepare_dataset(ds, tmp_path / "c", p)  # new stats: the other cases are normalised again
    prepare_dataset(ds, tmp_path / "fresh", p)
    assert _snapshot(tmp_path / "c") == _snapshot(tmp_path / "fresh")


# ----------------------------------------------------------------------------- worker processes


def test_workers_give_the_same_bytes(small_ds: Path, tmp_path: Path) -> None:
    import multiprocessing as mp

    for p in (PrepConfig(size=(64, 64)), preset("seed2d").prep):
        one = prepare_dataset(small_ds, tmp_path / "one", p, workers=1)
        two = prepare_dataset(small_ds, tmp_path / "two", p, workers=2)
        assert "(4 read, 0 reused)" in one and "(4 read, 0 reused)" in two
        assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")
        prepare_dataset(small_ds, tmp_path / "spill", p, workers=3, memory_budget=0)
        assert _snapshot(tmp_path / "spill") == _snapshot(tmp_path / "one")
        assert not list((tmp_path / "spill" / ".state").glob("*_raw.npy"))
        assert "(0 read, 4 reused)" in prepare_dataset(small_ds, tmp_path / "two", p, workers=2)
        for d in ("one", "two", "spill"):
            shutil.rmtree(tmp_path / d)
    assert not mp.active_children()


@pytest.mark.parametrize("bad", [0, 3])
def test_worker_error_is_one_input_error(tmp_path: Path, bad: int) -> None:
    import multiprocessing as mp

    ds = _dataset(tmp_path / "ds")
    f = ds / "imagesTr" / f"case_{bad}.nii.gz"
    f.write_bytes(f.read_bytes()[:-200])  # truncated
    with pytest.raises(InputError, match=f"case_{bad}.nii.gz"):
        prepare_dataset(ds, tmp_path / "c", PrepConfig(size=(64, 64)), workers=2)
    assert not (tmp_path / "c").exists() and not mp.active_children()


def test_kill_in_writing_pass_with_workers(small_ds: Path, tmp_path: Path, monkeypatch) -> None:
    import os

    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "ref", p, workers=1)
    parent, real_finish = os.getpid(), write_mod.Writer.finish

    def dying_finish(self, case, st, stats):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return real_finish(self, case, st, stats)

    monkeypatch.setattr(write_mod.Writer, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(small_ds, tmp_path / "c", p, workers=2)
    monkeypatch.setattr(write_mod.Writer, "finish", real_finish)
    assert not (tmp_path / "c" / "cache.json").exists()
    assert not [
        f for d in ("cases", ".state") for f in (tmp_path / "c" / d).iterdir() if f.name.startswith(".tmp")
    ]
    prepare_dataset(small_ds, tmp_path / "c", p, workers=2)  # unfinished cases are read again
    assert _snapshot(tmp_path / "c") == _snapshot(tmp_path / "ref")


def test_kill_while_writing_images(small_ds: Path, tmp_path: Path, monkeypatch) -> None:
    p = PrepConfig(size=(64, 64))
    prepare_dataset(small_ds, tmp_path / "ref", p)
    real = write_mod._save_npy_chunks
    calls = {"n": 0}

    def dying(path, shape, dtype, chunks):
        calls["n"] += 1
        if calls["n"] == 2:
            next(iter(chunks))
            raise KeyboardInterrupt
        real(path, shape, dtype, chunks)

    monkeypatch.setattr(write_mod, "_save_npy_chunks", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(small_ds, tmp_path / "c", p, workers=1)
    monkeypatch.setattr(write_mod, "_save_npy_chunks", real)
    assert not (tmp_path / "c" / "cache.json").exists()
    summary = prepare_dataset(small_ds, tmp_path / "c", p)
    assert "(3 read, 1 reused)" in summary  # the finished case is kept; held voxels are gone: read again
    assert _snapshot(tmp_path / "c") == _snapshot(tmp_path / "ref")


def test_dataset_json_validation_fixes_the_split(tmp_path):
    names = [f"c{i:02d}" for i in range(10)]
    free = make_splits(names, folds=5, seed=7)
    fixed = make_splits(names, folds=5, seed=7, fixed_val=["c09", "c03"])
    assert fixed["val"] == ["c03", "c09"] and set(fixed["train"]) == set(names) - {"c03", "c09"}
    assert fixed["folds"] == free["folds"]  # cross-validation folds are drawn as always
    assert make_splits(names, 2, fixed_val=["c09", "c03"])["val"] == ["c03", "c09"]
    with pytest.raises(InputError, match="fixes 2 validation cases"):
        make_splits(names, 3, fixed_val=["c09", "c03"])

    from lungtumor.data.msd import load_dataset

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for n in ("a", "b", "c"):
        for d in ("imagesTr", "labelsTr"):
            (root / d / f"{n}.nii.gz").write_bytes(b"")
    train = [{"image": f"imagesTr/{n}.nii.gz", "label": f"labelsTr/{n}.nii.gz"} for n in ("a", "b", "c")]
    for val, msg in ((["z"], "'z', which is not a training case"), (["a", "a"], "distinct"),
                     (["a", "b", "c"], "at least one for training"), ("a", "list of training case names")):  # fmt: skip
        (root / "dataset.json").write_text(json.dumps({"training": train, "validation": val}))
        with pytest.raises(InputError, match=msg):
            load_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"training": train, "validation": ["c"]}))
    assert load_dataset(root).validation == ["c"]
