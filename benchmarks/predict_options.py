"""Which CPU option makes the 2D network step of predict fast: bf16, fewer slices, a smaller frame, ONNX Runtime.

    python benchmarks/predict_options.py --model CKPT [--model CKPT ...] [--repeats 2] [--out DIR]

Issue #4 asks for predict <= 10 s on 2 CPU cores and names the candidates: bf16 on the CPU, cropping to the
body or the lungs, a right-sized net, or ONNX Runtime. ``predict_speed.py`` times the whole of predict; this
script times only the step those options change, the 2D network over the prepared slices of the same
512x512x300 phantom CT, for each checkpoint given (for example a ``default`` preset model, UNet-32 at 1.5 mm
and 256², and the ``demo`` one, UNet-16 at 2 mm and 192²: the right-sized net), side by side in one process:

- ``fp32`` / ``bf16``: torch, channels-last input, as ``predict`` runs it (``inference.slices.predict_probabilities``);
- ``lung slices``: only the slices with the lungs' air plus 30 mm (``imaging.lungs.lung_z_range``; ``predict``
  does this whenever the lung gate is on);
- ``body box``: the frame cut to the bounding box of the body (HU > -500 on the prepared frame, 8 mm margin,
  rounded up to the net's multiple): **not a predict option**, measured to see what it would save;
- ``onnxruntime fp32``: the same net exported to ONNX and run by ONNX Runtime on the CPU (only when
  ``onnxruntime`` and ``onnx`` import: they are not lungtumor dependencies; install them into the venv you run
  this with to get the row).

Each variant runs ``--repeats`` times, interleaved with the others, after one untimed warm-up; the table gives
the median seconds and the ratio to the checkpoint's fp32 row, and checks the probabilities against fp32 (the
largest absolute difference). Weights do not change the time of this step, but use trained checkpoints anyway
so that the numbers line up with ``predict_speed.py``. Numbers go in BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def body_box(x, body_level: float, spacing_mm: float, multiple: int, margin_mm: float = 8.0):
    """(y0, y1, x0, x1) of the frame holding every slice's body, padded by ``margin_mm`` and rounded up to a
    multiple of ``multiple`` pixels. ``x`` is the prepared (z, H, W) input, ``body_level`` the value of -500 HU
    in it."""
    import numpy as np

    body = (x > body_level).any(axis=0)
    ys, xs = np.nonzero(body)
    m = int(np.ceil(margin_mm / spacing_mm))
    H, W = body.shape

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        lo, hi = max(lo - m, 0), min(hi + 1 + m, n)
        size = min(int(np.ceil((hi - lo) / multiple)) * multiple, n)
        lo = min(lo, n - size)
        return lo, lo + size

    return (*span(ys.min(), ys.max(), H), *span(xs.min(), xs.max(), W))


def ort_session(model, channels: int, size: tuple[int, int], path: Path):
    """An ONNX Runtime CPU session of ``model`` (input (B, C, H, W) float32, dynamic batch and size), or
    None when onnxruntime / onnx are not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    dummy = torch.zeros(2, channels, *size)
    try:
        with warnings.catch_warnings():
            # the legacy exporter's deprecation notice, and tracer notes (H, W are fixed per CT here)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.float().eval(), (dummy,), str(path), input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "h", 3: "w"}},
                dynamo=False,
            )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - an exporter that cannot is a row saying so, not a crash
        print(f"onnx export failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_probabilities(sess, x, context_slices: int, z_range, batch_size: int):
    """``predict_probabilities`` with an ONNX Runtime session instead of torch (fp32)."""
    import numpy as np
    import torch

    from lungtumor.preprocessing.cache import stack_context

    lo, hi = z_range
    vol = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = np.zeros(x.shape, dtype=np.float32)
    for start in range(lo, hi, batch_size):
        idx = torch.arange(start, min(start + batch_size, hi))
        xb = stack_context(vol, idx, context_slices, 1.0).contiguous().numpy()
        logits = sess.run(None, {"x": xb})[0]
        out[start : start + len(idx)] = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return out


def time_model(mpath: Path, vol, zr: tuple[int, int], repeats: int, tmp: Path) -> list[dict]:
    """The table's rows for one checkpoint: each variant's median seconds, ratio to fp32 and difference."""
    import numpy as np
    import torch

    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_probabilities
    from lungtumor.preprocessing.frame import preprocess_inputs

    loaded = load_checkpoint(mpath)
    cfg = loaded.config
    if cfg.prep.blob:
        print(f"{mpath}: skipped (blob channel)", file=sys.stderr)
        return []
    net = loaded.model.eval().to(memory_format=torch.channels_last)
    k = cfg.train.context_slices
    x, _, _ = preprocess_inputs(vol, cfg.prep, loaded.stats)
    level = (max(-500.0, cfg.prep.window_hu[0]) - loaded.stats["mean"]) / loaded.stats["std"]
    y0, y1, x0, x1 = body_box(x, level, cfg.prep.spacing_mm, 2**cfg.model.depth)
    xb = np.ascontiguousarray(x[:, y0:y1, x0:x1])
    name = f"{Path(mpath).name}: {cfg.model.arch}-{cfg.model.base_channels}, {x.shape[1]}x{x.shape[2]}"
    full = (0, x.shape[0])

    def torch_run(inp, prec, z):
        return predict_probabilities(
            net, inp, k, device=torch.device("cpu"), batch_size=16, precision=prec, z_range=z
        )

    variants = {
        "fp32, all slices": lambda: torch_run(x, "32", full),
        "bf16, all slices": lambda: torch_run(x, "bf16", full),
        "fp32, lung slices": lambda: torch_run(x, "32", zr),
        "bf16, lung slices": lambda: torch_run(x, "bf16", zr),
        f"bf16, lung slices, body box {y1 - y0}x{x1 - x0}": lambda: torch_run(xb, "bf16", zr),
    }
    sess = ort_session(loaded.model, 2 * k + 1, x.shape[1:], tmp / "net.onnx")
    if sess is not None:
        variants["onnxruntime fp32, all slices"] = lambda: ort_probabilities(sess, x, k, full, 16)
        variants["onnxruntime fp32, lung slices"] = lambda: ort_probabilities(sess, x, k, zr, 16)
    ref = torch_run(x, "32", full)  # also the warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    diffs: dict[str, float] = {}
    lo, hi = zr
    for rep in range(repeats):
        for v, fn in variants.items():
            t0 = time.perf_counter()
            p = fn()
            times[v].append(time.perf_counter() - t0)
            if rep == 0:
                r = ref[lo:hi, y0:y1, x0:x1] if "body box" in v else ref[lo:hi]
                diffs[v] = float(np.abs(p[lo:hi] - r).max())
            del p
    base = statistics.median(times["fp32, all slices"])
    rows = []
    for v in variants:
        s = statistics.median(times[v])
        n = (hi - lo) if "lung" in v else x.shape[0]
        rows.append({"model": name, "variant": v, "slices": n, "seconds": s, "ratio": s / base,
                     "max_abs_diff": diffs[v], "runs": times[v]})  # fmt: skip
    if sess is None:
        rows.append({"model": name, "variant": "onnxruntime", "missing": True})
    return rows


def main() -> int:
    import torch
    from predict_speed import make_ct

    from lungtumor.imaging.io import read_volume
    from lungtumor.imaging.lungs import lung_z_range

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, action="append", required=True, help="2D checkpoint(s) or run folder(s)"
    )
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as on our CI machines)")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (median reported)")
    ap.add_argument("--out", type=Path, help="folder for predict_options.md / .json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="lt-predict-options-"))
    atexit.register(shutil.rmtree, tmp, True)
    ct_path = tmp / "ct.nii.gz"
    make_ct(ct_path, args.matrix, args.slices)
    vol = read_volume(ct_path)
    zr = lung_z_range(vol.array, vol.spacing) or (0, vol.array.shape[0])

    rows = []
    for mpath in args.model:
        rows += time_model(mpath, vol, zr, args.repeats, tmp)

    head = (
        f"2D network step of predict, {args.slices}x{args.matrix}x{args.matrix} phantom CT, {args.threads} "
        f"threads, median of {args.repeats} interleaved runs; diff = max |p - p(fp32, all slices)| on the lung slices"
    )
    lines = [
        head,
        "",
        "| model | variant | slices | seconds | x fp32 all slices | diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("missing"):
            lines.append(
                f"| {r['model']} | onnxruntime | not installed (pip install onnxruntime onnx) | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['slices']} | {r['seconds']:.2f} | {r['ratio']:.2f} | "
            f"{r['max_abs_diff']:.3g} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "predict_options.md").write_text(text + "\n")
        (args.out / "predict_options.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
