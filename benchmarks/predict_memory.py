"""Where ``predict``'s peak memory is: the peak RSS of each step of ``predict_paths`` on one CT (Linux only).

    python benchmarks/predict_memory.py --model CKPT [--ct CT] [--precision bf16|32] [--no-lung-gate]

Without ``--ct`` the 300x512x512 phantom of ``benchmarks/predict_speed.py`` is written first (in a subprocess).
The steps (reading, preprocessing, the model, the nodule detector, restoring to the input grid, postprocessing,
writing, measuring) are wrapped; before each, the peak RSS is reset (``/proc/self/clear_refs``), after it the
step's peak and the RSS are printed in MB above the baseline (libraries + model loaded) and as multiples of the
input's float32 size, the unit of issue #4's goal (<= 3x), with the step's wall time. Run it with a trained model: the
postprocessing and measuring costs depend on what the model finds.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained checkpoint or run folder")
    ap.add_argument("--ct", type=Path, help="CT to predict (default: the 300x512x512 phantom)")
    ap.add_argument("--precision", default="bf16", help="32 or bf16 (default bf16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-lung-gate", action="store_true", help="predict without the lung gate")
    args = ap.parse_args()

    import torch

    import lungtumor.inference.slices as sl
    import lungtumor.workflows.predict as wp
    from lungtumor.imaging.io import read_volume
    from lungtumor.inference.checkpoint import load_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="lt-predict-memory-"))
    atexit.register(shutil.rmtree, tmp, True)  # the 512x512x300 CT and outputs: about 190 MB
    ct = args.ct
    if ct is None:
        from predict_speed import make_ct

        ct = tmp / "ct512.nii.gz"
        make_ct(ct, 512, 300)
    torch.set_num_threads(args.threads)
    load_checkpoint(args.model)
    base = _status_mb("VmRSS")
    rows: list[tuple[str, float, float, float]] = []

    def wrap(mod, name: str) -> None:
        fn = getattr(mod, name)

        @functools.wraps(fn)
        def step(*a, **k):
            _reset_peak()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            dt = time.perf_counter() - t0
            rows.append((name, _status_mb("VmHWM") - base, _status_mb("VmRSS") - base, dt))
            return out

        setattr(mod, name, step)

    # the names that predict_paths (workflows.predict) and predict_volume (inference.slices) call, where they look
    # them up at call time: their own module's globals
    for mod, name in [
        (wp, "read_volume"),
        (sl, "preprocess_inputs"),
        (sl, "predict_probabilities"),
        (sl, "detector_probability"),
        (sl, "restore_geometry"),
        (sl, "restore_mask"),
        (wp, "postprocess_mask"),
        (wp, "write_volume"),
        (wp, "measure_lesions"),
    ]:
        if hasattr(mod, name):
            wrap(mod, name)
    opts = wp.PredictOptions(
        device="cpu", precision=args.precision, threads=args.threads, lung_gate=not args.no_lung_gate
    )
    res = wp.predict_paths([ct], args.model, tmp / "out", opts)[0]
    if res.error:
        raise SystemExit(res.error)
    input_mb = read_volume(res.mask_path).array.size * 4 / 2**20  # read after the run: not counted above
    print(
        f"{ct.name}: {input_mb:.0f} MB as float32; precision {args.precision}, lung gate "
        f"{'off' if args.no_lung_gate else 'checkpoint setting'}; {res.summary_line()}"
    )
    print(
        "\n| step | peak RSS above baseline (MB) | x float32 input | RSS after (MB) | seconds |"
        "\n|---|---|---|---|---|"
    )
    for name, peak, after, dt in rows:
        print(f"| {name} | {peak:.0f} | {peak / input_mb:.2f} | {after:.0f} | {dt:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
