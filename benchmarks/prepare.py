"""Benchmark: ``lungtumor prepare`` against just reading the same NIfTI files.

    python benchmarks/prepare.py [--cases 10] [--matrix 256] [--slices 100] [--data DIR] [--repeat 3]

Writes (or reuses, with ``--data``) a dataset of ``--cases`` labelled cases (``lungtumor.data.phantom.make_case``
when available, otherwise random CT-like volumes), reads every file once to warm the page cache, then times,
alternating in one process, (a) ``read_volume`` of every image and label (the files prepare reads), (b) a
full ``prepare_dataset`` into a fresh folder with its default number of processes and (c) the same with
``workers=1``, for each preparation preset. Prints a table of medians: wall-clock time, and CPU time (user +
system of this process and of the helper processes prepare forks, which a busy shared machine disturbs far
less than wall time). The issue's goal is a wall-clock ratio (b)/(a) of at most 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungtumor.core.presets import preset
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.prepare import prepare_dataset


def _fallback_case(i: int, matrix: int, slices: int) -> tuple[Volume, Volume]:
    """Random but CT-like: air outside an elliptic body, dark lungs, noise, one spherical tumour."""
    rng = np.random.default_rng(i)
    z, y, x = np.ogrid[:slices, :matrix, :matrix]
    c = matrix / 2
    body = ((y - c) / (0.4 * matrix)) ** 2 + ((x - c) / (0.47 * matrix)) ** 2 < 1
    lungs = (((y - c) / (0.3 * matrix)) ** 2 + ((np.abs(x - c) - 0.2 * matrix) / (0.15 * matrix)) ** 2) < 1
    hu = np.where(body, 40.0, -1000.0) + np.zeros((slices, 1, 1))
    hu = np.where(lungs & body, -850.0, hu) + rng.normal(0, 20, (slices, matrix, matrix))
    r = np.sqrt((z - slices / 2) ** 2 * 4 + (y - c) ** 2 + (x - c + 0.2 * matrix) ** 2)
    tumour = r < rng.uniform(6, 15)
    hu[tumour] = 30.0
    s = 350.0 / matrix  # a 35 cm field of view, like a chest CT
    img = Volume(np.clip(hu, -1024, 3071).astype(np.int16), (s, s, 2.5), (-175.0, -175.0, -300.0))
    return img, img.with_array(tumour.astype(np.uint8))


def make_dataset(root: Path, n: int, matrix: int, slices: int, generator: str = "phantom") -> str:
    """Write ``n`` cases into ``root`` (imagesTr, labelsTr, dataset.json); return the generator's name."""
    try:
        if generator != "phantom":
            raise ImportError
        from lungtumor.data.phantom import make_case

        def gen(i: int):
            img, lab, _ = make_case(i, matrix=matrix, slices=slices)
            return img, lab

        source = "lungtumor.data.phantom.make_case"
    except ImportError:
        gen = lambda i: _fallback_case(i, matrix, slices)  # noqa: E731
        source = "random CT-like volumes"
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for i in range(n):
        img, lab = gen(i)
        name = f"lung_{i:03d}"
        write_volume(img, root / "imagesTr" / f"{name}.nii.gz")
        write_volume(lab, root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps({"training": training, "test": [], "modality": {"0": "CT"}})
    )
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--data", type=Path, help="dataset folder to use (written there if it has no dataset.json)"
    )
    ap.add_argument("--presets", default="default,seed2d")
    ap.add_argument(
        "--generator",
        choices=("phantom", "random"),
        default="phantom",
        help="phantom: lungtumor.data.phantom.make_case (if present); random: noisy CT-like volumes",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    try:
        data = args.data or tmp / "data"
        if (data / "dataset.json").exists():
            source = f"existing dataset {data}"
        else:
            t0 = time.perf_counter()
            source = make_dataset(data, args.cases, args.matrix, args.slices, args.generator)
            print(f"wrote {args.cases} cases with {source} in {time.perf_counter() - t0:.1f} s")
        files = sorted(data.glob("imagesTr/*.nii.gz")) + sorted(data.glob("labelsTr/*.nii.gz"))
        vols = [read_volume(f) for f in files]  # warm the page cache
        shapes = sorted({v.shape for v in vols[: len(vols) // 2]})
        mb = sum(f.stat().st_size for f in files) / 1e6
        vox = sum(v.array.size for v in vols[: len(vols) // 2]) / 1e6
        del vols

        def cpu() -> float:
            """CPU seconds of this process and of its finished child processes."""
            me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

        def timed(f) -> tuple[float, float]:
            t, c = time.perf_counter(), cpu()
            f()
            return time.perf_counter() - t, cpu() - c

        def read_all() -> None:
            for f in files:
                read_volume(f)

        rows = []
        load0 = f"{os.getloadavg()[0]:.1f}"
        for name in args.presets.split(","):
            prep = preset(name).prep
            t = {"read": [], "prepare": [], "prepare1": []}
            for r in range(args.repeat):
                for key, workers in (("read", None), ("prepare", None), ("prepare1", 1)):
                    if key == "read":
                        t[key].append(timed(read_all))
                        continue
                    out = tmp / f"cache_{name}_{key}_{r}"
                    t[key].append(
                        timed(lambda o=out, p=prep, w=workers: prepare_dataset(data, o, p, workers=w))
                    )
                    shutil.rmtree(out)
            med = {k: [statistics.median(x) for x in zip(*v, strict=True)] for k, v in t.items()}
            rows.append((name, f"{prep.norm}/{prep.resize}", med))

        print(
            f"\nmachine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
            f"{os.cpu_count()} CPUs; data: {len(files) // 2} cases ({source}), "
            f"shapes (z,y,x) {shapes[0]}..{shapes[-1]}, {vox:.0f} Mvoxel CT, {mb:.0f} MB .nii.gz "
            f"(images + labels); median of {args.repeat}"
        )
        print(
            f"load average before: {load0}, after: {os.getloadavg()[0]:.1f}; "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            "| preset | recipe | read wall (s) | prepare wall (s) | **wall ratio** | 1-process wall ratio "
            "| read CPU (s) | prepare CPU (s) | CPU ratio |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, recipe, m in rows:
            (aw, ac), (bw, bc), (sw, _) = m["read"], m["prepare"], m["prepare1"]
            print(
                f"| {name} | {recipe} | {aw:.2f} | {bw:.2f} | **{bw / aw:.2f}** | {sw / aw:.2f} "
                f"| {ac:.2f} | {bc:.2f} | {bc / ac:.2f} |"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
