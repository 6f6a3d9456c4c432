"""PyTorch against onnxruntime on the CPU: the same models, the same phantom CT, side by side in one run.

    python benchmarks/onnx_speed.py [--matrix 512] [--slices 150] [--repeats 3] [--threads 2] [--models demo,3d]
        [--out DIR]

On 2 shared CPU cores one 3D predict of 512x512x150 took over 13 minutes (36 windows): the record's 3D rows
are ``--models 3d --slices 48`` (9 windows), its 2D rows ``--models demo --slices 150``.

Two untrained models of the presets' architectures (timing does not depend on the weights, as in
``predict_speed.py``): ``demo`` (2D UNet-16 on 192² slices, with its 3D nodule detector) and ``3d`` (3D UNet-32
of depth 5, Gaussian sliding windows of 64x128x128 at 1.55x1.55x2.5 mm, as trained in BENCHMARKS.md "3D vs 2D").
Each is predicted as a checkpoint with PyTorch (float32; for a model with a detector also without predict's
side thread, as onnxruntime runs; and bf16 where ``--precision auto`` would choose it: a CPU with native bf16,
2D only) and as its ``lungtumor export --format onnx`` folder with onnxruntime
(float32), through ``predict_paths`` (read, predict, postprocess, write, measure). The variants of one model
take turns, ``--repeats`` times; the table gives the median wall time of the whole call, the median of the
manifest's ``predict`` step (the networks, the frame transforms and the detector's candidate search), the
seconds inside the networks' calls (torch's global module hooks around the outermost module: the torch network
or the onnxruntime session), the speed-ups over PyTorch float32 of both, and the Dice of each mask with PyTorch
float32's (and its voxel count: an untrained model's mask is large or empty). Decision record: docs/decisions/0030-onnxruntime-on-cpu.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: The 3D model's plan (spacing x, y, z mm; patch z, y, x voxels): the Task06 plan of BENCHMARKS "3D vs 2D".
SPACING_3D, PATCH_3D = (1.55, 1.55, 2.5), (64, 128, 128)


def untrained(preset: str, path: Path) -> Path:
    """An untrained checkpoint of ``preset`` (the 3D one with the plan above), in our checkpoint format."""
    import torch

    from lungtumor.core.config_io import load_config, to_dict
    from lungtumor.inference.detector import CKPT_KEY
    from lungtumor.models import build_model, is_3d
    from lungtumor.models.nodule3d import NodulePatchNet
    from lungtumor.training.patches import plan_pools

    cfg = load_config(None, preset)
    stats = {"mean": -500.0, "std": 500.0}
    if is_3d(cfg):
        v = cfg.vol3d
        v.target_spacing, v.patch_size = SPACING_3D, PATCH_3D
        v.anisotropic_levels = sum(p[0] == 1 for p in plan_pools(SPACING_3D, cfg.model.depth, -1))
        stats = {"clip_lo": -200.0, "clip_hi": 250.0, "mean": 30.0, "std": 80.0}
    torch.manual_seed(0)
    net = build_model(cfg)
    info = {"config": to_dict(cfg), "stats": stats, "prep": to_dict(cfg.prep)}
    ck = {
        "state_dict": {f"net.{k}": t for k, t in net.state_dict().items()},
        "hyper_parameters": {"lungtumor": info},
    }
    if cfg.nodule.enabled:  # an untrained detector: candidates are found and scored as with a trained one
        ck[CKPT_KEY] = NodulePatchNet(cfg.nodule.channels).state_dict()
    torch.save(ck, path)
    return path


class NetworkClock:
    """Seconds spent inside the outermost ``nn.Module`` calls (the networks, torch or onnxruntime), through
    torch's global module hooks, summed over threads (with predict's side thread, the 2D model and the
    detector overlap: their seconds add up)."""

    def __init__(self) -> None:
        import threading

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self.seconds, self._local, self._lock = 0.0, threading.local(), threading.Lock()
        register_module_forward_pre_hook(self._pre)
        register_module_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.t0 = time.perf_counter()
        self._local.depth = depth + 1

    def _post(self, module, args, out) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            with self._lock:
                self.seconds += time.perf_counter() - self._local.t0


def run_once(
    ct: Path, model: Path, out: Path, precision: str, threads: int, clock: NetworkClock, side: bool
) -> list[float]:
    """[wall seconds of predict_paths, the manifest's ``predict`` step, seconds in the networks] of one CT;
    ``side`` False: no side thread for the detector (``PredictOptions.overlap``)."""
    from lungtumor.workflows.predict import PredictOptions, predict_paths

    shutil.rmtree(out, ignore_errors=True)
    opts = PredictOptions(device="cpu", precision=precision, threads=threads, progress=False, overlap=side)
    t0, net0 = time.perf_counter(), clock.seconds
    (res,) = predict_paths([ct], [model], out, opts)
    wall = time.perf_counter() - t0
    if res.error:
        raise SystemExit(f"{model}: {res.error}")
    case = json.loads((out / "predict_manifest.json").read_text())["cases"][0]
    return [wall, float(case["timings"]["predict"]), clock.seconds - net0]


def dice_with(a: Path, b: Path) -> tuple[float, int]:
    """(Dice of two mask files, 1.0 when both are empty; voxels of the second)."""
    import numpy as np

    from lungtumor.imaging.io import read_mask

    x, y = read_mask(a).array != 0, read_mask(b).array != 0
    s = int(x.sum()) + int(y.sum())
    return (1.0 if s == 0 else 2.0 * int(np.count_nonzero(x & y)) / s), int(y.sum())


def bench_model(
    name: str, ckpt: Path, onnx_dir: Path, ct: Path, tmp: Path, args, clock: NetworkClock
) -> list[dict]:
    """Rows of one model: PyTorch float32 (2D with a detector: also without predict's side thread, as
    onnxruntime runs), PyTorch bf16 (2D on a bf16 CPU), onnxruntime."""
    from lungtumor.core.runtime import cpu_has_bf16
    from lungtumor.inference.checkpoint import load_any
    from lungtumor.models import is_3d

    m = load_any(ckpt)
    variants = [("torch", ckpt, "32", True)]
    if m.nodule is not None:  # the detector beside the 2D batches in a side thread: torch networks only
        variants.append(("torch, no side thread", ckpt, "32", False))
    if cpu_has_bf16() and not is_3d(m.config):  # what --precision auto runs (3D: float32)
        variants.append(("torch", ckpt, "bf16", True))
    variants.append(("onnxruntime", onnx_dir, "auto", True))
    times: dict[int, list[list[float]]] = {i: [] for i in range(len(variants))}
    for r in range(args.repeats):
        order = list(range(len(variants)))
        order = order if r % 2 == 0 else order[::-1]  # take turns: neither always runs first
        for i in order:
            backend, model, prec, side = variants[i]
            times[i].append(run_once(ct, model, tmp / f"{name}-{i}", prec, args.threads, clock, side))
            t = times[i][-1]
            print(
                f"{name} {backend} {prec} run {r + 1}: {t[0]:.2f} s, networks {t[2]:.2f} s", file=sys.stderr
            )
    base, base_net = (statistics.median(t[k] for t in times[0]) for k in (0, 2))
    rows = []
    for i, (backend, _, prec, _) in enumerate(variants):
        wall, step, net = (statistics.median(t[k] for t in times[i]) for k in range(3))
        mask = tmp / f"{name}-{i}" / "ct_tumour.nii.gz"
        rows.append({
            "model": name, "backend": backend, "precision": "32" if prec == "auto" else prec,
            "seconds": wall, "runs": [round(t[0], 2) for t in times[i]], "predict_step_s": step,
            "network_s": net, "speedup": base / wall, "network_speedup": base_net / net,
        })  # fmt: skip
        rows[-1]["dice_vs_torch32"], rows[-1]["mask_voxels"] = dice_with(
            tmp / f"{name}-0" / "ct_tumour.nii.gz", mask
        )
    return rows


def table(rows: list[dict], head: str) -> str:
    lines = [
        head, "",
        "| model | backend | precision | seconds (median) | runs | predict step (s) | networks (s) | x torch fp32 | networks x torch fp32 | Dice vs torch fp32 | mask voxels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['seconds']:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in r['runs'])} | {r['predict_step_s']:.2f} | {r['network_s']:.2f} | "
            f"{r['speedup']:.2f} | {r['network_speedup']:.2f} | "
            f"{r['dice_vs_torch32']:.4f} | {r['mask_voxels']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant (the median is shown)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of torch and onnxruntime (default 2)")
    ap.add_argument("--models", default="demo,3d", help="presets to time, comma-separated")
    ap.add_argument("--out", type=Path, help="folder for onnx_speed.md / onnx_speed.json")
    args = ap.parse_args()

    import torch

    from lungtumor.data.phantom import make_case
    from lungtumor.imaging.io import write_volume
    from lungtumor.workflows.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lt-onnx-speed-"))
    atexit.register(shutil.rmtree, tmp, True)
    img, _, _ = make_case(7, matrix=args.matrix, slices=args.slices)
    write_volume(img, tmp / "ct.nii.gz")
    rows, clock = [], NetworkClock()
    for preset in args.models.split(","):
        ckpt = untrained(preset, tmp / f"{preset}.ckpt")
        export_onnx(ckpt, tmp / f"{preset}_onnx")
        rows += bench_model(preset, ckpt, tmp / f"{preset}_onnx", tmp / "ct.nii.gz", tmp, args, clock)
    import onnxruntime

    load = os.getloadavg()
    head = (
        f"predict on the CPU, {args.slices}x{args.matrix}x{args.matrix} phantom CT (spacing "
        f"{', '.join(f'{s:.2f}' for s in img.spacing)} mm), {args.threads} threads, untrained weights; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    text = table(rows, head)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "onnx_speed.md").write_text(text + "\n")
        (args.out / "onnx_speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
