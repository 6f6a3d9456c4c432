"""predict with several processes (issue 25): ``--devices N`` through Lightning Fabric, every case once, one
merged manifest, the masks of one process byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.data.phantom import make_case
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.workflows import stages
from lungtumor.workflows.batch import Shard, continue_sources, rank_manifest_name, select_part
from lungtumor.workflows.distributed import merge_manifests, write_merged
from lungtumor.workflows.predict import PredictOptions, predict_paths

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
MODEL = FIX / "demo2d.ckpt"
PHANTOMS = ("ph0", "ph1", "ph2")
#: Environment a cluster or an outer launcher sets; the 2-process run must start its own processes.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def cts(tmp_path_factory) -> Path:
    """Three small phantoms (64² x 16, distinct seeds) and a corrupt CT, in one folder."""
    folder = tmp_path_factory.mktemp("cts")
    for i, name in enumerate(PHANTOMS):
        write_volume(make_case(100 + i, matrix=64, slices=16)[0], folder / f"{name}.nii.gz")
    (folder / "bad.nii.gz").write_bytes(b"not a CT")
    return folder


def _opts(**kw) -> PredictOptions:
    return PredictOptions(device="cpu", threshold=0.25, **kw)  # 0.25: the tiny model finds a lesion in each


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_ranks_take_every_case_once_without_padding(n):
    items = [(f"c{i}", Path(f"c{i}.nii.gz"), f"c{i}") for i in (4, 1, 3, 0, 2)]
    shards = [Shard(r, n, torch.device("cpu")) for r in range(n)]
    mine = [s.select(items) for s in shards]
    flat = [stem for part in mine for _, _, stem in part]
    assert sorted(flat) == sorted(st for *_, st in items) and len(flat) == len(set(flat))
    assert [len(m) for m in mine] == [len(items[r::n]) for r in range(n)]  # no rank is padded to equal length
    assert mine[0] == select_part(items, [st for *_, st in items], n, 0)  # as --num-parts does within a part
    assert shards[1].order == [st for *_, st in items]


def test_rank_manifest_names():
    assert rank_manifest_name("predict_manifest.json", 1, 4) == "predict_manifest.rank-1-of-4.json"
    part = "predict_manifest.part-2-of-8.json"
    assert rank_manifest_name(part, 0, 2) == "predict_manifest.part-2-of-8.rank-0-of-2.json"


def test_several_processes_need_predict_sharded(cts, tmp_path):
    with pytest.raises(InputError, match="--devices"):
        predict_paths([cts / "ph0.nii.gz"], MODEL, tmp_path / "out", _opts(devices=2))
    with pytest.raises(InputError, match="--num-nodes: must be at least 1"):
        predict_paths([cts / "ph0.nii.gz"], MODEL, tmp_path / "out", _opts(num_nodes=0))


def test_bad_process_options_are_one_line_errors_before_anything(cts, tmp_path, capsys):
    base = ["predict", str(cts), "--model", str(MODEL), "-o", str(tmp_path / "out"), "-q"]
    assert main([*base, "--devices", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --devices: must be at least 1, got 0"
    assert main([*base, "--device", "cuda:1", "--devices", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --device: cuda:1 names one GPU") and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_a_killed_run_is_continued_by_more_processes(cts, tmp_path, monkeypatch):
    """Ranks in one process, one after the other: a 2-process run killed after rank 0, continued by 3."""
    out = tmp_path / "out"
    inputs = [cts / f"{n}.nii.gz" for n in PHANTOMS]
    first = Shard(0, 2, torch.device("cpu"), threads=1)
    done = predict_paths(inputs, MODEL, out, _opts(devices=2), shard=first)
    assert [r.case for r in done] == ["ph0", "ph2"] and not (out / "predict_manifest.json").exists()
    assert [p.name for p in continue_sources(out, "predict_manifest.json")] == [
        "predict_manifest.rank-0-of-2.json"
    ]
    seen: list[str] = []
    real = stages.read_case
    monkeypatch.setattr(
        stages, "read_case", lambda work, *a, **k: (seen.append(work.res.case), real(work, *a, **k))[1]
    )
    opts = _opts(devices=3, continue_prediction=True)
    shards = [Shard(r, 3, torch.device("cpu"), threads=1) for r in range(3)]
    results = [predict_paths(inputs, MODEL, out, opts, shard=s) for s in shards]
    assert seen == ["ph1"]  # ph0 and ph2 were finished by the killed run: carried, not predicted again
    assert [[r.skipped for r in rs] for rs in results] == [[True], [False], [True]]
    path = write_merged(
        out, "predict_manifest.json", [s.manifest for s in shards], shards[0].order, {"world_size": 3}
    )
    merged = _manifest(path)
    assert [c["case"] for c in merged["cases"]] == list(PHANTOMS)
    assert merged["continued"]["cases_carried"] == 2 and merged["processes"] == {"world_size": 3}
    assert sorted(p.name for p in out.glob("predict_manifest*.json")) == ["predict_manifest.json"]


def test_merge_keeps_the_part_order_and_writes_nothing_without_a_success():
    def part(stems, failed=(), load=0.1):
        cases = [{"case": s, "stem": s} for s in stems]
        return {"started": f"2026-01-0{1 + len(stems)}T00:00:00+00:00", "models": [], "settings": {},
                "timings": {"load_models_s": load}, "cases": cases, "failed": list(failed), "warnings": []}  # fmt: skip

    merged = merge_manifests([part(["a", "c"]), part(["b"], load=0.5)], ["a", "b", "c"], {"world_size": 2})
    assert [c["case"] for c in merged["cases"]] == ["a", "b", "c"]
    assert merged["timings"]["load_models_s"] == 0.5 and merged["started"].startswith("2026-01-02")
    assert merge_manifests([part([], [{"case": "x"}]), None], ["x"], {}) is None


def _launcher_free_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_ENV and not k.startswith(("SLURM_", "TORCHELASTIC"))
    }
    env.pop("OMP_NUM_THREADS", None)
    return env


def test_two_cpu_processes_write_the_masks_of_one(cts, tmp_path):
    """`lungtumor predict --devices 2 --device cpu` (gloo): every case once, by the rank that owns it, one merged
    manifest and no rank manifest left; the masks are those of one process, voxel for voxel. Under a minute."""
    one, two = tmp_path / "one", tmp_path / "two"
    results = predict_paths([cts], MODEL, one, _opts())
    assert [r.case for r in results if r.error] == ["bad"]
    cmd = [sys.executable, "-m", "lungtumor", "predict", str(cts), "--model", str(MODEL), "-o", str(two),
           "--device", "cpu", "--threshold", "0.25", "--devices", "2", "-q"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_launcher_free_env())
    took = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr  # the corrupt CT failed; rank 0 says so, once
    errors = proc.stderr.strip().splitlines()  # the corrupt CT's error and the count, once: from rank 0 alone
    assert len(errors) == 2 and "bad.nii.gz" in errors[0] and "1 of 4 cases failed" in errors[1], errors
    lines = proc.stdout.splitlines()  # the model's card line and one line per case, from rank 0 alone
    assert sum(x.startswith("model ") for x in lines) == 1 and proc.stdout.count("lesion(s)") == len(PHANTOMS)
    for name in PHANTOMS:
        a, b = read_volume(one / f"{name}_tumour.nii.gz"), read_volume(two / f"{name}_tumour.nii.gz")
        assert a.array.dtype == b.array.dtype == np.uint8 and a.array.any()
        assert a.array.tobytes() == b.array.tobytes() and a.spacing == b.spacing
    single, merged = _manifest(one / "predict_manifest.json"), _manifest(two / "predict_manifest.json")
    assert [c["case"] for c in merged["cases"]] == [c["case"] for c in single["cases"]] == list(PHANTOMS)
    assert [f["case"] for f in merged["failed"]] == ["bad"]
    procs = merged["processes"]
    assert procs["world_size"] == 2 and procs["backend"] == "gloo" and procs["accelerator"] == "cpu"
    ranks = procs["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["predicted"] + r["failed"] for r in ranks] == [2, 2]
    assert all(r["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for r in ranks)
    assert sorted(p.name for p in two.glob("predict_manifest*")) == ["predict_manifest.json"]
    assert not list(two.glob(".*")), "a temporary file was left"
    assert took < 60, f"the 2-process run took {took:.0f} s"
