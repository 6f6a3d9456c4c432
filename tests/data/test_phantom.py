"""Tests of the built-in phantoms (lungtumor.data.phantom)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungtumor.core.errors import InputError
from lungtumor.data.geometry import widen_near_root
from lungtumor.data.lesions import sample_lesion_plan
from lungtumor.data.phantom import build_case, make_case, synth_dataset
from lungtumor.imaging.io import read_mask, read_volume

SOLID = {"juxtapleural": 1, "hilar": 1, "intrapulmonary": 1}


@pytest.fixture(scope="module")
def case():
    return build_case(3, matrix=128, slices=40)


def test_make_case_is_deterministic_and_seeds_differ():
    a_img, a_lab, a_les = make_case(7, matrix=96, slices=24)
    b_img, b_lab, b_les = make_case(7, matrix=96, slices=24)
    c_img, _, _ = make_case(8, matrix=96, slices=24)
    assert np.array_equal(a_img.array, b_img.array)
    assert np.array_equal(a_lab.array, b_lab.array)
    assert a_les == b_les and a_img.spacing == b_img.spacing and a_img.origin == b_img.origin
    assert a_img.shape != c_img.shape or not np.array_equal(a_img.array, c_img.array)


def test_small_case_is_well_formed():
    img, lab, _ = make_case(np.random.default_rng(1), matrix=96, slices=24)
    assert img.shape == (24, 96, 96) and img.array.dtype == np.int16
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) <= {0, 1}
    assert img.same_grid(lab)


def test_hu_ranges_by_tissue(case):
    a = case.image.array
    parenchyma = case.lung & ~case.vessels & (case.label.array == 0)
    assert abs(np.median(a[parenchyma]) - (-850)) < 60
    assert np.percentile(a[case.bone], 99) > 300
    outside = a[:, :3, :3]
    assert abs(np.median(outside) + 1000) < 30
    assert np.any(a > -200) and a.min() >= -1024


def test_tumour_hu_in_soft_tissue_range():
    plan = [{"diameter_mm": 40.0, "kind": "intrapulmonary", "texture": "solid", "spiculated": False}]
    c = build_case(5, matrix=192, slices=48, plan=plan)
    assert len(c.lesions) == 1
    inner = c.label.array > 0
    from scipy import ndimage as ndi

    core = ndi.binary_erosion(inner, iterations=2)
    assert -20 <= np.median(c.image.array[core]) <= 90
    assert c.lesions[0]["volume_ml"] > 5


def test_spiculated_tumours_are_one_component_each():
    """Thin spicules must not leave detached label fragments (they would count as extra lesions)."""
    from scipy import ndimage as ndi

    plan = [
        {"diameter_mm": 30.0, "kind": "intrapulmonary", "texture": "solid", "spiculated": True},
        {"diameter_mm": 18.0, "kind": "juxtapleural", "texture": "solid", "spiculated": True},
    ]
    for seed in range(3):
        c = build_case(seed, matrix=192, slices=48, plan=plan)
        _, n = ndi.label(c.label.array > 0, structure=np.ones((3, 3, 3), bool))
        assert n == len(c.lesions) >= 1


def test_tumours_lie_in_lungs_and_volumes_match(case):
    lab = case.label.array > 0
    assert np.all(case.lung[lab])
    vv = case.image.voxel_volume_mm3 / 1000.0
    total = sum(les["volume_ml"] for les in case.lesions)
    assert total == pytest.approx(lab.sum() * vv, rel=1e-9)


def test_lesion_plan_has_tumour_free_cases_and_a_size_range():
    plans = [sample_lesion_plan(np.random.default_rng(i)) for i in range(400)]
    free = sum(1 for p in plans if not p) / len(plans)
    assert 0.06 < free < 0.2
    sizes = [les["diameter_mm"] for p in plans for les in p]
    assert min(sizes) < 7 and max(sizes) > 55
    assert max(len(p) for p in plans) == 3
    kinds = {les["kind"] for p in plans for les in p}
    assert kinds == {"juxtapleural", "hilar", "intrapulmonary"}


def test_rich_lesion_plan_has_more_and_smaller_tumours():
    std = [sample_lesion_plan(np.random.default_rng(i)) for i in range(400)]
    rich = [sample_lesion_plan(np.random.default_rng(i), "rich") for i in range(400)]
    mean_n = lambda plans: np.mean([len(p) for p in plans])  # noqa: E731
    assert mean_n(rich) > 2.3 > 1.6 > mean_n(std)
    assert max(len(p) for p in rich) == 5
    small = lambda plans: np.mean([x["diameter_mm"] < 15 for p in plans for x in p])  # noqa: E731
    assert small(rich) > small(std) + 0.05


def _share_resting_on_the_diaphragm(c) -> float:
    """Share of a phantom's tumour columns (y, x) whose lowest tumour voxel has no lung right below it."""
    k, y, x = np.nonzero(c.label.array > 0)
    low: dict = {}
    for kk, yy, xx in zip(k, y, x, strict=True):
        low[(yy, xx)] = min(kk, low.get((yy, xx), kk))
    return float(np.mean([lo > 0 and not c.lung[lo - 1, yy, xx] for (yy, xx), lo in low.items()]))


