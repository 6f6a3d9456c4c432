"""Training: one step learns, sampler weights, per-patient validation, checkpoints, resume, seeding, DDP.

A tiny cache is written directly in the docs/architecture.md format (no dependency on prepare.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.core.config import RunConfig
from lungtumor.core.config_io import load_config, save_config, to_dict, validate
from lungtumor.core.errors import InputError

SRC = Path(__file__).resolve().parents[2] / "src"


def write_cache(
    root: Path, n_cases: int = 5, z: int = 12, size: int = 64, n_val: int = 2, seed: int = 0
) -> Path:
    """A prepared cache: n_cases x (z, size, size), a bright disc ("tumour") in slices 3..8 of each case."""
    rng = np.random.default_rng(seed)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    cases = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_cases):
        name = f"case_{i:03d}"
        img = rng.normal(0, 0.3, (z, size, size)).astype(np.float32)
        seg = np.zeros((z, size, size), np.uint8)
        cy, cx, r = rng.integers(18, size - 18), rng.integers(18, size - 18), 6 + i % 3
        for s in range(3, 9):
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r - abs(s - 6)) ** 2
            seg[s][disc] = 1
            img[s][disc] += 2.0
        np.save(root / "cases" / f"{name}_img.npy", img.astype(np.float16))
        np.save(root / "cases" / f"{name}_seg.npy", seg)
        cases.append({
            "name": name, "n_slices": z, "prepared_shape": [z, size, size], "orig_shape": [z, size, size],
            "orig_spacing": [1.0, 1.0, 2.0], "tumour_slices": [int(s) for s in np.flatnonzero(seg.any((1, 2)))],
            "tumour_ml": float(seg.sum() * 2e-3),
        })  # fmt: skip
    prep = to_dict(RunConfig().prep)
    prep["size"] = [size, size]
    tumour = sum(len(c["tumour_slices"]) for c in cases)
    meta = {"version": 1, "prep": prep, "stats": {"mean": -500.0, "std": 400.0}, "cases": cases,
            "tumour_slice_fraction": tumour / (n_cases * z), "complete": True}  # fmt: skip
    (root / "cache.json").write_text(json.dumps(meta))
    names = [c["name"] for c in cases]
    splits = {"seed": 0, "train": names[: n_cases - n_val], "val": names[n_cases - n_val :],
              "folds": [{"train": names[: n_cases - n_val], "val": names[n_cases - n_val :]}]}  # fmt: skip
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def tiny_config(epochs: int = 2, **train) -> RunConfig:
    cfg = load_config(None, "demo")
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps_per_epoch = epochs, 4, 3
    cfg.train.accelerator, cfg.train.log_every_n_steps, cfg.train.val_every_n_epochs = "cpu", 1, 1
    cfg.train.context_slices, cfg.train.context_mm = 1, 0.0  # 3 adjacent slices (the tests' 3-channel inputs)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.prep.blob = False  # training replaces prep with the cache's anyway
    cfg.nodule.enabled = False  # the 3D nodule detector has its own tests (test_nodules.py)
    validate(cfg)  # derives model.in_channels
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("cache"))


def test_train_writes_run_and_checkpoint_loads(cache, tmp_path):
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.training.run import train

    res = train(cache, tmp_path / "run", tiny_config(), progress=False)
    run = tmp_path / "run"
    for f in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "config.yaml",
        "metrics.csv",
        "loss_curves.png",
    ):
        assert (run / f).is_file(), f
    assert any((run / "tb").iterdir())
    assert res.epochs == 2 and 0 <= res.best_dice <= 1
    ck = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    info = ck["hyper_parameters"]["lungtumor"]
    assert info["stats"] == {"mean": -500.0, "std": 400.0} and info["prep"]["size"] == [64, 64]
    loaded = load_checkpoint(run)
    assert loaded.config.prep.size == (64, 64) and loaded.stats["std"] == 400.0
    with torch.no_grad():
        out = loaded.model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,train_loss,val_loss,val_dice") and len(lines) == 3


def test_resident_path_and_bad_checkpoints(cache, tmp_path):
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.training.run import train

    train(cache, tmp_path / "run", tiny_config(epochs=1, data_on_device="always"), progress=False)
    with pytest.raises(InputError, match="already holds a training run"):
        train(cache, tmp_path / "run", tiny_config(epochs=1), progress=False)
    good = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "trunc.ckpt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="trunc.ckpt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(InputError, match="not a lungtumor checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(InputError, match="no_such"):
        load_checkpoint(tmp_path / "no_such.ckpt")


def test_one_step_lowers_loss_on_fixed_batch():
    from lungtumor.models import create_model
    from lungtumor.training.losses import dice_bce_loss

    torch.manual_seed(0)
    cfg = tiny_config()
    model = create_model(cfg.model)
    x = torch.randn(4, 3, 64, 64)
    y = (x[:, 1:2] > 1.0).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = dice_bce_loss(model(x), y)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = dice_bce_loss(model(x), y)
    assert float(after) < float(before.detach())


def test_sampler_tumour_fraction_matches_weights():
    from lungtumor.training.sampling import EpochBatchSampler, oversample_weights

    tumour = np.zeros(1000, bool)
    tumour[::10] = True  # 100 tumour, 900 other slices
    w, ratio = oversample_weights(tumour)
    assert ratio == pytest.approx(9.0)
    ids = np.arange(1000) + 5000
    s = EpochBatchSampler(ids, w, batch_size=50, steps=200, seed=1)
    drawn = np.concatenate(list(s)) - 5000
    expected = tumour.sum() * ratio / w.sum()  # = 0.5
    assert tumour[drawn].mean() == pytest.approx(expected, abs=0.02)
    # DDP: the ranks take disjoint shares of one shared draw; epochs differ
    r0 = list(EpochBatchSampler(ids, w, 50, 10, seed=1, rank=0, world=2))
    r1 = list(EpochBatchSampler(ids, w, 50, 10, seed=1, rank=1, world=2))
    assert len(r0) == len(r1) == 10 and r0 != r1
    s.set_epoch(1)
    assert list(s)[0] != list(EpochBatchSampler(ids, w, 50, 200, seed=1))[0]


def test_lesion_balance_spreads_tumour_mass_over_lesions(tmp_path):
    from lungtumor.preprocessing.cache import Cache, SliceTable
    from lungtumor.training.sampling import lesion_balanced_weights, oversample_weights

    root = write_cache(tmp_path / "c", n_cases=3, z=30, n_val=1)
    seg = np.load(root / "cases" / "case_000_seg.npy")
    seg[:] = 0
    seg[2:22, 10:20, 10:20] = 1  # a big lesion on 20 slices
    seg[25:27, 40:43, 40:43] = 1  # a small one on 2 slices
    np.save(root / "cases" / "case_000_seg.npy", seg)
    meta = json.loads((root / "cache.json").read_text())
    meta["cases"][0]["tumour_slices"] = [int(s) for s in np.flatnonzero(seg.any((1, 2)))]
    (root / "cache.json").write_text(json.dumps(meta))
    cache = Cache.open(root)
    table = SliceTable(cache, cache.train + cache.val)
    ids = table.slices_of(cache.train)
    base, _ = oversample_weights(table.tumour[ids])
    assert np.array_equal(lesion_balanced_weights(cache, table, ids, base, 0.0), base)
    tumour = table.tumour[ids]
    for power in (0.5, 1.0):
        w = lesion_balanced_weights(cache, table, ids, base, power)
        assert w[tumour].sum() == pytest.approx(base[tumour].sum())  # batches keep their tumour fraction
        assert np.array_equal(w[~tumour], base[~tumour])
        big, small = w[2:22].sum(), w[25:27].sum()
        assert big / small == pytest.approx((20 / 2) ** (1 - power), rel=1e-6)


def test_dice_empty_cases():
    from lungtumor.training.losses import dice_score

    z = torch.zeros(3, 4, 4)
    o = torch.ones(3, 4, 4)
    assert dice_score(z, z) == 1.0 and dice_score(o, z) == 0.0 and dice_score(o, o) == 1.0


def test_sample_dice_weighs_a_small_lesion_like_a_big_one():
    """Per-sample Dice: a missed 2x2 nodule costs as much as a missed 30x30 mass; batch Dice barely sees it."""
    from lungtumor.core.config import LOSS_NAMES
    from lungtumor.training.losses import LOSSES, sample_dice_loss, soft_dice_loss

    assert set(LOSSES) == set(LOSS_NAMES)
    t = torch.zeros(3, 1, 40, 40)
    t[0, 0, 5:35, 5:35] = 1  # the mass
    t[1, 0, 10:12, 10:12] = 1  # the nodule; sample 2 holds no tumour
    hit = t * 40 - 20  # logits: every tumour pixel found, nothing else
    miss_small = hit.clone()
    miss_small[1] = -20
    assert sample_dice_loss(hit, t) < 0.01
    # missing the nodule costs about half of the per-sample Dice (1 of 2 tumour samples) ...
    assert 0.35 < float(sample_dice_loss(miss_small, t)) < 0.55  # (smooth 1 px: 0.4)
    # ... and under 1 % of the batch Dice
    assert float(soft_dice_loss(miss_small, t)) < 0.01
    # a sample with no tumour adds nothing to the Dice term; an all-empty batch gives 0 with a gradient
    z = torch.zeros(2, 1, 8, 8)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = sample_dice_loss(x, z)
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None
    assert load_config(None, "demo").train.loss in LOSS_NAMES


def test_small_lesion_weights_lift_a_nodule_not_a_mass():
    """dice_bce_small: a nodule's pixels weigh several times a mass's interior; background stays 1; the
    per-slice weights of a 3D target equal the 2D ones; missing the nodule costs more than with plain BCE."""
    from lungtumor.training.losses import bce_loss, dice_bce_small_loss, small_lesion_weights

    t = torch.zeros(2, 1, 64, 64)
    t[0, 0, 10:14, 10:14] = 1  # a 4x4 nodule
    t[1, 0, 5:60, 5:60] = 1  # a 55x55 mass
    w = small_lesion_weights(t)
    assert float(w[0, 0, 12, 12]) > 5 and float(w[1, 0, 30, 30]) == 1.0
    assert float(w[0, 0, 40, 40]) == 1.0 and float(w.max()) <= 9.0
    t3 = t.unsqueeze(2).repeat(1, 1, 3, 1, 1)  # (B, 1, D, H, W)
    assert torch.allclose(small_lesion_weights(t3)[:, :, 1], w)
    hit = t * 40 - 20
    miss = hit.clone()
    miss[0] = -20
    extra = float(dice_bce_small_loss(miss, t) - dice_bce_small_loss(hit, t))
    assert extra > 4 * float(bce_loss(miss, t) - bce_loss(hit, t))


def test_seeded_runs_are_reproducible(cache, tmp_path):
    from lungtumor.training.run import train

    for name in ("a", "b"):
        train(cache, tmp_path / name, tiny_config(epochs=1), progress=False)
    sa = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lungtumor", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_last_checkpoint_is_every_epoch(cache, tmp_path):
    """last.ckpt holds the final epoch even when val_dice stopped improving (what --resume continues from)."""
    from lungtumor.training.run import train

    train(cache, tmp_path / "run", tiny_config(epochs=6, lr=1e-3), progress=False)
    best = torch.load(tmp_path / "run/checkpoints/best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert best["epoch"] < 5, "precondition: the best epoch must come before the last one"
    assert (last["epoch"], last["global_step"]) == (5, 18)


def test_resume_after_sigkill(cache, tmp_path):
    from lungtumor.inference.checkpoint import load_checkpoint

    cfg_path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    save_config(tiny_config(epochs=6), cfg_path)
    proc = subprocess.Popen(
        _cli("train", str(cache), "--out", str(run), "--config", str(cfg_path), "-q"), env=_env()
    )
    metrics = run / "metrics.csv"
    deadline = time.time() + 300  # generous: a loaded 2-core machine takes a while to import Lightning
    two_done = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # 2 epochs done
                two_done = True
                break
            time.sleep(0.02)
        assert proc.poll() is None, "run finished before it could be killed"
        assert two_done, "no 2 epochs within the deadline"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"]
    assert done < 5
    r = subprocess.run(
        _cli("train", str(cache), "--out", str(run), "--resume", "-q"),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "trained 6 epochs" in r.stdout
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 5
    epochs = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert epochs == list(range(6))
    loaded = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_resume_without_checkpoint_is_an_input_error(cache, tmp_path):
    from lungtumor.training.run import train

    with pytest.raises(InputError, match="last.ckpt"):
        train(cache, tmp_path / "empty", tiny_config(), resume=True, progress=False)


def _reference_val_dice(loaded, cache_dir: Path) -> float:
    """Per-patient Dice recomputed from the checkpoint, independently of the training loop."""
    from lungtumor.preprocessing.cache import stack_context

    splits = json.loads((cache_dir / "splits.json").read_text())
    k = loaded.config.train.context_slices
    dices = []
    for name in splits["val"]:
        img = torch.from_numpy(np.load(cache_dir / "cases" / f"{name}_img.npy").astype(np.float32))
        seg = torch.from_numpy(np.load(cache_dir / "cases" / f"{name}_seg.npy")).bool()
        with torch.no_grad():
            prob = torch.sigmoid(loaded.model(stack_context(img, torch.arange(len(img)), k)))[:, 0]
        pred = prob >= 0.5
        denom = int(pred.sum() + seg.sum())
        if denom:  # tumour-free and predicted empty: no Dice (NaN, excluded)
            dices.append(2 * int((pred & seg).sum()) / denom)
    return float(np.mean(dices)) if dices else 1.0


def test_ddp_two_cpu_processes(cache, tmp_path):
    from lungtumor.inference.checkpoint import load_checkpoint

    cfg_path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    save_config(tiny_config(epochs=2), cfg_path)
    cmd = _cli(
        "train",
        str(cache),
        "--out",
        str(run),
        "--config",
        str(cfg_path),
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "-q",
    )
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("trained 2 epochs") == 1  # only rank 0 prints
    loaded = load_checkpoint(run)
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    best = max(float(row[4]) for row in rows)
    assert _reference_val_dice(loaded, cache) == pytest.approx(best, abs=1e-6)


def test_last_epoch_is_always_validated(cache, tmp_path):
    """val_every_n_epochs=2 with 1 epoch still validates once and writes best.ckpt."""
    from lungtumor.training.run import train

    res = train(cache, tmp_path / "run", tiny_config(epochs=1, val_every_n_epochs=2), progress=False)
    assert res.best_epoch == 0
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_validation_does_not_change_the_trained_weights(cache, tmp_path):
    """How often a run validates picks the checkpoint, never the weights (decision 0024): training every
    epoch's validation or only the last's ends with the same last.ckpt, bit for bit."""
    from lungtumor.training.run import train

    for name, every in (("every", 1), ("end", 3)):
        train(cache, tmp_path / name, tiny_config(epochs=3, val_every_n_epochs=every), progress=False)
    sa = torch.load(tmp_path / "every/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "end/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def with_source(cache: Path, root: Path) -> Path:
    """A copy of the test cache whose cache.json names a source dataset holding its cases' CTs (HU = the
    cached input undone), as ``prepare`` writes it: the nodule detector reads the CTs from there."""
    from lungtumor.imaging.io import write_volume
    from lungtumor.imaging.volume import Volume

    shutil.copytree(cache, root / "cache")
    meta = json.loads((root / "cache" / "cache.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (root / "data" / sub).mkdir(parents=True)
    for c in meta["cases"]:
        img = np.load(root / "cache" / "cases" / f"{c['name']}_img.npy").astype(np.float32)
        vol = Volume((img * 400 - 500).astype(np.int16), spacing=tuple(c["orig_spacing"]))
        write_volume(vol, root / "data" / "imagesTr" / f"{c['name']}.nii.gz")
        seg = np.load(root / "cache" / "cases" / f"{c['name']}_seg.npy")
        write_volume(vol.with_array(seg), root / "data" / "labelsTr" / f"{c['name']}.nii.gz")
    meta["source"] = {"name": "t", "path": str(root / "data"), "description": "", "synthetic": False}
    (root / "cache" / "cache.json").write_text(json.dumps(meta))
    return root / "cache"


def test_no_nodule_candidates_leaves_a_complete_2d_model(cache, tmp_path, capsys):
    """The test CTs have no lungs, so no blob candidates: train warns and best.ckpt is the 2D model alone."""
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.training.run import train

    cfg = tiny_config(epochs=1)
    cfg.nodule.enabled, cfg.nodule.steps = True, 2
    train(with_source(cache, tmp_path), tmp_path / "run", cfg, progress=False)
    assert "no nodule detector trained" in capsys.readouterr().err
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.nodule is None and not loaded.config.nodule.enabled


def test_context_mm_interpolates_at_fixed_distances():
    from lungtumor.preprocessing.cache import stack_context

    vol = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 3, 3).contiguous()
    z = torch.arange(10)
    assert torch.equal(
        stack_context(vol, z, 1, 1.0)[:, :, 0, 0], (z[:, None] + torch.tensor([-1, 0, 1])).clamp(0, 9).float()
    )
    # 2 slices of 2.5 mm per 5 mm step, 1.6 slices of 1.25 mm per 2 mm: channel value = clamped position
    for step in (2.0, 1.6, 0.4):
        got = stack_context(vol, z, 2, step)[:, :, 0, 0]
        want = (z[:, None] + step * torch.arange(-2, 3)[None]).clamp(0, 9).float()
        assert torch.allclose(got, want, atol=1e-5), step


def test_context_mm_gives_the_same_batches_on_both_data_paths(tmp_path):
    from lungtumor.preprocessing.cache import Cache, SliceTable
    from lungtumor.training.sampling import ResidentSlices, SliceDataset

    root = write_cache(tmp_path / "c", n_cases=3, z=10, size=48, n_val=1)
    cache = Cache.open(root)
    table = SliceTable(cache, cache.train + cache.val)
    assert cache.cases["case_000"].dz_mm == 2.0
    res = ResidentSlices(cache, table, torch.device("cpu"), context_mm=3.0)  # 1.5 slices per channel
    host = SliceDataset(cache, table, 2, context_mm=3.0)
    idx = torch.tensor([0, 4, 9, 10, 19, 25])
    img, seg = res.gather(idx, 2)
    for j, i in enumerate(idx.tolist()):
        h_img, h_seg = host[i]
        assert torch.equal(h_img, img[j]) and torch.equal(h_seg, seg[j])
    # the centre channel is the slice itself; channel +1 lies halfway between slices z+1 and z+2
    raw = np.load(root / "cases" / "case_000_img.npy").astype(np.float32)
    assert np.array_equal(img[1, 2].float().numpy(), raw[4])
    assert np.allclose(img[1, 3].float().numpy(), 0.5 * (raw[5] + raw[6]), atol=2e-3)


def test_context_mm_is_trained_validated_and_predicted(cache, tmp_path):
    from lungtumor.imaging.volume import Volume
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume
    from lungtumor.training.run import train

    res = train(
        cache, tmp_path / "run", tiny_config(epochs=1, context_slices=2, context_mm=3.0), progress=False
    )
    assert 0 <= res.best_dice <= 1
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.config.train.context_mm == 3.0 and loaded.config.model.in_channels == 5
    hu = np.full((8, 40, 40), -800, np.int16)
    hu[3:5, 15:25, 15:25] = 40
    _, mask = predict_volume(loaded, Volume(hu, spacing=(1.0, 1.0, 2.5)), device=torch.device("cpu"),
                             threshold=0.5, batch_size=4)  # fmt: skip
    assert mask.shape == hu.shape and mask.dtype == np.uint8


def test_validation_dice_leaves_out_tumour_free_patients_predicted_empty():
    from lungtumor.training.module import patient_dice

    sums, counts = (
        torch.tensor([0.8, 0.0, 0.0], dtype=torch.float64),
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
    )
    per_case, mean = patient_dice(sums, counts)
    assert per_case[0] == pytest.approx(0.8) and np.isnan(per_case[1]) and per_case[2] == 0.0
    assert mean == pytest.approx(0.4)  # (0.8 + 0) / 2: the empty tumour-free patient does not count
    assert patient_dice(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))[1] == 1.0


def test_a_checkpoint_from_before_an_option_loads_with_it_off(cache, tmp_path):
    """A checkpoint saved before prep.blob / train.context_mm existed keeps its 3 channels, although the
    demo preset it names has them on now."""
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.training.run import train

    train(cache, tmp_path / "run", tiny_config(epochs=1), progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(path, weights_only=True)
    conf = ck["hyper_parameters"]["lungtumor"]["config"]
    assert conf["preset"] == "demo"
    del conf["prep"]["blob"], conf["train"]["context_mm"]
    torch.save(ck, tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt")
    assert not loaded.config.prep.blob and loaded.config.train.context_mm == 0.0
    assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_ema_weights_are_what_validation_scored_and_predict_loads(cache, tmp_path):
    """``train.ema_decay``: the checkpoint holds the moving average (not the raw weights), validation scored
    exactly those weights, and predict's loader takes them."""
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.training.run import train

    res = train(cache, tmp_path / "run", tiny_config(epochs=2, ema_decay=0.5), progress=False)
    ck = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    avg, raw = ck["state_dict"], ck["current_model_state"]
    assert avg.keys() == raw.keys()
    assert any(not torch.equal(avg[k], raw[k]) for k in avg if avg[k].is_floating_point())
    loaded = load_checkpoint(tmp_path / "run/checkpoints/best.ckpt")
    assert _reference_val_dice(loaded, cache) == pytest.approx(res.best_dice, abs=1e-4)
    with pytest.raises(InputError, match="ema_decay"):
        train(cache, tmp_path / "bad", tiny_config(epochs=1, ema_decay=1.0), progress=False)


def test_ema_cannot_be_switched_on_a_resume_nor_set_for_3d(cache, tmp_path):
    from lungtumor.core.config_io import load_config
    from lungtumor.training.run import train

    train(cache, tmp_path / "run", tiny_config(epochs=1), progress=False)
    with pytest.raises(InputError, match="ema_decay was switched"):
        train(cache, tmp_path / "run", tiny_config(epochs=2, ema_decay=0.9), resume=True, progress=False)
    cfg = load_config(None, "3d")
    cfg.train.ema_decay = 0.9
    with pytest.raises(InputError, match="ema_decay"):
        validate(cfg)
