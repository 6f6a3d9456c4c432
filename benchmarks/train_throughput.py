"""Training throughput: the seed's setting versus the fast path, side by side, with MFU.

    python benchmarks/train_throughput.py [--out DIR] [--compile] [--tiny]

* seed: fp32, batch 8, per-sample CPU augmentation (scipy, in DataLoader workers), 1-channel 2D input.
* fast: slices resident on the device, batched augmentation on the device (one grid_sample for affine +
  elastic + flip), bf16 autocast, channels_last, big batch, fused Adam; ``--compile`` adds torch.compile.
* fast-noaug: the fast path without augmentation (to show what augmentation costs).

Model FLOPs (forward + backward) are counted with ``torch.utils.flop_counter.FlopCounterMode``; the peak is
measured in this script with a large bf16 matmul (fp32 on the CPU). MFU = slices/s x FLOPs per slice / peak.
Without CUDA (or with ``--tiny``) a small UNet at 64x64 runs for a few seconds so the script can be checked
on a laptop. Needs torch, numpy, scipy and this package's pure modules (no Lightning, SimpleITK or monai).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lungtumor.core.config import AugmentConfig, ModelConfig  # noqa: E402
from lungtumor.models import create_model  # noqa: E402
from lungtumor.training.augment import augment_batch, augment_numpy  # noqa: E402
from lungtumor.training.losses import bce_loss, dice_bce_loss  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float16 noisy slices with a bright disc in every other slice, and uint8 masks."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.5, (n, size, size)).astype(np.float16)
    seg = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, n, 2):
        cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [
            int(rng.integers(size // 32 + 2, size // 8 + 3))
        ]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        seg[i][disc] = 1
        img[i][disc] += 2
    return img, seg


def measure_peak(device: torch.device) -> tuple[float, str]:
    """Measured matmul peak in FLOP/s: bf16 8192^3 on CUDA, fp32 1024^3 on the CPU."""
    if device.type == "cuda":
        n, dt, iters = 8192, torch.bfloat16, 30
    else:
        n, dt, iters = 1024, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t), f"{str(dt).split('.')[-1]} matmul {n}^3"


def flops_per_slice(model: torch.nn.Module, c: int, size: int, device: torch.device, bf16: bool) -> float:
    """Forward + backward FLOPs of ``model`` for one (c, size, size) slice."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, c, size, size, device=device)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / 2


class SeedDataset(torch.utils.data.Dataset):
    """Seed style: one augmented (1, H, W) slice per item, augmented on the CPU with scipy."""

    def __init__(self, img: np.ndarray, seg: np.ndarray, cfg: AugmentConfig) -> None:
        self.img, self.seg, self.cfg = img, seg, cfg

    def __len__(self) -> int:
        return len(self.img)

    def __getitem__(self, i: int):
        rng = np.random.default_rng(i + int(time.time_ns() % 1_000_000))
        im, sg = augment_numpy(self.img[i][None].astype(np.float32), self.seg[i], self.cfg, rng)
        return torch.from_numpy(im), torch.from_numpy(sg[None].astype(np.float32))


