"""Does a phantom-trained model generalise (issue 23)? Training arms x training seeds, each scored on
today's default phantoms, in-family varied phantoms, held-out-family phantoms and the real CTs.

    python benchmarks/generalisation.py --out OUT [--seeds 0,1,2] [--arms A,B] [--quick] [--jobs 2]
        [--default-cases 40] [--infam-cases 20] [--heldout-cases 20] [--realdata ../shared/realdata]

Arms, each trained with the recipe of ``lungtumor demo`` (the ``demo`` preset: 2D model + nodule detector, its
epochs; the demo's synth settings: 35 labelled phantoms with the rich lesion plan and hilar vessels, phantom
seed 0, prepare's 6 validation cases), with ``train.seed`` = each of --seeds (the training data of an arm is
the same for every seed):

- A "demo (today)": the default phantoms, as ``lungtumor demo`` makes them (seed 0 is ``lungtumor demo``);
- B "varied + hard negatives": the same 35 phantoms made with ``synth --variety in-family`` (its default
  share of tumour-free hard negatives, 0.15), trained with ``train.negative_fraction`` 0.15;
- C "default + varied (no invasion)": A's 35 default phantoms and 35 ``--variety in-family`` phantoms without
  the chest-wall and mediastinal invasion labels (``--without chest_wall,mediastinum``) and with 0.3 hard
  negatives, one 70-case dataset (symbolic links), trained with ``train.negative_fraction`` 0.3 (the same
  steps per epoch as A: training costs the same);
- D "demo (today) + acquisition": A's data (its cache), trained with the acquisition augmentation on half the
  samples (``train.augment.acq_p`` 0.5 and the config's defaults: noise sd 10-60 HU, kernel from a 1-px blur to
  an unsharp mask, thicker slices in 30 % of them; ``training.acquisition``, decision 0036);
- E "default + look-alikes": as C, but the 35 ``--variety in-family`` phantoms keep only the tumour types
  (solid, spiculated, part-solid, ground-glass, cavitating) and the look-alikes that make the held-out family's
  false positives (consolidation, atelectasis, calcified granulomas; ``heldout_breakdown.py``), 0.3 hard
  negatives.

Test sets (made once, never trained on):

- "default": today's held-out phantoms as BENCHMARKS.md "Protocol" defines them: d0 (the demo's 8 test
  phantoms), d1 (seed 11) and d2 (seed 12); --default-cases 40 is 8 + 16 + 16, fewer takes the first cases
  of d1 and d2 (the same phantoms: a synth test case depends on its seed and index only). Its Dice is the
  mean of the three sets' mean per-case Dice ("mean of the three"), as in the protocol;
- "in-family": ``synth --variety in-family`` test phantoms, seed 21 (hard negatives included);
- "held-out": ``synth --variety held-out`` test phantoms, seed 22 (hard negatives included);
- "real": the four real CTs of ``realdata_check.py`` (skipped when --realdata is absent).

Every case is predicted with ``predict_paths`` and the checkpoint's own settings (no 2D mirror TTA, as the demo
predicts) and scored with ``evaluate``: per-case Dice is NaN (left out of the mean) for a tumour-free case
predicted empty and 0 for one with any false positive; FP per case is the mean count of predicted components
touching no tumour voxel; lesion recall is pooled (lesions found / lesions, a lesion found when one component
covers >= 10 % of it). For a real CT also the number of predicted components that touch the tumour (1 = one
lesion).

Each (arm, seed) runs in its own process (``--jobs`` at a time, one torch thread each) and writes
OUT/rows/ARM_sSEED.json; a rerun skips what is done. At the end OUT/generalisation.jsonl holds every run's raw
numbers (one line per run, per-case values included) and OUT/generalisation.md the tables (mean ± sd over the
seeds), also printed. ``--quick`` is a smoke run: tiny phantoms, a few cases, 1 short epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from realdata_check import CASES  # noqa: E402

ARMS = {
    "A": "demo (today)",
    "B": "varied + hard negatives",
    "C": "default + varied (no invasion), 0.3 negatives",
    "D": "demo (today) + acquisition augmentation",
    "E": "default + look-alikes (tumour types, consolidation, atelectasis, granulomas), 0.3 negatives",
}
DATA_OF = {"D": "A"}  # arms that train on another arm's data (and cache)
ACQ_P = 0.5  # arm D: train.augment.acq_p
NEGATIVE_FRACTION = 0.15  # arm B: train.negative_fraction and synth --hard-negatives (the synth default)
NEGATIVE_FRACTION_C = 0.3  # arm C: the same, for its varied half
NO_INVASION = ("chest_wall", "mediastinum")  # arm C's varied phantoms leave the invasion labels out
# arm E's varied phantoms keep only these elements
LOOK_ALIKES = ("tumour_type", "consolidation", "atelectasis", "granulomas")
SETS = ("default", "in-family", "held-out", "real")
LARGE = ("lung2 (pyradiomics)", "LUNG1-001 (NSCLC-Radiomics)", "IBSI CT phantom")
SMALL = "lung1 (pyradiomics)"


def _sizes(a: argparse.Namespace) -> dict:
    """Case counts and phantom size for a full or a --quick run."""
    if a.quick:
        return {
            "train": 6,
            "val": 2,
            "d0": 2,
            "d1": 1,
            "d2": 1,
            "infam": 2,
            "heldout": 2,
            "matrix": 96,
            "slices": 24,
        }
    d = max(0, a.default_cases - 8)
    return {"train": 35, "val": 6, "d0": 8, "d1": (d + 1) // 2, "d2": d // 2, "infam": a.infam_cases,
            "heldout": a.heldout_cases, "matrix": 256, "slices": None}  # fmt: skip


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _done(folder: Path) -> bool:
    return (folder / ".done").is_file()


def _mark(folder: Path) -> None:
    (folder / ".done").write_text("")


# --- data (main process) -------------------------------------------------------------------------------------


def make_data(out: Path, sz: dict, arms: list[str]) -> dict[str, float]:
    """Synthesise the training sets of ``arms`` and the test sets, prepare the arms' caches; seconds per step."""
    from lungtumor.core.config_io import load_config
    from lungtumor.data.phantom import synth_dataset
    from lungtumor.data.variety import ELEMENTS
    from lungtumor.preprocessing.prepare import prepare_dataset

    data = out / "data"
    common = {"matrix": sz["matrix"], "slices": sz["slices"], "workers": 2}
    jobs = {  # name -> synth_dataset kwargs
        "trainA": dict(n_train=sz["train"], n_test=sz["d0"], seed=0, train_lesions="rich", train_hilar_vessels=True),
        "trainB": dict(n_train=sz["train"], n_test=0, seed=0, train_lesions="rich", train_hilar_vessels=True,
                       variety="in-family", hard_negatives=NEGATIVE_FRACTION),
        "trainCv": dict(n_train=sz["train"], n_test=0, seed=0, train_lesions="rich", train_hilar_vessels=True,
                        variety="in-family", variety_without=NO_INVASION, hard_negatives=NEGATIVE_FRACTION_C),
        "trainEv": dict(n_train=sz["train"], n_test=0, seed=0, train_lesions="rich", train_hilar_vessels=True,
                        variety="in-family", variety_without=tuple(e for e in ELEMENTS if e not in LOOK_ALIKES),
                        hard_negatives=NEGATIVE_FRACTION_C),
        "d1": dict(n_train=0, n_test=sz["d1"], seed=11),
        "d2": dict(n_train=0, n_test=sz["d2"], seed=12),
        "infam": dict(n_train=0, n_test=sz["infam"], seed=21, variety="in-family"),
        "heldout": dict(n_train=0, n_test=sz["heldout"], seed=22, variety="held-out"),
    }  # fmt: skip
    sec = {}
    skip = {name for arm, name in (("B", "trainB"), ("C", "trainCv"), ("E", "trainEv")) if arm not in arms}
    for name, kw in jobs.items():
        d = data / name
        if _done(d) or kw["n_train"] + kw["n_test"] == 0 or name in skip:
            continue
        t0 = time.perf_counter()
        _log(f"synth {name}: {kw}")
        _log(synth_dataset(d, **kw, **common))
        _mark(d)
        sec[f"synth_{name}"] = round(time.perf_counter() - t0, 1)
    for arm in {"C", "E"} & set(arms):  # A's phantoms and the arm's varied ones, one dataset
        mixed(data / f"train{arm}", {"a": data / "trainA", "v": data / f"train{arm}v"})
    prep = load_config(None, "demo").prep
    for arm in sorted({DATA_OF.get(x, x) for x in arms}):
        c = out / "cache" / arm
        if _done(c):
            continue
        t0 = time.perf_counter()
        _log(prepare_dataset(data / f"train{arm}", c, prep, val_cases=sz["val"], folds=5, seed=0))
        _mark(c)
        sec[f"prepare_{arm}"] = round(time.perf_counter() - t0, 1)
    return sec


