"""Small on-disk datasets shared by the bad-input tests (tests/cli/test_cli_errors.py and tests/robustness/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

SHAPE = (6, 16, 18)  # (z, y, x)
GEOM = {"spacing": (0.8, 0.8, 2.5), "origin": (-10.0, 5.0, 100.0)}


def tiny_dataset(root: Path, n: int) -> Path:
    """A valid folder-layout dataset (imagesTr/labelsTr) of ``n`` small random cases named c0, c1, ..."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        vol = Volume(rng.integers(-1000, 400, size=SHAPE).astype(np.int16), **GEOM)
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:4, 4:8, 4:9] = 1
        write_volume(vol, root / "imagesTr" / f"c{i}.nii.gz")
        write_volume(vol.with_array(mask), root / "labelsTr" / f"c{i}.nii.gz")
    return root