def run_seed(args, img, seg, device, peak) -> dict:
    cfg = AugmentConfig(flip=False, intensity_jitter=0.0)
    model = create_model(ModelConfig(base_channels=args.width, depth=args.depth, in_channels=1)).to(device)
    fl = flops_per_slice(model, 1, args.size, device, bf16=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    workers = args.workers
    dl = torch.utils.data.DataLoader(
        SeedDataset(img, seg, cfg), batch_size=8, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip
    it = iter(dl)
    steps, warm = args.seed_steps, 3
    for s in range(steps + warm):
        if s == warm:
            sync(device)
            t = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(dl)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = bce_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    sps = steps * 8 / (time.perf_counter() - t)
    return {"path": "seed", "batch": 8, "precision": "fp32", "augment": f"CPU scipy, {workers} workers",
            "slices_per_s": sps, "gflops_per_slice": fl / 1e9, "mfu": sps * fl / peak}  # fmt: skip


def run_fast(args, img, seg, device, peak, *, augment: bool, compile_: bool) -> dict:
    k = 1
    cuda = device.type == "cuda"
    model = create_model(ModelConfig(base_channels=args.width, depth=args.depth, in_channels=2 * k + 1)).to(
        device
    )
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    fl = flops_per_slice(model, 2 * k + 1, args.size, device, bf16=cuda)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda)
    net = torch.compile(model) if compile_ else model
    vol = torch.from_numpy(img).to(device)
    msk = torch.from_numpy(seg).to(device)
    n = len(vol)
    g = torch.Generator(device=device).manual_seed(0)
    acfg = AugmentConfig()
    b = args.batch

    def step() -> None:
        idx = torch.randint(0, n, (b,), device=device, generator=g)
        ctx = (idx[:, None] + torch.arange(-k, k + 1, device=device)).clamp_(0, n - 1)
        x, y = vol[ctx], msk[idx][:, None]
        if augment:
            x, y = augment_batch(x, y, acfg, g)
        else:
            x, y = x.float(), y.float()
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = net(x)
        loss = dice_bce_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.fast_steps):
        step()
    sync(device)
    sps = args.fast_steps * b / (time.perf_counter() - t)
    name = "fast" + ("" if augment else "-noaug") + ("+compile" if compile_ else "")
    return {"path": name, "batch": b, "precision": "bf16-mixed" if cuda else "fp32",
            "augment": "device, batched" if augment else "none", "slices_per_s": sps,
            "gflops_per_slice": fl / 1e9, "mfu": sps * fl / peak}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for results.json and results.md")
    ap.add_argument(
        "--tiny", action="store_true", help="small model and 64x64 slices (automatic without CUDA)"
    )
    ap.add_argument("--compile", action="store_true", help="also run the fast path with torch.compile")
    ap.add_argument("--batch", type=int, default=0, help="fast-path batch (default 128 on CUDA, 16 tiny)")
    ap.add_argument("--width", type=int, default=0, help="UNet base channels (default 64; 8 tiny)")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--size", type=int, default=0, help="slice size (default 256; 64 tiny)")
    ap.add_argument("--slices", type=int, default=0, help="synthetic slices (default 2048; 128 tiny)")
    ap.add_argument("--seed-steps", type=int, default=0, help="timed seed-path steps (default 40; 5 tiny)")
    ap.add_argument("--fast-steps", type=int, default=0, help="timed fast-path steps (default 40; 5 tiny)")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument(
        "--workers", type=int, default=-1, help="seed-path DataLoader workers (default min(8, CPUs))"
    )
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    args.width = args.width or (8 if tiny else 64)
    args.size = args.size or (64 if tiny else 256)
    args.batch = args.batch or (16 if tiny else 128)
    args.slices = args.slices or (128 if tiny else 2048)
    args.seed_steps = args.seed_steps or (5 if tiny else 40)
    args.fast_steps = args.fast_steps or (5 if tiny else 40)
    args.warmup = args.warmup or (2 if tiny else 10)
    if args.workers < 0:
        args.workers = min(8, os.cpu_count() or 1) if not tiny else 0
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    img, seg = synthetic_slices(args.slices, args.size)
    peak, peak_desc = measure_peak(device)
    rows = [run_seed(args, img, seg, device, peak)]
    rows.append(run_fast(args, img, seg, device, peak, augment=False, compile_=False))
    rows.append(run_fast(args, img, seg, device, peak, augment=True, compile_=False))
    if args.compile:
        rows.append(run_fast(args, img, seg, device, peak, augment=True, compile_=True))
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    meta = {"device": dev, "torch": torch.__version__, "model": f"UNet-{args.width} depth {args.depth}",
            "size": args.size, "peak_tflops": peak / 1e12, "peak_measured_with": peak_desc}  # fmt: skip
    lines = [
        f"device: {dev}; torch {torch.__version__}; {meta['model']} at {args.size}x{args.size}; "
        f"measured peak {peak / 1e12:.3g} TFLOP/s ({peak_desc})",
        "",
        "| path | batch | precision | augmentation | slices/s | GFLOP/slice (fwd+bwd) | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['precision']} | {r['augment']} | {r['slices_per_s']:.0f} | "
            f"{r['gflops_per_slice']:.1f} | {100 * r['mfu']:.1f}% |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        result = {"meta": meta, "args": settings, "rows": rows}
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        (args.out / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
