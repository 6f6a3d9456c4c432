"""Small shared fixtures for the robustness suite, built once per session.

``tiny_dataset``: 4 training + 2 test phantoms (64x64, 16 slices), ``tiny_config``: a YAML with a 64x64 prep
size and a 4-channel, depth-2 U-Net trained for 2 short epochs, ``tiny_cache``: ``lungtumor prepare
--preset demo --config tiny.yaml``, ``tiny_run``: ``lungtumor train`` on it. Tests never modify these; they
copy what they need into their own ``tmp_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lungtumor.cli import main

from ._util import OBSERVED

TINY_YAML = """\
preset: demo
prep: {size: [64, 64], spacing_mm: 5.0}
model: {base_channels: 4, depth: 2}
train: {epochs: 2, batch_size: 4, max_steps_per_epoch: 2, val_every_n_epochs: 1, val_batch_size: 16}
nodule: {channels: [4, 8, 8], steps: 3, batch_size: 4, mine_pool: 8}
"""
TINY_EPOCHS = 2


def pytest_sessionfinish(session, exitstatus) -> None:
    """With LUNGTUMOR_ERRORS_TABLE=FILE, write the observed messages as a Markdown table (for docs/errors.md)."""
    target = os.environ.get("LUNGTUMOR_ERRORS_TABLE")
    if not target or not OBSERVED:
        return
    rows = ["| bad input | command | message (exit code 2) |", "| --- | --- | --- |"]
    for kind, (command, msg) in OBSERVED.items():
        cell = msg.replace("|", "\\|")
        cell = f"`` {cell} ``" if "`" in cell else f"`{cell}`"
        rows.append(f"| {kind} | `{command}` | {cell} |")
    Path(target).write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(TINY_YAML, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """dataset.json + imagesTr (4) + labelsTr + imagesTs (2) + labelsTs of 64x64x16 phantoms."""
    from lungtumor.data.phantom import synth_dataset

    root = tmp_path_factory.mktemp("ds") / "data"
    synth_dataset(root, n_train=4, n_test=2, seed=1, matrix=64, slices=16, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_dataset: Path, tiny_config: Path) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    rc = main(["prepare", str(tiny_dataset), str(out), "--preset", "demo", "--config", str(tiny_config),
               "--folds", "0", "-q"])  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cache: Path, tiny_config: Path) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    rc = main(["train", str(tiny_cache), "--out", str(out), "--config", str(tiny_config), "-q"])
    assert rc == 0
    assert (out / "checkpoints" / "best.ckpt").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def reference_masks(tmp_path_factory, tiny_dataset: Path, tiny_run: Path) -> Path:
    """An uninterrupted ``predict`` of the dataset's two test images."""
    out = tmp_path_factory.mktemp("refpred") / "pred"
    rc = main(["predict", str(tiny_dataset / "imagesTs"), "--model", str(tiny_run), "--out", str(out), "-q"])
    assert rc == 0
    return out
