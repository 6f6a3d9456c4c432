"""Training-step time of the demo's two networks by memory layout and precision, side by side in one run (CPU).

    python benchmarks/layout_speed.py [--threads 2] [--steps 8]

The 2D model: the ``demo`` preset's UNet (batch 16 of 3 x 96² crops, as it trains). The nodule detector: the
``demo`` preset's ``NodulePatchNet`` (batch 64 of 16³ cubes). Each variant: forward, BCE loss, backward and one
Adam step on random data; the median of ``--steps`` steps after one warm-up is printed. Ratios only: run it
with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _time_steps(net: torch.nn.Module, x: torch.Tensor, bf16: bool, steps: int) -> float:
    """Median seconds of a training step; ``net`` returns logits or (score, logits)."""
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ts = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(bce(o.float(), torch.zeros_like(o, dtype=torch.float32)) for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ts.append(time.perf_counter() - t0)
    ts = sorted(ts[1:])
    return ts[len(ts) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lungtumor.core.config_io import load_config
    from lungtumor.models import create_model
    from lungtumor.models.nodule3d import NodulePatchNet

    cfg = load_config(None, "demo")
    nets = {
        "2D UNet (demo), 16 x 3 x 96²": (
            lambda: create_model(cfg.model),
            (16, cfg.model.in_channels, 96, 96),
            torch.channels_last,
        ),
        "nodule detector, 64 x 16³": (
            lambda: NodulePatchNet(cfg.nodule.channels),
            (64, 1, cfg.nodule.patch, cfg.nodule.patch, cfg.nodule.patch),
            torch.channels_last_3d,
        ),
    }
    print(f"training step, median of {args.steps}, {args.threads} threads\n")
    print("| network | precision | layout | ms per step |\n|---|---|---|---|")
    for name, (make, shape, cl) in nets.items():
        for bf16 in (True, False):
            for layout in ("channels-last", "contiguous"):
                torch.manual_seed(0)
                net, x = make(), torch.randn(*shape)
                if layout == "channels-last":
                    net, x = net.to(memory_format=cl), x.contiguous(memory_format=cl)
                ms = 1000 * _time_steps(net, x, bf16, args.steps)
                print(f"| {name} | {'bf16' if bf16 else 'fp32'} | {layout} | {ms:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
