"""``lungtumor export RUN OUT_DIR --format onnx`` (issue 25): every network of a checkpoint as ONNX, run by
onnxruntime to the same logits. Skipped where onnx or onnxruntime is not installed (``lungtumor[onnx]``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.cli import main
from lungtumor.inference.checkpoint import load_any

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'lungtumor[onnx]')",
)


@pytest.mark.parametrize(("name", "files"), [("demo2d", ["model", "detector"]), ("unet3d", ["model"])])
def test_every_network_is_exported_and_onnxruntime_agrees(name, files, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", str(FIX / f"{name}.ckpt"), str(out), "--format", "onnx", "-q"]) == 0
    assert sorted(p.stem for p in out.glob("*.onnx")) == sorted(files)
    doc = json.loads((out / "onnx_export.json").read_text())
    assert set(doc["files"]) == {f"{f}.onnx" for f in files} and {"config", "stats", "prep"} <= set(doc)
    loaded = load_any(FIX / f"{name}.ckpt")
    nets = {"model": loaded.model, "detector": loaded.nodule}
    for f in files:
        shape = doc["files"][f"{f}.onnx"]["input"]["shape"][1:]
        x = torch.randn(
            3, *shape, generator=torch.Generator().manual_seed(1)
        )  # batch 3: the batch axis is free
        got = ort.InferenceSession(str(out / f"{f}.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()}
        )
        with torch.inference_mode():
            want = nets[f](x)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
        assert doc["files"][f"{f}.onnx"]["onnxruntime_max_abs_diff"] < 1e-3


def test_onnx_export_of_a_package(tmp_path):
    assert main(["export", str(FIX / "demo2d.ckpt"), str(tmp_path / "m.zip"), "-q"]) == 0
    assert main(["export", str(tmp_path / "m.zip"), str(tmp_path / "onnx"), "--format", "onnx", "-q"]) == 0
    assert (tmp_path / "onnx" / "detector.onnx").is_file()
