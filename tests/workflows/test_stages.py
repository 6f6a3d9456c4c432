"""The overlapped predict loop (issue 25): the same outputs as one case after the other, cases finished in
order, at most one case per stage alive, and a failing case reported as with the serial loop."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from lungtumor.data.phantom import make_case
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.workflows import stages
from lungtumor.workflows.predict import PredictOptions, predict_paths

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
MODEL_2D = FIX / "demo2d.ckpt"  # 2D UNet + nodule detector (demo preset, shrunk)
MODEL_3D = FIX / "unet3d.ckpt"


@pytest.fixture(scope="module")
def cts(tmp_path_factory) -> Path:
    """Four small phantoms of different sizes, and a corrupt CT between them (inputs sort by name)."""
    folder = tmp_path_factory.mktemp("cts")
    for i, (matrix, slices) in enumerate([(64, 16), (72, 20), (64, 12), (80, 16)]):
        write_volume(make_case(200 + i, matrix=matrix, slices=slices)[0], folder / f"ph{i}.nii.gz")
    (folder / "ph1b.nii.gz").write_bytes(b"not a CT")
    return folder


def _run(cts: Path, out: Path, model, overlap: bool, **kw) -> list[stages.PredictResult]:
    opts = PredictOptions(
        device="cpu", threshold=0.25, overlap=overlap, **kw
    )  # 0.25: the tiny model finds lesions
    return predict_paths([cts], model, out, opts)


def _voxels(path: Path) -> tuple[str, bytes, tuple]:
    vol = read_volume(path)
    return str(vol.array.dtype), vol.array.tobytes(), (vol.spacing, vol.origin, vol.direction)


@pytest.mark.parametrize(
    ("model", "kw"),
    [(MODEL_2D, {"save_prob": True}), ([MODEL_2D, MODEL_3D], {}), (MODEL_2D, {"lung_gate": False})],
    ids=["2d-detector-prob", "ensemble-2d-3d", "no-lung-gate"],
)
def test_overlapped_outputs_equal_the_serial_ones_byte_for_byte(cts, tmp_path, model, kw):
    serial = _run(cts, tmp_path / "serial", model, overlap=False, **kw)
    piped = _run(cts, tmp_path / "piped", model, overlap=True, **kw)
    assert [r.case for r in piped] == [r.case for r in serial] == ["ph0", "ph1", "ph1b", "ph2", "ph3"]
    assert [r.error is None for r in piped] == [True, True, False, True, True]
    assert piped[2].error == serial[2].error and "ph1b.nii.gz" in piped[2].error
    assert sum(r.n_lesions for r in piped) > 0  # the comparison covers lesions, not empty masks
    for a, b in zip(serial, piped, strict=True):
        assert [f.name for f in a.outputs] == [f.name for f in b.outputs]
        assert (a.n_lesions, a.tumour_ml) == (b.n_lesions, b.tumour_ml)
        for fa, fb in zip(a.outputs, b.outputs, strict=True):
            if fa.name.endswith(".nii.gz"):  # masks and probability maps: voxels, dtype and geometry
                assert _voxels(fa) == _voxels(fb), fa.name
            else:  # lesion tables
                assert fa.read_bytes() == fb.read_bytes(), fa.name
    ms = [json.loads((tmp_path / d / "predict_manifest.json").read_text()) for d in ("serial", "piped")]
    assert [c["outputs"] for c in ms[0]["cases"]] == [c["outputs"] for c in ms[1]["cases"]]  # sha256 too
    assert [f["case"] for f in ms[1]["failed"]] == ["ph1b"]


def test_cases_finish_in_order_with_at_most_one_per_stage(cts, tmp_path, monkeypatch):
    """While the model runs case i, case i+1 is read and case i-1 written; no more cases are alive."""
    alive: dict[str, str] = {}
    peak, lock = [0], threading.Lock()
    manifests: list[list[str]] = []

    def tracked(name, real):
        def run(work, *a, **k):
            with lock:
                alive[work.res.case] = name
                peak[0] = max(peak[0], len(alive))
            out = real(work, *a, **k)
            if name == "write":
                with lock:
                    del alive[work.res.case]
                m = json.loads((tmp_path / "o" / "predict_manifest.json").read_text())
                manifests.append([c["case"] for c in m["cases"]] + [f["case"] for f in m["failed"]])
            return out

        return run

    for name in ("read", "model", "write"):
        monkeypatch.setattr(stages, f"{name}_case", tracked(name, getattr(stages, f"{name}_case")))
    results = _run(cts, tmp_path / "o", MODEL_2D, overlap=True)
    assert [r.case for r in results] == ["ph0", "ph1", "ph1b", "ph2", "ph3"]
    assert 2 <= peak[0] <= 3  # the stages overlapped, and held at most three cases
    # the manifest is rewritten after every case, listing the cases finished so far
    assert [sorted(m) for m in manifests] == [
        sorted(["ph0", "ph1", "ph1b", "ph2", "ph3"][: k + 1]) for k in range(5)
    ]


def test_steps_are_timed_and_seconds_are_their_sum(cts, tmp_path):
    res = _run(cts, tmp_path / "o", MODEL_2D, overlap=True)[0]
    assert {"read", "lungs", "predict", "postprocess", "write"} <= set(res.timings)
    assert res.seconds == pytest.approx(sum(res.timings.values()))
    assert np.isfinite(res.seconds) and res.seconds > 0


def test_dropped_voxels_keep_the_geometry_the_outputs_need():
    from lungtumor.imaging.orientation import from_canonical, to_canonical
    from lungtumor.imaging.volume import Volume

    stored = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(0.7, 0.8, 2.5), origin=(1, 2, 3))
    vol, ro = to_canonical(stored)
    work = stages.CaseWork(stages.PredictResult("c", Path("c.nii.gz")), stored=stored, vol=vol, ro=ro)
    work.drop_voxels()
    for v in (work.stored, work.vol):
        assert v.array.shape == (2, 3, 4) and v.array.dtype == np.int16 and v.array.strides == (0, 0, 0)
    mask = np.ones((2, 3, 4), np.uint8)
    out = from_canonical(mask, work.stored, ro)  # what the write stage makes of the mask
    assert out.spacing == stored.spacing and out.origin == stored.origin and out.array.sum() == 24