def mixed(dest: Path, parts: dict[str, Path]) -> None:
    """A folder-layout dataset ``dest`` of links to the labelled cases of ``parts`` (prefix -> synth folder),
    each case named PREFIX_NAME."""
    if _done(dest):
        return
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for prefix, src in parts.items():
            for f in sorted((src / sub).glob("*.nii.gz")):
                link = dest / sub / f"{prefix}_{f.name}"
                if not link.is_symlink():
                    link.symlink_to(f.resolve())
    _mark(dest)


def test_sets(out: Path) -> dict[str, list[Path]]:
    """Each scored phantom set's synth folders (the default set is d0, d1 and d2)."""
    data = out / "data"
    default = [
        p for p in (data / "trainA", data / "d1", data / "d2") if any((p / "imagesTs").glob("*.nii.gz"))
    ]
    sets = {"default": default, "in-family": [data / "infam"], "held-out": [data / "heldout"]}
    return {k: v for k, v in sets.items() if any(any((p / "imagesTs").glob("*.nii.gz")) for p in v)}


# --- one run (worker process) --------------------------------------------------------------------------------


def train_run(out: Path, arm: str, seed: int, quick: bool) -> dict:
    """Train the demo recipe for ``arm`` with ``seed`` into OUT/runs/ARM_sSEED/run (skipped when done)."""
    from lungtumor.core.config_io import load_config
    from lungtumor.training.run import train

    folder = out / "runs" / f"{arm}_s{seed}"
    info = folder / "train.json"
    if info.is_file():
        return json.loads(info.read_text())
    cfg = load_config(None, "demo")
    cfg.train.seed = seed
    if arm == "B":
        cfg.train.negative_fraction = NEGATIVE_FRACTION
    if arm in ("C", "E"):
        cfg.train.negative_fraction = NEGATIVE_FRACTION_C
    if arm == "D":
        cfg.train.augment.acq_p = ACQ_P
    if quick:
        cfg.train.epochs, cfg.train.max_steps_per_epoch, cfg.train.batch_size = 1, 3, 4
        cfg.nodule.steps, cfg.nodule.batch_size, cfg.nodule.mine_pool = 3, 8, 64
    t0 = time.perf_counter()
    r = train(out / "cache" / DATA_OF.get(arm, arm), folder / "run", cfg, resume=False, progress=False)
    res = {"train_s": round(time.perf_counter() - t0, 1), "val_dice": r.best_dice, "best_epoch": r.best_epoch,
           "epochs": r.epochs, "negative_fraction": cfg.train.negative_fraction}  # fmt: skip
    info.write_text(json.dumps(res, default=float))
    return res


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def score_phantoms(run: Path, folders: list[Path], pred_root: Path) -> dict:
    """Predict and evaluate the synth folders' test phantoms; per-folder and pooled numbers, per case too."""
    from lungtumor.evaluation.evaluate import evaluate_dirs
    from lungtumor.workflows.predict import PredictOptions, predict_paths

    parts, cases = [], []
    t0 = time.perf_counter()
    for f in folders:
        pred = pred_root / f.name
        res = predict_paths([f / "imagesTs"], run, pred, PredictOptions(progress=False, measure=False))
        bad = [r.error for r in res if r.error]
        if bad:
            raise RuntimeError(f"predict failed on {len(bad)} case(s) of {f}: {bad[0]}")
        s = evaluate_dirs(pred, f / "labelsTs", out_dir=pred)
        a = s.aggregate
        parts.append({"folder": f.name, "n": a["n_cases"], "dice": a["dice"]["mean"],
                      "fp_per_case": a["fp_per_case"]["mean"], "n_gt": a["lesions"]["n_gt"],
                      "n_found": a["lesions"]["n_found"], "n_both_empty": a["n_both_empty"]})  # fmt: skip
        cases += [{"case": f"{f.name}/{c.case}", "dice": _finite(c.dice), "n_gt": c.n_gt_lesions,
                   "n_found": c.n_found, "n_fp": c.n_fp, "gt_ml": c.gt_ml, "pred_ml": c.pred_ml}
                  for c in s.cases]  # fmt: skip
    dices = [p["dice"] for p in parts if p["dice"] is not None]
    n_gt = sum(p["n_gt"] for p in parts)
    free = [c for c in cases if c["n_gt"] == 0]
    return {
        "dice": statistics.mean(dices) if dices else None,  # mean of the folders' mean per-case Dice
        "fp_per_case": statistics.mean(c["n_fp"] for c in cases),
        "recall": sum(p["n_found"] for p in parts) / n_gt if n_gt else None,
        "n_cases": len(cases),
        "n_lesions": n_gt,
        "n_tumour_free": len(free),
        "tumour_free_with_fp": sum(c["n_fp"] > 0 for c in free),
        "fp_per_tumour_case": statistics.mean(c["n_fp"] for c in cases if c["n_gt"]) if n_gt else None,
        "dice_tumour_cases": statistics.mean(c["dice"] for c in cases if c["n_gt"] and c["dice"] is not None)
        if n_gt
        else None,
        "folders": parts,
        "cases": cases,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def score_real(run: Path, realdata: Path, pred: Path) -> dict:
    """Predict the real CTs with the checkpoint's settings; Dice, components on the tumour, FP components."""
    from lungtumor.evaluation.evaluate import evaluate_case
    from lungtumor.evaluation.metrics import match
    from lungtumor.imaging.io import read_mask, read_volume
    from lungtumor.workflows.predict import PredictOptions, predict_paths

    t0 = time.perf_counter()
    rows = {}
    for name, (img_rel, lab_rel) in CASES.items():
        img_p, lab_p = realdata / img_rel, realdata / lab_rel
        r = predict_paths([img_p], run, pred, PredictOptions(progress=False, measure=False))[0]
        if r.error:
            raise RuntimeError(f"{img_p}: {r.error}")
        ct = read_volume(img_p)
        gt, pm = read_mask(lab_p, reference=ct).array, read_mask(r.mask_path, reference=ct).array
        m = evaluate_case(pm, gt, tuple(reversed(ct.spacing)), case=name)
        inter, _, _, _ = match(pm, gt)
        on_tumour = int((inter[1:, 1:].sum(axis=0) > 0).sum())
        rows[name] = {"dice": m.dice, "on_tumour": on_tumour, "n_fp": m.n_fp, "recall": m.lesion_recall,
                      "n_gt": m.n_gt_lesions, "n_found": m.n_found, "gt_ml": m.gt_ml, "pred_ml": m.pred_ml}  # fmt: skip
    n_gt = sum(r["n_gt"] for r in rows.values())
    return {
        "dice": statistics.mean(r["dice"] for r in rows.values()),
        "fp_per_case": statistics.mean(r["n_fp"] for r in rows.values()),
        "recall": sum(r["n_found"] for r in rows.values()) / n_gt if n_gt else None,
        "cases": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def worker(a: argparse.Namespace) -> int:
    """One (arm, seed): train, then score every set; OUT/rows/ARM_sSEED.json."""
    import torch

    torch.set_num_threads(a.threads)
    arm, seed = a.task.split(":")
    seed_i = int(seed)
    row_p = a.out / "rows" / f"{arm}_s{seed_i}.json"
    t0 = time.perf_counter()
    tr = train_run(a.out, arm, seed_i, a.quick)
    _log(f"{arm}:{seed_i} trained in {tr['train_s']:.0f} s (val Dice {tr['val_dice']:.3f})")
    run = a.out / "runs" / f"{arm}_s{seed_i}" / "run"
    row = {"arm": arm, "arm_name": ARMS[arm], "seed": seed_i, "train": tr, "sets": {}}
    for name, folders in test_sets(a.out).items():
        row["sets"][name] = score_phantoms(run, folders, a.out / "pred" / f"{arm}_s{seed_i}")
        _log(
            f"{arm}:{seed_i} {name}: Dice {row['sets'][name]['dice']} in {row['sets'][name]['seconds']:.0f} s"
        )
    if a.realdata.is_dir():
        row["sets"]["real"] = score_real(run, a.realdata, a.out / "pred" / f"{arm}_s{seed_i}" / "real")
        _log(
            f"{arm}:{seed_i} real: Dice {row['sets']['real']['dice']:.3f} in {row['sets']['real']['seconds']:.0f} s"
        )
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = row_p.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=float))
    os.replace(tmp, row_p)
    return 0


