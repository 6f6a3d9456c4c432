"""End-to-end prediction time, CPU use and peak memory on a 512x512x300 phantom CT, old tree beside new.

    python benchmarks/predict_speed.py [--device cpu|cuda] [--out DIR] [--model CKPT ...]
    python benchmarks/predict_speed.py --model CKPT --old /tmp/oldtree [--serial] [--rounds 2] [--cases 3]

Each variant runs in its own subprocess: it imports lungtumor, loads the model, records its RSS (the baseline:
libraries + model), then runs ``predict_paths`` on the CT, reading and writing included, and reports the wall
time, the CPU time of all its threads (user + system) and the peak RSS above the baseline. Issue 25's goals on
2 CPU cores: <= 4 s, CPU time / wall time >= 1.6 (both cores busy), peak RAM beyond libraries and model <=
2.5x the float32 size of the input; <= 1 s on an H100 (issue 4).

``--old TREE`` (a ``git worktree add TREE <commit>`` made before a change) runs the same child code with
TREE/src on the path instead, alternating old and new in every round so that drift of the machine hits both,
and checks that both trees write the same mask voxels. ``--serial`` also runs the new tree with
``PredictOptions(overlap=False)``, one stage after the other. ``--cases N`` predicts a folder of N copies of
the CT (the overlap of consecutive cases; the time per case is reported).

Without ``--model``, untrained checkpoints of the presets' architectures are built (timing does not depend on
the weights, but an untrained model makes huge masks: time a trained one). Numbers go in BENCHMARKS.md with
the machine and command.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import dataclasses, hashlib, json, resource, sys, time, torch
from lungtumor.workflows.predict import PredictOptions, predict_paths
from lungtumor.inference.checkpoint import load_checkpoint
from lungtumor.imaging.io import read_volume
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
load_checkpoint(args["model"])  # warm the import of everything the loader needs
if args["device"] == "cuda":  # load the CUDA, cuBLAS and cuDNN libraries before the baseline: they are libraries
    a = torch.zeros(1, 1, 8, 8, device="cuda")
    (torch.nn.functional.conv2d(a, torch.zeros(1, 1, 3, 3, device="cuda")) @ torch.zeros(8, 8, device="cuda")).sum().item()
base = rss_mb()
kw = dict(device=args["device"], precision=args["precision"], threads=args["threads"], measure=True,
          postprocess=True, tta=args["tta"])
if args["overlap"] is not None:  # a tree before issue 25 has no such option: it is serial
    if "overlap" not in {f.name for f in dataclasses.fields(PredictOptions)}:
        raise SystemExit("this tree has no PredictOptions.overlap")
    kw["overlap"] = args["overlap"]
opts = PredictOptions(**kw)
if args["device"] == "cuda":  # one warm-up so CUDA context and cuDNN autotune are not timed
    predict_paths([args["ct"]], args["model"], args["out"], opts)
    torch.cuda.synchronize()
t0, c0 = time.perf_counter(), cpu_s()
res = predict_paths([args["ct"]], args["model"], args["out"], opts)
dt, cpu = time.perf_counter() - t0, cpu_s() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
bad = [r.error for r in res if r.error]
assert not bad, bad[0]
h = hashlib.md5()
for r in res:  # the voxels of every mask (not the file bytes: compression may differ between versions)
    a = read_volume(r.mask_path).array
    h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "baseline_mb": base, "peak_mb": peak,
                  "cases": len(res), "mask_md5": h.hexdigest()}))
"""