def test_rich_basal_plan_adds_a_large_mass_on_the_diaphragm_to_some_cases():
    rich = [sample_lesion_plan(np.random.default_rng(i), "rich") for i in range(300)]
    basal = [sample_lesion_plan(np.random.default_rng(i), "rich_basal") for i in range(300)]
    extra = [[x for x in p if x["kind"] == "basal"] for p in basal]
    assert 0.22 < np.mean([len(e) == 1 for e in extra]) < 0.38  # 30 % of the cases, one mass each
    assert all(50 <= x["diameter_mm"] <= 110 for e in extra for x in e)
    assert all(x["kind"] != "basal" for p in rich for x in p)
    for r, b in zip(rich, basal, strict=True):  # the "rich" draws are the same; the mass comes on top
        assert [x for x in b if x["kind"] != "basal"] == r
    plan = [{"diameter_mm": 80.0, "kind": "basal", "texture": "solid", "spiculated": False}]
    c = build_case(3, matrix=96, slices=None, plan=plan)
    assert [x["kind"] for x in c.lesions] == ["basal"] and c.lesions[0]["volume_ml"] > 40
    assert _share_resting_on_the_diaphragm(c) > 0.6  # measured 0.72
    for kind in ("hilar", "juxtapleural"):  # the other sites do not rest on it (measured 0.0 for both)
        other = build_case(3, matrix=96, slices=None, plan=[{**plan[0], "kind": kind}])
        assert _share_resting_on_the_diaphragm(other) < 0.2


def test_widen_near_root_thickens_the_trunk_and_leaves_the_periphery():
    root = np.array([30.0, 0.0, 100.0])
    segs = np.array(
        [[*root, 40.0, 0.0, 100.0, 6.0, 5.8, 0], [140.0, 0.0, 100.0, 160.0, 0.0, 100.0, 1.0, 0.9, 4]]
    )
    out = widen_near_root(segs, root, 1.3, 25.0)
    assert out[0, 6] == pytest.approx(6.0 * 2.3)  # at the root: 1 + boost
    assert out[0, 7] == pytest.approx(5.8 * (1 + 1.3 * np.exp(-10 / 25)))
    assert np.allclose(out[1, 6:8], segs[1, 6:8], rtol=0.02)  # 110 mm out: within 2 %
    assert np.array_equal(out[:, :6], segs[:, :6]) and np.array_equal(segs[0, 6], 6.0)  # a copy


def test_hilar_vessels_change_the_vessels_only(tmp_path: Path):
    a = build_case(4, matrix=96, slices=32, lesion_plan="rich")
    b = build_case(4, matrix=96, slices=32, lesion_plan="rich", hilar_vessels=True)
    assert np.array_equal(a.label.array, b.label.array) and a.lesions == b.lesions  # the same draws
    diff = a.image.array != b.image.array
    assert diff.any()
    assert (b.image.array[diff] >= a.image.array[diff]).mean() > 0.9  # wider vessels: more blood, less air
    kw = dict(n_train=2, n_test=1, seed=5, matrix=64, slices=12, workers=1, val_cases=1)
    synth_dataset(tmp_path / "std", **kw)
    synth_dataset(tmp_path / "hil", train_hilar_vessels=True, **kw)
    std, hil = tmp_path / "std", tmp_path / "hil"
    for rel in ("imagesTs/lung_002.nii.gz", "imagesTr/lung_001.nii.gz", "labelsTr/lung_000.nii.gz"):
        assert (std / rel).read_bytes() == (hil / rel).read_bytes()  # test, validation and every label
    assert (std / "imagesTr/lung_000.nii.gz").read_bytes() != (hil / "imagesTr/lung_000.nii.gz").read_bytes()
    assert json.loads((hil / "lesions.json").read_text())["train_hilar_vessels"] is True
    from lungtumor.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["synth", "OUT"]).train_hilar_vessels is False  # synth: off unless asked
    assert parse(["demo"]).train_hilar_vessels is True  # the demo: on, and can be turned off
    assert parse(["demo", "--no-train-hilar-vessels"]).train_hilar_vessels is False


def test_train_lesions_changes_training_cases_only(tmp_path: Path):
    kw = dict(n_train=2, n_test=1, seed=5, matrix=64, slices=12, workers=1)
    synth_dataset(tmp_path / "std", **kw)
    synth_dataset(tmp_path / "rich", train_lesions="rich", **kw)
    a, b = tmp_path / "std", tmp_path / "rich"
    for rel in ("imagesTs/lung_002.nii.gz", "labelsTs/lung_002.nii.gz"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "labelsTr/lung_000.nii.gz").read_bytes() != (b / "labelsTr/lung_000.nii.gz").read_bytes()
    assert json.loads((b / "lesions.json").read_text())["train_lesions"] == "rich"
    with pytest.raises(InputError, match="unknown plan"):
        synth_dataset(tmp_path / "bad", train_lesions="lots", **kw)
    from lungtumor.cli import build_parser
    from lungtumor.data.lesions import LESION_PLANS

    for cmd in ("synth", "demo"):
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[cmd]
        assert tuple(next(a for a in sub._actions if a.dest == "train_lesions").choices) == LESION_PLANS