# --- tables --------------------------------------------------------------------------------------------------


def _ms(xs: list[float | None], fmt: str = ".3f") -> str:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):{fmt}} ± {sd:{fmt}}"


def _real(r: dict) -> dict | None:
    return r["sets"]["real"]["cases"] if "real" in r["sets"] else None


def _set(r: dict, name: str, key: str) -> float | None:
    return r["sets"].get(name, {}).get(key)


#: Issue 23's goals, each as a test of one run (None: not measured).
GOALS = (
    lambda r: (
        None
        if _real(r) is None
        else all(_real(r)[x]["on_tumour"] == 1 and _real(r)[x]["dice"] >= 0.6 for x in LARGE)
    ),
    lambda r: None if _real(r) is None else _real(r)[SMALL]["n_found"] > 0,
    lambda r: None if _real(r) is None else all(c["n_fp"] <= 1 for c in _real(r).values()),
    lambda r: None if _set(r, "held-out", "dice") is None else _set(r, "held-out", "dice") >= 0.7,
    lambda r: (
        None if _set(r, "held-out", "fp_per_case") is None else _set(r, "held-out", "fp_per_case") <= 1.0
    ),
    lambda r: None if _set(r, "default", "dice") is None else _set(r, "default", "dice") >= 0.62,
)