def make_ct(path: Path, matrix: int, slices: int) -> None:
    """Write one phantom CT (int16 HU NIfTI) in a subprocess, so its generation memory is not counted."""
    code = (
        "import sys; from lungtumor.data.phantom import make_case; from lungtumor.imaging.io import write_volume; "
        f"img, _, _ = make_case(7, matrix={matrix}, slices={slices}); write_volume(img, sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=_env())


def _env(tree: Path = ROOT) -> dict:
    """The environment of a child process that imports lungtumor from ``tree``'s ``src/``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree / "src") + os.pathsep + env.get("PYTHONPATH", "")
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


def run_variant(tree: Path, child: dict) -> dict:
    """One child process predicting with the code of ``tree`` (its ``src/`` first on the path)."""
    r = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True, env=_env(tree)
    )
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def inputs(tmp: Path, ct: Path, cases: int) -> Path:
    """The CT itself, or a folder of ``cases`` links to it."""
    if cases <= 1:
        return ct
    folder = tmp / "cases"
    folder.mkdir(exist_ok=True)
    for n in range(cases):
        link = folder / f"ct{n:02d}.nii.gz"
        if not link.exists():
            link.symlink_to(ct)
    return folder


def table(rows: list[dict], head: str, input_mb: float) -> str:
    """The Markdown table of ``rows`` (one per run), with the mask check per model and precision."""
    lines = [
        head,
        "",
        "| code | model | precision | round | seconds | s per case | CPU s | CPU / wall | peak RSS above "
        "baseline (MB) | x float32 input | mask voxels (md5) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['code']} | {r['model']} | {r['precision']} | {r['round']} | failed: {r['error']} "
                         "| | | | | | |")  # fmt: skip
            continue
        extra = r["peak_mb"] - r["baseline_mb"]
        lines.append(
            f"| {r['code']} | {r['model']} | {r['precision']} | {r['round']} | {r['seconds']:.2f} | "
            f"{r['seconds'] / r['cases']:.2f} | {r['cpu_seconds']:.2f} | {r['cpu_seconds'] / r['seconds']:.2f} | "
            f"{extra:.0f} | {extra / input_mb:.2f} | {r['mask_md5'][:8]} |"
        )
    groups: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if "mask_md5" in r:
            groups.setdefault((r["model"], r["precision"]), set()).add(r["mask_md5"])
    if len({r["code"] for r in rows}) > 1 or len({r["round"] for r in rows}) > 1:
        same = all(len(v) == 1 for v in groups.values())
        lines += ["", f"Mask voxels identical across code versions and rounds: {'yes' if same else 'NO'}"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as on our CI machines)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument(
        "--model", type=Path, action="append", help="checkpoint(s) to time instead of untrained presets"
    )
    ap.add_argument(
        "--precision", nargs="+", default=["32", "bf16"], help="precisions to time (32, bf16, auto)"
    )
    ap.add_argument("--old", type=Path, help="an older tree (git worktree) to run beside this one")
    ap.add_argument("--serial", action="store_true", help="also this tree with overlap=False")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, old and new alternating in each")
    ap.add_argument("--cases", type=int, default=1, help="predict a folder of this many copies of the CT")
    ap.add_argument("--ct", type=Path, help="an existing CT instead of the phantom")
    ap.add_argument("--out", type=Path, help="folder for predict_speed.md / predict_speed.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lt-predict-speed-"))
    atexit.register(shutil.rmtree, tmp, True)  # the 512x512x300 CT and outputs: about 190 MB
    ct = args.ct
    if ct is None:
        ct = tmp / "ct512.nii.gz"
        make_ct(ct, args.matrix, args.slices)
    shape = _shape(ct)
    input_mb = float(np.prod(shape)) * 4 / 2**20

    # (name, checkpoint, precision, TTA: None = the checkpoint's setting)
    variants: list[tuple[str, Path, str, bool | None]] = []
    if args.model:
        for m in args.model:
            variants += [(m.name, m, p, None) for p in args.precision]
    else:
        demo = untrained_checkpoint("demo", tmp / "demo.ckpt")
        default = untrained_checkpoint("default", tmp / "default.ckpt")
        for name, m in (("demo: UNet-16, 192², 2.0 mm", demo), ("default: UNet-32, 256², 1.5 mm", default)):
            variants += [(name, m, p, None) for p in args.precision]
    codes: list[tuple[str, Path, bool | None]] = []
    if args.old:
        codes.append((f"old ({args.old.name})", args.old.resolve(), None))
    codes.append(("new", ROOT, True if args.old or args.serial else None))
    if args.serial:
        codes.append(("new, serial", ROOT, False))
    src = inputs(tmp, ct, args.cases)
    rows = []
    for rnd in range(1, args.rounds + 1):
        for name, model, prec, tta in variants:
            for code, tree, overlap in codes if rnd % 2 else codes[::-1]:
                child = {"model": str(model), "ct": str(src), "out": str(tmp / "out"), "device": args.device,
                         "precision": prec, "threads": args.threads, "tta": tta, "overlap": overlap}  # fmt: skip
                shutil.rmtree(tmp / "out", ignore_errors=True)
                r = run_variant(tree, child)
                rows.append({"code": code, "model": name, "precision": prec, "round": rnd, **r})
                print(
                    f"{code}, {name}, {prec}, round {rnd}: {r.get('seconds', r.get('error'))}",
                    file=sys.stderr,
                )
    head = (
        f"predict, {shape[0]}x{shape[1]}x{shape[2]} CT ({input_mb:.0f} MB as float32), {args.cases} case(s), "
        f"device {args.device}, {args.threads} threads, read + predict + postprocess + write + measure"
    )
    text = table(rows, head, input_mb)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "predict_speed.md").write_text(text + "\n")
        (args.out / "predict_speed.json").write_text(json.dumps(rows, indent=1))
    return 0


def _shape(ct: Path) -> tuple[int, int, int]:
    """(z, y, x) of a CT, from its header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ct))
    reader.ReadImageInformation()
    x, y, z = reader.GetSize()[:3]
    return z, y, x


if __name__ == "__main__":
    raise SystemExit(main())
