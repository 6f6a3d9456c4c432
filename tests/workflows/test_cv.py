"""Cross-validation: patient folds, the postprocessing choice, and a tiny end-to-end `lungtumor cv`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungtumor.preprocessing.prepare import make_splits
from lungtumor.workflows.cv import _box, choose_postprocessing


@pytest.mark.parametrize("n,k", [(10, 5), (7, 3), (3, 5)])
def test_folds_partition_patients(n, k):
    names = [f"p{i:02d}" for i in range(n)]
    folds = make_splits(names, folds=k, seed=3)["folds"]
    vals = [set(f["val"]) for f in folds]
    assert len(folds) == min(k, n)
    assert sum(len(v) for v in vals) == n and set().union(*vals) == set(
        names
    )  # disjoint, union is everything
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and set(f["train"]) | set(f["val"]) == set(names)


def _ball(shape, c, r):
    z, y, x = np.indices(shape)
    return (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r).astype(np.uint8)


def test_min_size_chosen_when_it_removes_false_positives():
    sp = (1.0, 1.0, 1.0)
    cases = []
    for i in range(4):
        gt = _ball((24, 24, 24), (12, 12, 12), 5)
        pred = gt.copy()
        pred[2 + i, 2, 2] = 1  # one-voxel false positives far from the tumour
        pred[20, 20, 2 + i] = 1
        cases.append((pred, gt, sp, None))
    ch = choose_postprocessing(cases)
    assert ch.min_lesion_mm3 > 0 and not ch.lung_gate and ch.dice_chosen > ch.dice_raw


def test_min_size_not_chosen_when_it_removes_true_lesions():
    sp = (1.0, 1.0, 1.0)
    cases = []
    for _ in range(3):
        gt = _ball((24, 24, 24), (12, 12, 12), 2)  # a 33-voxel lesion: every size filter >= 50 mm3 deletes it
        cases.append((gt.copy(), gt, sp, None))
    ch = choose_postprocessing(cases)
    assert ch.min_lesion_mm3 == 0 and not ch.lung_gate and ch.dice_chosen == ch.dice_raw == 1.0


def test_lung_gate_chosen_only_when_it_helps():
    sp = (1.0, 1.0, 1.0)
    gt = _ball((24, 24, 24), (8, 8, 8), 4)
    fp = _ball((24, 24, 24), (18, 18, 18), 4)
    lung = np.zeros((24, 24, 24), bool)
    lung[:13, :13, :13] = True
    ch = choose_postprocessing([((gt | fp).astype(np.uint8), gt, sp, lung)])
    assert ch.lung_gate and ch.dice_chosen == 1.0
    ch2 = choose_postprocessing([(gt.copy(), gt, sp, lung)])
    assert not ch2.lung_gate and ch2.min_lesion_mm3 == 0


def test_box_keeps_everything():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2, 3, 4] = b[7, 8, 1] = 1
    box = _box(a, b)
    assert a[box].sum() == 1 and b[box].sum() == 1
    assert _box(np.zeros_like(a), np.zeros_like(a)) == (slice(0, 1),) * 3


def test_cv_end_to_end_3d_tiny(tmp_path):
    import yaml

    from lungtumor.cli import main
    from lungtumor.imaging.io import write_volume
    from lungtumor.imaging.volume import Volume

    def _phantom(root, name, seed, shape):
        rng = np.random.default_rng(seed)
        ball = _ball(shape, (shape[0] // 2, int(rng.integers(10, 22)), int(rng.integers(10, 22))), 4)
        ct = np.where(ball, 40, -800) + rng.normal(0, 20, shape)
        write_volume(Volume(ct.astype(np.int16), (1.5, 1.5, 2.5)), root / "imagesTr" / f"{name}.nii.gz")
        write_volume(Volume(ball, (1.5, 1.5, 2.5)), root / "labelsTr" / f"{name}.nii.gz")

    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for i in range(4):
        _phantom(ds, f"case_{i:02d}", i, shape=(16, 32, 32))
    cfg = {
        "model": {"base_channels": 4, "depth": 2},
        "train": {"epochs": 1},
        "vol3d": {
            "steps_per_epoch": 2,
            "patch_size": [8, 16, 16],
            "batch_size": 2,
            "target_spacing": [3.0, 3.0, 2.5],
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cv"
    rc = main(["cv", str(ds), "--folds", "2", "--preset", "3d", "--config", str(tmp_path / "tiny.yaml"),
               "--out", str(out), "-q", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    rows = (out / "cv_cases.csv").read_text().splitlines()
    assert rows[0].startswith("fold,case,dice_raw,dice") and len(rows) == 5
    assert "lesions" not in rows[0].split(",")  # per-lesion rows are not squeezed into a case cell
    les = (out / "cv_lesions.csv").read_text().splitlines()
    assert les[0].startswith("fold,case,lesion,volume_ml") and len(les) > 1
    pp = json.loads((out / "postprocessing.json").read_text())
    assert {"min_lesion_mm3", "lung_gate", "mean_dice_raw", "mean_dice_chosen"} <= set(pp)
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and summary["n_cases"] == 4
    from lungtumor.inference.checkpoint import load_any

    loaded = load_any(out / "fold_0")
    assert loaded.config.infer.min_lesion_mm3 == pp["min_lesion_mm3"]
    for k in (0, 1):
        assert (out / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()


def test_flat_filter_chosen_when_only_it_removes_a_one_slice_false_positive():
    sp = (1.0, 1.0, 1.0)
    gt = _ball((40, 40, 40), (10, 10, 10), 5)  # 515 voxels
    disc = np.zeros_like(gt)
    disc[30] = _ball((40, 40, 40), (20, 26, 20), 14)[20]  # one slice, 28 mm wide: more voxels than the tumour
    assert disc.sum() > gt.sum()
    ch = choose_postprocessing([((gt | disc).astype(np.uint8), gt, sp, None)])
    assert ch.min_z_extent_ratio > 0 and ch.min_lesion_mm3 == 0 and ch.dice_chosen == 1.0
    ch2 = choose_postprocessing([(gt.astype(np.uint8), gt, sp, None)])
    assert ch2.min_z_extent_ratio == 0