def _count(goal, rs: list[dict]) -> str:
    """How many of the runs meet ``goal``, of those where it was measured."""
    ok = [o for o in (goal(r) for r in rs) if o is not None]
    return f"{sum(ok)}/{len(ok)}" if ok else "-"


def tables(rows: list[dict]) -> str:
    """The Markdown tables: arm x set (mean ± sd over seeds), the real CTs per case, the issue's goals."""
    arms = sorted({r["arm"] for r in rows})
    by = {arm: sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
    out = [
        "| arm | test set | seeds | Dice | Dice, tumour cases | FP per case | tumour-free cases with an FP | "
        "lesion recall | per-seed Dice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        for s in SETS:
            rs = [r["sets"][s] for r in by[arm] if s in r["sets"]]
            if not rs:
                continue
            n = f"{rs[0].get('n_cases', len(rs[0].get('cases', {})))} cases"
            per = " / ".join(f"{x['dice']:.3f}" if x["dice"] is not None else "-" for x in rs)
            free = (
                "-"
                if s == "real"
                else " / ".join(f"{x['tumour_free_with_fp']}/{x['n_tumour_free']}" for x in rs)
            )
            out.append(f"| {ARMS[arm]} | {s} ({n}) | {len(rs)} | {_ms([x['dice'] for x in rs])} | "
                       f"{_ms([x.get('dice_tumour_cases') for x in rs])} | {_ms([x['fp_per_case'] for x in rs], '.2f')} | "
                       f"{free} | {_ms([x['recall'] for x in rs])} | {per} |")  # fmt: skip
    if any("real" in r["sets"] for r in rows):
        out += ["", "Real CTs, per case (mean ± sd over seeds; per seed: Dice / components on the tumour / FP "
                "components):", "",
                "| arm | CT | Dice | components on tumour | FP components | per seed |", "|---|---|---|---|---|---|"]  # fmt: skip
        for arm in arms:
            rs = [r["sets"]["real"]["cases"] for r in by[arm] if "real" in r["sets"]]
            for ct in CASES:
                c = [x[ct] for x in rs]
                per = ", ".join(f"{x['dice']:.2f}/{x['on_tumour']}/{x['n_fp']}" for x in c)
                out.append(f"| {ARMS[arm]} | {ct} | {_ms([x['dice'] for x in c])} | "
                           f"{_ms([x['on_tumour'] for x in c], '.1f')} | {_ms([x['n_fp'] for x in c], '.1f')} | {per} |")  # fmt: skip
    out += ["", "Issue 23's goals, runs (seeds) meeting each:", "",
            "| arm | 3 large real tumours: one lesion, Dice >= 0.6 | lung1 nodule found | <= 1 FP per real CT | "
            "held-out family Dice >= 0.7 | held-out family <= 1 FP per case | default phantoms >= 0.62 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in arms:
        cells = " | ".join(_count(goal, by[arm]) for goal in GOALS)
        out.append(f"| {ARMS[arm]} ({len(by[arm])} seeds) | {cells} |")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (train.seed), comma-separated")
    ap.add_argument(
        "--arms",
        default="A,B",
        help="A (demo today), B (varied + hard negatives), C (default + varied), D (A + acquisition), "
        "E (default + look-alikes)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny phantoms, few cases, 1 short epoch")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained and scored at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--default-cases", type=int, default=40, help="today's phantoms: d0 (8) + d1 + d2")
    ap.add_argument("--infam-cases", type=int, default=20)
    ap.add_argument("--heldout-cases", type=int, default=20)
    ap.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    ap.add_argument("--task", help=argparse.SUPPRESS)  # ARM:SEED, run by the main process in a subprocess
    a = ap.parse_args()
    a.out = a.out.resolve()
    if a.task:
        return worker(a)
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    if bad := [x for x in arms if x not in ARMS]:
        ap.error(f"--arms: unknown {bad}; valid: {', '.join(ARMS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not a.realdata.is_dir():
        _log(f"{a.realdata}: not found, the real CTs are skipped")
    timings = make_data(a.out, _sizes(a), arms)
    timings["data_s"] = round(time.perf_counter() - t0, 1)
    _log(f"data ready in {timings['data_s']:.0f} s")
    tasks = [(arm, s) for s in seeds for arm in arms if not (a.out / "rows" / f"{arm}_s{s}.json").is_file()]
    (a.out / "logs").mkdir(exist_ok=True)
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    while tasks or running:
        while tasks and len(running) < a.jobs:
            arm, s = tasks.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(a.out), "--task", f"{arm}:{s}",
                   "--threads", str(a.threads), "--realdata", str(a.realdata)] + (["--quick"] if a.quick else [])  # fmt: skip
            log = (a.out / "logs" / f"{arm}_s{s}.log").open("w")
            _log(f"start {arm}:{s}")
            running.append((f"{arm}:{s}", subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for tag, p in list(running):
            if p.poll() is not None:
                running.remove((tag, p))
                _log(f"{tag} finished (exit {p.returncode})")
                if p.returncode:
                    failed.append(tag)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    rows = []
    for s in seeds:
        for arm in arms:
            p = a.out / "rows" / f"{arm}_s{s}.json"
            if p.is_file():
                rows.append(json.loads(p.read_text()))
    with (a.out / "generalisation.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")
    text = tables(rows) if rows else "no run finished"
    head = f"{len(seeds)} seeds x {len(arms)} arms{' (--quick)' if a.quick else ''}; timings (s): {json.dumps(timings)}"
    per_run = ", ".join(
        f"{r['arm']}:{r['seed']} train {r['train']['train_s']:.0f} s total {r['seconds']:.0f} s" for r in rows
    )
    (a.out / "generalisation.md").write_text(f"{head}\n\nruns: {per_run}\n\n{text}\n")
    print(f"{head}\nruns: {per_run}\n\n{text}")
    if failed:
        _log(f"failed: {', '.join(failed)} (see {a.out / 'logs'})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