def test_val_cases_are_drawn_like_the_test_cases_and_listed(tmp_path: Path):
    kw = dict(n_train=3, n_test=0, seed=5, matrix=64, slices=12, workers=1)
    synth_dataset(tmp_path / "std", **kw)
    synth_dataset(tmp_path / "rich", train_lesions="rich", **kw)
    summary = synth_dataset(tmp_path / "v", train_lesions="rich", val_cases=1, **kw)
    assert "1 of them fixed for validation" in summary
    std, rich, v = tmp_path / "std", tmp_path / "rich", tmp_path / "v"
    for rel in ("imagesTr/lung_000.nii.gz", "labelsTr/lung_001.nii.gz"):  # training cases: rich, unchanged
        assert (v / rel).read_bytes() == (rich / rel).read_bytes()
    for rel in ("imagesTr/lung_002.nii.gz", "labelsTr/lung_002.nii.gz"):  # the validation case: standard
        assert (v / rel).read_bytes() == (std / rel).read_bytes()
        assert (v / rel).read_bytes() != (rich / rel).read_bytes()
    assert json.loads((v / "dataset.json").read_text())["validation"] == ["lung_002"]
    assert "validation" not in json.loads((rich / "dataset.json").read_text())
    from lungtumor.data.msd import load_dataset

    assert load_dataset(v).validation == ["lung_002"]
    from lungtumor.core.config import PrepConfig
    from lungtumor.preprocessing.prepare import prepare_dataset

    prepare_dataset(v, tmp_path / "cache", PrepConfig(size=(64, 64), spacing_mm=3.0), folds=0, workers=1)
    assert json.loads((tmp_path / "cache" / "splits.json").read_text())["val"] == ["lung_002"]
    with pytest.raises(InputError, match="--val-cases"):
        synth_dataset(tmp_path / "bad", val_cases=3, **kw)


def test_synth_dataset_writes_a_valid_task06_dataset(tmp_path: Path):
    out = tmp_path / "ds"
    summary = synth_dataset(out, n_train=2, n_test=1, seed=4, matrix=64, slices=16, workers=1)
    assert "2 training + 1 test" in summary
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["modality"] == {"0": "CT"} and ds["labels"] == {"0": "background", "1": "tumour"}
    assert ds["numTraining"] == 2 and ds["numTest"] == 1
    assert ds["training"][0] == {"image": "./imagesTr/lung_000.nii.gz", "label": "./labelsTr/lung_000.nii.gz"}
    for item in ds["training"]:
        assert (out / item["image"]).is_file() and (out / item["label"]).is_file()
    assert ds["test"] == ["./imagesTs/lung_002.nii.gz"] and (out / "labelsTs" / "lung_002.nii.gz").is_file()
    assert "labelsTs" in ds["description"]
    les = json.loads((out / "lesions.json").read_text())
    for rec in les["cases"]:
        img = read_volume(out / rec["image"])
        lab = read_mask(out / rec["label"], reference=img)
        assert img.array.dtype == np.int16
        vv = img.voxel_volume_mm3 / 1000.0
        total = sum(x["volume_ml"] for x in rec["lesions"])
        assert total == pytest.approx(int(lab.array.sum()) * vv, rel=1e-6)
        for x in rec["lesions"]:
            assert x["volume_ml"] == pytest.approx(x["voxels"] * vv, rel=1e-9)
            assert len(x["centre_mm"]) == 3 and x["kind"] in SOLID


def test_synth_dataset_same_seed_same_bytes(tmp_path: Path):
    synth_dataset(tmp_path / "a", n_train=1, n_test=0, seed=9, matrix=64, slices=12, workers=1)
    synth_dataset(tmp_path / "b", n_train=1, n_test=0, seed=9, matrix=64, slices=12, workers=2)
    for rel in ("imagesTr/lung_000.nii.gz", "labelsTr/lung_000.nii.gz", "lesions.json", "dataset.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


@pytest.mark.parametrize(
    "kw",
    [dict(n_train=-1), dict(n_train=0, n_test=0), dict(matrix=8), dict(slices=1), dict(seed=-3)],
)
def test_bad_input_raises_input_error(tmp_path: Path, kw):
    with pytest.raises(InputError):
        synth_dataset(tmp_path / "x", **{"n_train": 1, "n_test": 0, "matrix": 64, "slices": 8, **kw})


def test_unwritable_output_raises_input_error(tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError):
        synth_dataset(f / "sub", n_train=1, n_test=0, matrix=64, slices=8)


def test_cli_synth(tmp_path: Path, capsys):
    from lungtumor.cli import main

    assert (
        main(
            [
                "synth",
                str(tmp_path / "d"),
                "--cases",
                "1",
                "--test-cases",
                "0",
                "--matrix",
                "64",
                "--slices",
                "8",
                "-q",
            ]
        )
        == 0
    )
    assert "1 training" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "e"), "--cases", "-1", "-q"]) == 2
