"""End-to-end prediction time and peak memory on a 512x512x300 phantom CT.

    python benchmarks/predict_speed.py [--device cpu|cuda] [--out DIR] [--model CKPT ...]

Each variant runs in its own subprocess: it imports lungtumor, loads the model, records its RSS (the baseline:
libraries + model), then runs ``predict_paths`` on the CT, reading and writing included, and reports the wall
time and the peak RSS above the baseline. The issue's goals: <= 10 s on 2 CPU cores, <= 1 s on an H100, and peak
RAM beyond libraries and model <= 3x the float32 size of the input.

Without ``--model``, untrained checkpoints of the presets' architectures are built (timing does not depend on
the weights). Numbers go in BENCHMARKS.md with the machine and command.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import json, resource, sys, time, torch
from lungtumor.workflows.predict import PredictOptions, predict_paths
from lungtumor.inference.checkpoint import load_checkpoint
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
load_checkpoint(args["model"])  # warm the import of everything the loader needs
if args["device"] == "cuda":  # load the CUDA, cuBLAS and cuDNN libraries before the baseline: they are libraries
    a = torch.zeros(1, 1, 8, 8, device="cuda")
    (torch.nn.functional.conv2d(a, torch.zeros(1, 1, 3, 3, device="cuda")) @ torch.zeros(8, 8, device="cuda")).sum().item()
base = rss_mb()
opts = PredictOptions(device=args["device"], precision=args["precision"], threads=args["threads"],
                      measure=True, postprocess=True, tta=args["tta"])
if args["device"] == "cuda":  # one warm-up so CUDA context and cuDNN autotune are not timed
    predict_paths([args["ct"]], args["model"], args["out"], opts)
    torch.cuda.synchronize()
t0 = time.perf_counter()
res = predict_paths([args["ct"]], args["model"], args["out"], opts)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
assert not res[0].error, res[0].error
print(json.dumps({"seconds": dt, "baseline_mb": base, "peak_mb": peak}))
"""


def make_ct(path: Path, matrix: int, slices: int) -> None:
    """Write one phantom CT (int16 HU NIfTI) in a subprocess, so its generation memory is not counted."""
    code = (
        "import sys; from lungtumor.data.phantom import make_case; from lungtumor.imaging.io import write_volume; "
        f"img, _, _ = make_case(7, matrix={matrix}, slices={slices}); write_volume(img, sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=_env())


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def untrained_checkpoint(preset: str, path: Path, **overrides) -> Path:
    """An untrained checkpoint of a preset's architecture and preprocessing, in our checkpoint format."""
    import torch

    from lungtumor.core.config_io import load_config, to_dict
    from lungtumor.models import create_model

    cfg = load_config(None, preset)
    for k, v in overrides.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    torch.manual_seed(0)
    net = create_model(cfg.model)
    ck = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {
            "lungtumor": {
                "config": to_dict(cfg),
                "stats": {"mean": -500.0, "std": 500.0},
                "prep": to_dict(cfg.prep),
            }
        },
    }
    if (
        cfg.nodule.enabled
    ):  # an untrained 3D nodule detector: candidates are found and scored as with a trained one
        from lungtumor.inference.detector import CKPT_KEY
        from lungtumor.models.nodule3d import NodulePatchNet

        ck[CKPT_KEY] = NodulePatchNet(cfg.nodule.channels).state_dict()
    torch.save(ck, path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as on our CI machines)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument(
        "--model", type=Path, action="append", help="checkpoint(s) to time instead of untrained presets"
    )
    ap.add_argument("--out", type=Path, help="folder for results.json / results.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lt-predict-speed-"))
    atexit.register(shutil.rmtree, tmp, True)  # the 512x512x300 CT and outputs: about 190 MB
    ct = tmp / "ct512.nii.gz"
    make_ct(ct, args.matrix, args.slices)
    input_mb = args.matrix * args.matrix * args.slices * 4 / 2**20

    # (name, checkpoint, precision, TTA: None = the checkpoint's setting)
    variants: list[tuple[str, Path, str, bool | None]] = []
    if args.model:
        for m in args.model:
            variants += [(m.name, m, "32", None), (m.name, m, "bf16", None)]
            variants.append((f"{m.name}, TTA off", m, "bf16", False))
    else:
        demo = untrained_checkpoint("demo", tmp / "demo.ckpt")
        default = untrained_checkpoint("default", tmp / "default.ckpt")
        variants = [
            ("demo: UNet-16, 192², 2.0 mm", demo, "32", None),
            ("demo: UNet-16, 192², 2.0 mm", demo, "bf16", None),
            ("default: UNet-32, 256², 1.5 mm", default, "32", None),
            ("default: UNet-32, 256², 1.5 mm", default, "bf16", None),
        ]
    rows = []
    for name, model, prec, tta in variants:
        child = {
            "model": str(model),
            "ct": str(ct),
            "out": str(tmp / "out"),
            "device": args.device,
            "precision": prec,
            "threads": args.threads,
            "tta": tta,
        }
        r = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True, env=_env()
        )
        if r.returncode != 0:
            rows.append(
                {"model": name, "precision": prec, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
            )
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        extra = m["peak_mb"] - m["baseline_mb"]
        rows.append(
            {
                "model": name,
                "precision": prec,
                "seconds": m["seconds"],
                "extra_rss_mb": extra,
                "extra_over_input": extra / input_mb,
            }
        )
    head = (
        f"predict, {args.slices}x{args.matrix}x{args.matrix} phantom CT ({input_mb:.0f} MB as float32), "
        f"device {args.device}, {args.threads} threads, read + predict + postprocess + write + measure"
    )
    lines = [
        head,
        "",
        "| model | precision | seconds | peak RSS above baseline (MB) | x float32 input |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | failed: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['seconds']:.2f} | {r['extra_rss_mb']:.0f} | "
                f"{r['extra_over_input']:.2f} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "predict_speed.md").write_text(text + "\n")
        (args.out / "predict_speed.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
