"""The torch side thread (issue 25): the detector beside the 2D model's batches gives the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.imaging.io import read_volume
from lungtumor.imaging.orientation import to_canonical
from lungtumor.inference.checkpoint import load_checkpoint
from lungtumor.inference.slices import predict_volume
from lungtumor.inference.workers import side_thread_useful, torch_side_thread

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_side_thread_runs_torch_with_the_callers_thread_count(two_threads):
    with torch_side_thread() as pool:
        counts = [f.result() for f in [pool.submit(torch.get_num_threads) for _ in range(3)]]
    assert counts == [2, 2, 2] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with torch_side_thread() as pool:
        assert pool.submit(torch.get_num_threads).result() == 1


def test_a_side_thread_is_for_torch_networks_on_several_cpu_threads(two_threads):
    class Onnx:
        runtime = "onnxruntime"

    assert side_thread_useful(torch.device("cpu"), object())
    assert not side_thread_useful(torch.device("cpu"), Onnx())  # onnxruntime has threads of its own
    assert not side_thread_useful(torch.device("cuda"), object())
    torch.set_num_threads(1)
    assert not side_thread_useful(torch.device("cpu"), object())


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_detector_beside_the_batches_gives_the_same_probabilities(two_threads, precision):
    loaded = load_checkpoint(FIX / "demo2d.ckpt")  # 2D model + nodule detector
    assert loaded.nodule is not None
    vol, _ = to_canonical(read_volume(FIX / "ct.nii.gz"))
    kw = dict(device=torch.device("cpu"), threshold=0.25, batch_size=3, precision=precision, keep_prob=True)
    p_serial, m_serial = predict_volume(loaded, vol, parallel=False, **kw)
    p_side, m_side = predict_volume(loaded, vol, parallel=True, **kw)
    assert p_serial is not None and p_side is not None and m_serial.any()
    assert p_side.tobytes() == p_serial.tobytes()  # to the bit, not to a tolerance
    np.testing.assert_array_equal(m_side, m_serial)
