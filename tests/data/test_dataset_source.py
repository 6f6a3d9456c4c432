"""Where a dataset comes from (``data.msd.dataset_source``), as ``prepare`` records it in cache.json for the
model card: phantoms of ``lungtumor synth`` are recognised, any other dataset is not."""

from __future__ import annotations

import json
from pathlib import Path

from lt_testdata import tiny_dataset

from lungtumor.core.config import PrepConfig
from lungtumor.data.msd import PHANTOM_DATASET_NAME, dataset_source, load_dataset
from lungtumor.data.phantom import synth_dataset
from lungtumor.preprocessing.prepare import prepare_dataset


def test_synth_phantoms_are_recognised_and_prepare_records_them(tmp_path: Path) -> None:
    root = tmp_path / "ph"
    synth_dataset(root, n_train=3, n_test=0, seed=3, matrix=48, slices=8, workers=1)
    src = dataset_source(load_dataset(root))
    assert src["name"] == PHANTOM_DATASET_NAME and src["synthetic"] is True and src["cases"] == 3
    assert src["path"] == str(root.resolve())
    prepare_dataset(root, tmp_path / "cache", PrepConfig(size=(64, 64)), val_cases=1, folds=0)
    cache = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert cache["source"] == src


def test_other_datasets_are_not_synthetic(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "mine", 2)  # imagesTr/labelsTr without dataset.json
    src = dataset_source(load_dataset(root))
    assert src == {
        "name": "mine",
        "path": str(root.resolve()),
        "description": "",
        "synthetic": False,
        "cases": 2,
    }
    # a dataset.json that only borrows the phantoms' name (no lesions.json beside it) is not taken for them
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": PHANTOM_DATASET_NAME,
                "training": [
                    {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(2)
                ],
            }
        )  # fmt: skip
    )
    assert dataset_source(load_dataset(root))["synthetic"] is False
