"""Experiment (session 8): tri-planar 2.5D against axial-only slices, at the demo preset's cost.

    python benchmarks/triplanar_experiment.py OUT --cache CACHE --mode tri|axial [--seed S] [--steps 2000]
        [--threads 1] --test DIR [--test DIR ...]

One 2D UNet-16 (the demo's network, 3 context slices, 96² crops, batch 16, Adam 1e-3 with the package's
warm-up + cosine schedule, bf16 autocast) trains on a prepared demo cache whose cases are resampled along z to
2 mm, so that voxels are isotropic. ``--mode tri`` samples slices of all three orientations (axial, coronal,
sagittal; one shared network); ``--mode axial`` only axial ones (the control, same loop). Prediction: the
checkpoint-free loop below (mirror TTA per slice; ``tri`` averages the three orientations and also scores its
axial view alone), then the demo's postprocessing (20 mm³, flat filter 0.4, lung gate) and ``evaluate`` per
test set. Plain PyTorch, not the Lightning trainer: a one-off measurement, not a feature (BENCHMARKS.md
"Session 8").
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lungtumor.core.config import AugmentConfig, ModelConfig, PrepConfig
from lungtumor.core.config_io import from_dict
from lungtumor.evaluation.evaluate import evaluate_dirs, format_summary
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.models import create_model
from lungtumor.postprocessing.filters import postprocess_mask
from lungtumor.preprocessing.cache import Cache
from lungtumor.preprocessing.frame import preprocess_volume, restore_geometry
from lungtumor.training.augment import augment_crop_batch
from lungtumor.training.losses import dice_bce_loss
from lungtumor.training.trainer import warmup_cosine

ISO = 2.0
CUBE = 192


def to_iso(a: torch.Tensor, dz: float, mode: str) -> torch.Tensor:
    """(z, H, W) -> (z', H, W) at ISO mm along z."""
    nz = max(1, int(round(a.shape[0] * dz / ISO)))
    t = a.float()[None, None]
    r = F.interpolate(t, size=(nz, a.shape[1], a.shape[2]), mode="trilinear", align_corners=False)[0, 0]
    return (r >= 0.5).to(torch.uint8) if mode == "mask" else r


def air_value(stats: dict) -> float:
    """-1000 HU in the cache's normalisation ((HU - mean) / std, both kinds): the padding value."""
    return float((-1000.0 - stats["mean"]) / stats["std"])


def pad_z(a: torch.Tensor, n: int, value: float) -> torch.Tensor:
    z = a.shape[0]
    if z >= n:
        s = (z - n) // 2
        return a[s : s + n]
    lo = (n - z) // 2
    out = torch.full((n, *a.shape[1:]), value, dtype=a.dtype)
    out[lo : lo + z] = a
    return out


def slices(vol: torch.Tensor, o: int, i: torch.Tensor) -> torch.Tensor:
    """vol (Z, Y, X); slices i (B,) along axis o with 1 neighbour each side -> (B, 3, ., .)."""
    n = vol.shape[o]
    idx = (i[:, None] + torch.arange(-1, 2)[None]).clamp(0, n - 1)  # (B, 3)
    if o == 0:
        return vol[idx]  # (B,3,Y,X)
    if o == 1:
        return vol[:, idx].permute(1, 2, 0, 3)  # (Z,B,3,X) -> (B,3,Z,X)
    return vol[:, :, idx].permute(2, 3, 0, 1)  # (Z,Y,B,3) -> (B,3,Z,Y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--mode", choices=["tri", "axial"], default="tri")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test", action="append", default=[])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    cache = Cache.open(a.cache)
    pad_val = air_value(cache.stats)
    names = cache.train
    vols, segs = [], []
    t0 = time.time()
    for n in names:
        dz = cache.cases[n].dz_mm
        v = to_iso(torch.from_numpy(np.array(cache.image(n), dtype=np.float32)), dz, "img")
        s = to_iso(torch.from_numpy(np.array(cache.seg(n))), dz, "mask")
        vols.append(pad_z(v, CUBE, pad_val).to(torch.float16))
        segs.append(pad_z(s, CUBE, 0))
    print(f"iso cache {time.time() - t0:.1f} s", flush=True)
    # table of (case, orientation, index) with tumour flag
    orients = [0, 1, 2] if a.mode == "tri" else [0]
    rows = []
    for c, s in enumerate(segs):
        for o in orients:
            dims = [d for d in range(3) if d != o]
            has = s.amax(dim=dims).bool().numpy()
            for i in range(CUBE):
                rows.append((c, o, i, has[i]))
    rows = np.array(rows, dtype=np.int64)
    tum = rows[:, 3].astype(bool)
    ratio = (~tum).sum() / max(1, tum.sum())
    w = torch.as_tensor(np.where(tum, ratio, 1.0))
    print(f"{len(rows)} slices, {tum.sum()} tumour, ratio {ratio:.2f}", flush=True)
    mcfg = ModelConfig(arch="unet2d", base_channels=16, depth=4, in_channels=3)
    net = create_model(mcfg).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = warmup_cosine(opt, a.steps)
    g = torch.Generator().manual_seed(a.seed)
    aug = AugmentConfig()
    bs = 16
    net.train()
    t0 = time.time()
    for step in range(a.steps):
        pick = torch.multinomial(w, bs, replacement=True, generator=g).numpy()
        imgs, masks = [], []
        for r in rows[pick]:
            c, o, i = int(r[0]), int(r[1]), int(r[2])
            ii = torch.tensor([i])
            imgs.append(slices(vols[c], o, ii))
            masks.append(slices(segs[c], o, ii)[:, 1:2])
        img = torch.cat(imgs).float()
        seg = torch.cat(masks).float()
        img, seg = augment_crop_batch(img, seg, aug, 96, g, 0.67)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(img.contiguous(memory_format=torch.channels_last))
        loss = dice_bce_loss(logits.float(), seg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    print(f"train {time.time() - t0:.0f} s", flush=True)
    torch.save(net.state_dict(), out / "net.pt")
    (out / "meta.json").write_text(json.dumps({"stats": cache.stats, "prep": cache.prep, "mode": a.mode}))
    prep = from_dict(PrepConfig, cache.prep, source=str(cache.root / "cache.json"))
    predict_sets(net, prep, cache.stats, a, out)


@torch.inference_mode()
def predict_iso(net, x: torch.Tensor, orients: list[int]) -> dict[int, torch.Tensor]:
    """x (Z, Y, X) float32 iso, Z padded to /16 -> per orientation prob (Z, Y, X)."""
    net.eval()
    res = {}
    for o in orients:
        p = torch.empty_like(x)
        n = x.shape[o]
        for s in range(0, n, 16):
            i = torch.arange(s, min(s + 16, n))
            b = slices(x, o, i).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pr = torch.sigmoid(net(b).float())[:, 0]
                pr = 0.5 * (pr + torch.sigmoid(net(b.flip(-1)).float())[:, 0].flip(-1))
            if o == 0:
                p[i] = pr
            elif o == 1:
                p[:, i] = pr.permute(1, 0, 2)
            else:
                p[:, :, i] = pr.permute(1, 2, 0)
        res[o] = p
    return res


def predict_case(
    net, prep: PrepConfig, stats, path: Path, orients: list[int]
) -> tuple[Volume, dict[str, np.ndarray]]:
    """One CT -> (its Volume, {"ax": prob, "tri": prob} on its grid); "tri" only with all 3 orientations."""
    vol = read_volume(path)
    x, geom = preprocess_volume(vol, prep, stats)
    dz = float(vol.spacing[2])
    z0 = x.shape[0]
    xi = to_iso(torch.from_numpy(x), dz, "img")
    nz = xi.shape[0]
    zp = int(math.ceil(nz / 16) * 16)
    xp = torch.full((zp, *xi.shape[1:]), air_value(stats))
    xp[:nz] = xi
    probs = predict_iso(net, xp, orients)
    outs = {}
    combos = {"ax": [0]} if orients == [0] else {"ax": [0], "tri": [0, 1, 2]}
    for key, os_ in combos.items():
        p = sum(probs[o] for o in os_) / len(os_)
        p = p[:nz]
        back = F.interpolate(p[None, None], size=(z0, *p.shape[1:]), mode="trilinear", align_corners=False)[
            0, 0
        ]
        outs[key] = restore_geometry(back.numpy(), geom)
    return vol, outs


def predict_sets(net, prep: PrepConfig, stats, a, out: Path) -> None:
    orients = [0, 1, 2] if a.mode == "tri" else [0]
    keys = ["ax", "tri"] if a.mode == "tri" else ["ax"]
    for d in a.test:
        d = Path(d)
        tag = d.name
        for key in keys:
            (out / f"pred_{tag}_{key}").mkdir(exist_ok=True)
        for img in sorted((d / "imagesTs").glob("*.nii.gz")):
            case = img.name[: -len(".nii.gz")]
            vol, outs = predict_case(net, prep, stats, img, orients)
            for key, prob in outs.items():
                m = (prob >= 0.5).astype(np.uint8)
                m = postprocess_mask(m, vol, min_lesion_mm3=20.0, lung_gate=True, min_z_extent_ratio=0.4)
                write_volume(
                    Volume(m, vol.spacing, vol.origin, vol.direction),
                    out / f"pred_{tag}_{key}" / f"{case}_tumour.nii.gz",
                )
        for key in keys:
            s = evaluate_dirs(out / f"pred_{tag}_{key}", d / "labelsTs", out / f"eval_{tag}_{key}")
            print(f"== {tag} {key}\n{format_summary(s)}", flush=True)


if __name__ == "__main__":
    main()
