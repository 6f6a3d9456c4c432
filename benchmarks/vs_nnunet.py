"""Benchmark: lungtumor's presets against nnU-Net v2 (2d, 3d_fullres) on the same phantoms and wall-clock budget.

    python benchmarks/vs_nnunet.py [--budget-s 180] [--cases 12] [--test-cases 3] [--matrix 96] [--slices 32]
        [--out runs/vs_nnunet] [--models nnunet-2d,nnunet-3d_fullres,lt-default,lt-3d,lt-demo] [--skip-nnunet]
        [--venv .bench_venvs/nnunet]

Steps, all through the command-line tools:

1. ``lungtumor synth`` writes ``--cases`` labelled phantoms and ``--test-cases`` held-out ones (labelsTs/).
2. ``lungtumor prepare`` per preset (one cache each; the patient split depends on the seed only, so it is the same).
3. nnU-Net (unless ``--skip-nnunet``): a separate venv (created when absent: torch==2.13.0, then nnunetv2; never
   this interpreter's environment), the same phantoms converted to ``DatasetXXX_LungPhantom``, nnU-Net's
   ``splits_final.json`` fold 0 set to the split ``lungtumor prepare`` wrote (same training and validation
   patients), ``nnUNetv2_plan_and_preprocess -c 2d 3d_fullres``, then ``nnUNetv2_train ID CONFIG 0 -tr
   nnUNetTrainer_LTBudget -device cpu``: a trainer subclass written into the benchmark venv at run time that
   stops within the budget (see ``_nnunet_helpers.py``), and ``nnUNetv2_predict -f 0 -chk checkpoint_final.pth
   -device cpu`` (no mirroring TTA unless ``--nnunet-tta``; lungtumor's presets predict without TTA too).
4. lungtumor: ``lungtumor train`` has no time limit, so a 1-epoch calibration run (not counted) gives the
   start-up and per-epoch time and the real run gets as many epochs as fit in the budget
   (``--epochs``), then ``lungtumor predict``. The preset ``3d`` is used when ``lungtumor train`` knows it.
5. ``lungtumor evaluate`` scores every model's masks against the same labelsTs/.

Training time is the wall time of the whole training command (start-up included) on this machine. Prints one
table and writes ``results.md`` and ``results.json`` (plus per-model ``<model>/result.json``) under ``--out``.
Each step's log is in ``--out/logs``. Re-running with the same ``--out`` and data options reuses the phantoms,
caches and nnU-Net preprocessing, and retrains the models named in ``--models``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet_helpers as nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALL_MODELS = ("nnunet-2d", "nnunet-3d_fullres", "lt-default", "lt-3d", "lt-demo")
LT = [str(Path(sys.executable).with_name("lungtumor"))]
if not Path(LT[0]).is_file():
    LT = [sys.executable, "-m", "lungtumor"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


CPU_S = {"last": 0.0}  # CPU seconds (user + sys) of the last command run, its reaped child processes included


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], logfile: Path, env: dict | None = None, check: bool = True) -> tuple[float, str]:
    """Run ``cmd`` with stdout+stderr into ``logfile``; return (wall seconds, output); CPU time in CPU_S."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cpu0 = _children_cpu()
    t = time.perf_counter()
    with open(logfile, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t
    CPU_S["last"] = _children_cpu() - cpu0
    out = logfile.read_text()
    if check and r.returncode != 0:
        tail = "\n".join(out.splitlines()[-25:])
        raise RuntimeError(
            f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {r.returncode}); see {logfile}\n{tail}"
        )
    return wall, out


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def lt_presets() -> list[str]:
    """Presets `lungtumor train --help` lists, else lungtumor.core.config.PRESETS."""
    try:
        from lungtumor.core.presets import PRESETS

        return sorted(PRESETS)
    except ImportError:
        h = subprocess.run([*LT, "train", "--help"], capture_output=True, text=True).stdout
        m = re.search(r"--preset PRESET\s+recipe:(.*?)--epochs", h, re.S)
        return re.findall(r"\b([a-z0-9]+)\b", m.group(1)) if m else []


# ----------------------------------------------------------------------------- data


def make_data(args, out: Path) -> Path:
    data = out / "data"
    params = {k: getattr(args, k) for k in ("cases", "test_cases", "matrix", "slices", "seed")}
    stamp = data / "bench_params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        log(f"reusing phantoms in {data}")
        return data
    if data.exists():
        shutil.rmtree(data)
    for d in ("lt", "nnunet"):
        shutil.rmtree(out / d, ignore_errors=True)  # caches and preprocessing belong to the old phantoms
    cmd = [*LT, "synth", str(data), "--cases", str(args.cases), "--test-cases", str(args.test_cases)]
    cmd += ["--seed", str(args.seed), "--matrix", str(args.matrix), "--slices", str(args.slices), "-q"]
    wall, o = run(cmd, out / "logs" / "synth.log")
    log(f"synth: {o.splitlines()[-1]} ({wall:.0f} s)")
    stamp.write_text(json.dumps(params) + "\n")
    return data


def lt_cache(args, out: Path, data: Path, preset: str) -> tuple[Path, float]:
    cache = out / "lt" / f"cache_{preset}"
    if (cache / "cache.json").is_file() and json.loads((cache / "cache.json").read_text()).get("complete"):
        return cache, float(json.loads((cache / "bench_prepare_s.json").read_text())["s"])
    cmd = [*LT, "prepare", str(data), str(cache), "--preset", preset, "--seed", str(args.seed), "-q"]
    wall, _ = run(cmd, out / "logs" / f"prepare_{preset}.log")
    (cache / "bench_prepare_s.json").write_text(json.dumps({"s": wall}) + "\n")
    return cache, wall


# ----------------------------------------------------------------------------- evaluation


def evaluate(out: Path, model: str, pred: Path, data: Path) -> dict:
    ev = out / model / "eval"
    run(
        # --score-missing: a case a method failed to predict counts as an empty prediction, for both methods
        [*LT, "evaluate", str(pred), str(data / "labelsTs"), "--out", str(ev), "--score-missing", "-q"],
        out / "logs" / f"eval_{model}.log",
    )
    s = json.loads((ev / "evaluation_summary.json").read_text())["summary"]
    return {
        "dice_mean": s["dice"]["mean"],
        "dice_n": s["dice"]["n"],
        "nsd_mean": s["nsd"]["mean"],
        "hd95_mm_mean": s["hd95_mm"]["mean"],
        "lesion_recall": s["lesions"]["recall_pooled"],
        "lesions_found": f"{s['lesions']['n_found']}/{s['lesions']['n_gt']}",
        "fp_per_case": s["fp_per_case"]["mean"],
        "n_cases": s["n_cases"],
        "n_missing_prediction": s["n_missing_prediction"],
    }


# ----------------------------------------------------------------------------- lungtumor


def _lt_steps(run_dir: Path) -> tuple[int | None, int | None, float | None]:
    """(optimizer steps of the first epoch and its training throughput in slices/s from metrics.csv, batch size
    from config.yaml) of a run."""
    steps = batch = rate = None
    try:
        rows = (run_dir / "metrics.csv").read_text().splitlines()
        head = rows[0].split(",")
        steps = int(float(rows[1].split(",")[head.index("step")]))
        if "slices_per_s" in head:
            rate = float(rows[1].split(",")[head.index("slices_per_s")])
    except (OSError, IndexError, ValueError):
        pass
    m = re.search(r"^  batch_size: (\d+)", (run_dir / "config.yaml").read_text(), re.M)
    if m:
        batch = int(m.group(1))
    return steps, batch, rate


def _lt_full_steps(cache: Path, batch: int | None, preset_cap: int = 0) -> int | None:
    """Steps of one of the preset's epochs: one pass over the training patients' slices, capped by the preset."""
    if not batch:
        return None
    meta = json.loads((cache / "cache.json").read_text())
    train = set(json.loads((cache / "splits.json").read_text())["train"])
    n = sum(c["n_slices"] for c in meta["cases"] if c["name"] in train)
    steps = max(1, n // batch)  # as training.py counts them (drop_last)
    return min(steps, preset_cap) if preset_cap > 0 else steps


def run_lt(args, out: Path, data: Path, preset: str) -> dict:
    model = f"lt-{preset}"
    cache, prep_s = lt_cache(args, out, data, preset)
    mdir = out / model
    shutil.rmtree(mdir, ignore_errors=True)
    # Calibration (not counted): one epoch capped at --lt-calib-steps steps gives the start-up time (wall minus
    # the training's own time) and the time per step (validation included, so slightly pessimistic).
    calib = mdir / "calib"
    cfg_file = mdir / "calib.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    # the step cap: train.max_steps_per_epoch for the 2.5D loop; the 3D loop (model.arch unet3d) draws
    # vol3d.steps_per_epoch patches batches per epoch instead
    from lungtumor.core.presets import preset as get_preset

    pcfg = get_preset(preset)
    is3d = pcfg.model.arch == "unet3d" and hasattr(pcfg, "vol3d")
    section, key = ("vol3d", "steps_per_epoch") if is3d else ("train", "max_steps_per_epoch")
    # validate after the calibration epoch even when the preset validates every n > 1 epochs, so that its cost
    # is measured too
    cfg_file.write_text(f"{section}:\n  {key}: {args.lt_calib_steps}\ntrain:\n  val_every_n_epochs: 1\n")
    if section == "train":
        cfg_file.write_text(f"train:\n  {key}: {args.lt_calib_steps}\n  val_every_n_epochs: 1\n")
    cmd = [*LT, "train", str(cache), "--out", str(calib), "--preset", preset, "--config", str(cfg_file)]
    wall1, o = run([*cmd, "--epochs", "1", "-q"], out / "logs" / f"train_{model}_calib.log")
    m = re.search(r"trained (\d+) epochs in ([\d.]+) s", o)
    epoch_s = float(m.group(2)) if m else wall1
    startup_s = max(0.0, wall1 - epoch_s)
    steps_done, batch, rate = _lt_steps(calib)
    full = (
        pcfg.vol3d.steps_per_epoch if is3d else _lt_full_steps(cache, batch, pcfg.train.max_steps_per_epoch)
    )
    if steps_done is None and full:  # no metrics row: the capped epoch ran min(cap, full) steps
        steps_done = min(args.lt_calib_steps, full)
    left = args.budget_s - startup_s
    if steps_done and steps_done <= args.lt_calib_steps and full:
        step_s = epoch_s * args.lt_margin / steps_done  # validation included: pessimistic
        val_s = 0.0
        if rate and batch:  # training throughput known: split the epoch into steps and one validation
            step_s = batch / rate * args.lt_margin
            val_s = max(0.0, epoch_s - steps_done * batch / rate) * args.lt_margin
        every = max(1, pcfg.train.val_every_n_epochs)
        total = int(left / step_s)  # steps that fit in the budget, validation left out
        whole = int(left / (full * step_s + val_s / every))  # whole epochs with their validations
        if whole >= 2:  # whole epochs, as the preset defines them
            epochs, cap = whole, 0
        else:  # fewer steps than two epochs: short epochs so that the cosine schedule still runs to its end
            epochs = max(1, min(4, total // max(1, args.lt_calib_steps)))
            cap = max(1, int((left - epochs * val_s) / step_s) // epochs)
        plan = f"{step_s:.2f} s/step, {full} steps per full epoch"
    else:  # the cap did not apply (another training loop): whole epochs
        epochs, cap = max(1, int(left / (epoch_s * args.lt_margin))), 0
        plan = f"{epoch_s:.1f} s/epoch"
    log(
        f"{model}: calibration start-up {startup_s:.1f} s, {plan} -> {epochs} epochs, step cap {cap or 'none'}"
    )
    shutil.rmtree(calib)
    run_dir = mdir / "run"
    cfg_file.write_text(f"{section}:\n  {key}: {cap}\n")
    cmd = [*LT, "train", str(cache), "--out", str(run_dir), "--preset", preset, "--epochs", str(epochs), "-q"]
    if cap:
        cmd += ["--config", str(cfg_file)]
    load0 = load()
    train_s, o = run(cmd, out / "logs" / f"train_{model}.log")
    train_cpu_s = CPU_S["last"]
    log(f"{model}: trained in {train_s:.0f} s (budget {args.budget_s:.0f} s, load {load0} -> {load()})")
    pred = mdir / "pred"
    images = sorted((data / "imagesTs").glob("*.nii.gz"))
    model_path, ckpt_note = run_dir, "best.ckpt"
    if (
        not (run_dir / "checkpoints" / "best.ckpt").is_file()
        and (run_dir / "checkpoints" / "last.ckpt").is_file()
    ):
        model_path, ckpt_note = (
            run_dir / "checkpoints" / "last.ckpt",
            "last.ckpt (the run wrote no best.ckpt)",
        )
        log(f"{model}: no best.ckpt, predicting with last.ckpt")
    cmd = [
        *LT,
        "predict",
        str(data / "imagesTs"),
        "--model",
        str(model_path),
        "--out",
        str(pred),
        "--device",
        "cpu",
        "-q",
    ]
    pred_s, _ = run(cmd, out / "logs" / f"predict_{model}.log")
    pred_cpu_s = CPU_S["last"]
    res = {
        "model": model,
        "preprocess_s": prep_s,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "epochs": epochs,
        "steps_per_epoch_cap": cap,
        "cap_key": f"{section}.{key}",
        "checkpoint": ckpt_note,
        "calibration": {"startup_s": startup_s, "plan": plan},
        "predict_s_per_case": pred_s / len(images),
        "predict_cpu_s_per_case": pred_cpu_s / len(images),
        "train_note": (o.strip().splitlines() or [""])[-1],
        "load_during_training": load0,
    }
    res.update(evaluate(out, model, pred, data))
    return res


# ----------------------------------------------------------------------------- nnU-Net


def nnunet_setup(args, out: Path, data: Path, split: dict) -> tuple[Path, dict, float]:
    venv = args.venv
    ver = nn.ensure_venv(venv, log)
    trainer_file = nn.install_trainer(venv)
    log(f"nnU-Net {ver} in {venv}; trainer {trainer_file}")
    root = out / "nnunet"
    stamp = root / "preprocessed" / nn.dataset_name(args.dataset_id) / "bench_preprocess_s.json"
    if stamp.is_file():
        prep_s = float(json.loads(stamp.read_text())["s"])
    else:
        shutil.rmtree(root, ignore_errors=True)
        nn.convert_dataset(data, root, args.dataset_id)
        cmd = [nn.venv_tool(venv, "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id)]
        cmd += [
            "--verify_dataset_integrity",
            "-c",
            "2d",
            "3d_fullres",
            "-np",
            str(args.np),
            "-npfp",
            str(args.np),
        ]
        prep_s, _ = run(cmd, out / "logs" / "nnunet_plan_and_preprocess.log", env=nn.nnunet_env(root))
        stamp.write_text(json.dumps({"s": prep_s}) + "\n")
        log(f"nnU-Net plan_and_preprocess: {prep_s:.0f} s")
    nn.write_split(root, args.dataset_id, split["train"], split["val"])
    plans = nn.read_plans(root, args.dataset_id)
    return root, plans, prep_s


def run_nnunet(args, out: Path, data: Path, root: Path, plans: dict, prep_s: float, config: str) -> dict:
    model = f"nnunet-{config}"
    mdir = out / model
    shutil.rmtree(mdir, ignore_errors=True)
    mdir.mkdir(parents=True)
    res_dir = root / "results" / nn.dataset_name(args.dataset_id) / f"{nn.TRAINER}__nnUNetPlans__{config}"
    shutil.rmtree(res_dir, ignore_errors=True)
    common = {"nnUNet_n_proc_DA": str(args.np)}
    cmd = [nn.venv_tool(args.venv, "nnUNetv2_train"), str(args.dataset_id), config, "0", "-tr", nn.TRAINER]
    cmd += ["-device", "cpu"]
    env = nn.nnunet_env(
        root,
        LTBENCH_BUDGET_S=str(args.budget_s),
        LTBENCH_START_TIME=repr(time.time()),
        LTBENCH_ITERS=str(args.nnunet_iters),
        LTBENCH_TARGET_EPOCHS=str(args.nnunet_epochs),
        LTBENCH_VAL_ITERS=str(args.nnunet_val_iters),
        **common,
    )
    load0 = load()
    train_s, o = run(cmd, out / "logs" / f"train_{model}.log", env=env)
    train_cpu_s = CPU_S["last"]
    done = re.findall(r"LTBudget: trained (\d+) epochs, (\d+) iterations", o)
    epochs, iterations = (int(done[-1][0]), int(done[-1][1])) if done else (None, None)
    log(
        f"{model}: trained {epochs} epochs, {iterations} iterations in {train_s:.0f} s (load {load0} -> {load()})"
    )
    pred = mdir / "pred"
    images = sorted((root / "raw" / nn.dataset_name(args.dataset_id) / "imagesTs").glob("*.nii.gz"))
    cmd = [nn.venv_tool(args.venv, "nnUNetv2_predict"), "-i", str(images[0].parent), "-o", str(pred)]
    cmd += [
        "-d",
        str(args.dataset_id),
        "-c",
        config,
        "-f",
        "0",
        "-tr",
        nn.TRAINER,
        "-chk",
        "checkpoint_final.pth",
    ]
    cmd += ["-device", "cpu", "-npp", "1", "-nps", "1"]
    if not args.nnunet_tta:
        cmd.append("--disable_tta")
    pred_s, _ = run(cmd, out / "logs" / f"predict_{model}.log", env=nn.nnunet_env(root, **common))
    pred_cpu_s = CPU_S["last"]
    res = {
        "model": model,
        "preprocess_s": prep_s,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "epochs": epochs,
        "iterations": iterations,
        "batch_size": plans["configurations"][config]["batch_size"],
        "plan": nn.plan_summary(plans, config),
        "predict_s_per_case": pred_s / len(images),
        "predict_cpu_s_per_case": pred_cpu_s / len(images),
        "tta": bool(args.nnunet_tta),
        "checkpoint": "checkpoint_final.pth",
        "load_during_training": load0,
    }
    res.update(evaluate(out, model, pred, data))
    return res


# ----------------------------------------------------------------------------- table


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(results: list[dict]) -> str:
    head = "| model | training time (s) | training CPU (s) | epochs | Dice (mean) | NSD 2 mm | lesion recall | FP per case | predict s/case |"
    lines = [head, "|---" * (head.count(" | ") + 1) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['train_s']:.0f} | {fmt(r.get('train_cpu_s'), 0)} | {fmt(r.get('epochs'))} | {fmt(r['dice_mean'])} | "
            f"{fmt(r['nsd_mean'])} | {fmt(r['lesion_recall'], 2)} ({r['lesions_found']}) | {fmt(r['fp_per_case'], 2)} | "
            f"{r['predict_s_per_case']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=180.0, help="wall-clock training budget per model (s)")
    ap.add_argument("--cases", type=int, default=12, help="labelled training phantoms")
    ap.add_argument("--test-cases", type=int, default=3, help="held-out phantoms (scored with labelsTs)")
    ap.add_argument(
        "--matrix", type=int, default=96, help="phantom in-plane matrix (lungtumor synth --matrix)"
    )
    ap.add_argument("--slices", type=int, default=32, help="phantom slices (lungtumor synth --slices)")
    ap.add_argument("--seed", type=int, default=0, help="phantom and split seed")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "vs_nnunet")
    ap.add_argument(
        "--models", default=",".join(ALL_MODELS), help=f"comma-separated subset of {','.join(ALL_MODELS)}"
    )
    ap.add_argument("--skip-nnunet", action="store_true", help="only lungtumor's presets")
    ap.add_argument("--venv", type=Path, default=ROOT / ".bench_venvs" / "nnunet", help="nnU-Net's venv")
    ap.add_argument("--dataset-id", type=int, default=77, help="nnU-Net dataset id (Dataset0XX_LungPhantom)")
    ap.add_argument("--np", type=int, default=2, help="nnU-Net preprocessing and augmentation processes")
    ap.add_argument(
        "--nnunet-iters", type=int, default=5, help="nnU-Net iterations of its first epoch (then adapted)"
    )
    ap.add_argument(
        "--nnunet-epochs", type=int, default=10, help="about this many nnU-Net epochs fill the budget"
    )
    ap.add_argument("--nnunet-val-iters", type=int, default=1, help="nnU-Net validation iterations per epoch")
    ap.add_argument(
        "--nnunet-tta", action="store_true", help="predict with nnU-Net's mirroring TTA (default off)"
    )
    ap.add_argument("--lt-calib-steps", type=int, default=8, help="steps of lungtumor's calibration epoch")
    ap.add_argument("--lt-margin", type=float, default=1.05, help="safety factor on lungtumor's epoch time")
    args = ap.parse_args()
    args.venv = args.venv.absolute()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(models) - set(ALL_MODELS))
    if bad:
        ap.error(f"unknown models {bad}; choose from {', '.join(ALL_MODELS)}")
    if args.skip_nnunet:
        models = [m for m in models if not m.startswith("nnunet-")]
    t_start = time.time()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes = []
    presets = lt_presets()
    for m in list(models):
        if m.startswith("lt-") and m[3:] not in presets:
            notes.append(
                f"{m} skipped: `lungtumor train` has no preset {m[3:]!r} (presets: {', '.join(presets)})"
            )
            log(notes[-1])
            models.remove(m)

    data = make_data(args, out)
    # the patient split: the same for every preset (it depends on the case names and the seed only)
    split_cache, _ = lt_cache(args, out, data, "default")
    split = json.loads((split_cache / "splits.json").read_text())

    results: dict[str, dict] = {}
    nn_ready = None
    for m in models:
        log(f"--- {m} (load {load()})")
        try:
            if m.startswith("lt-"):
                r = run_lt(args, out, data, m[3:])
            else:
                if nn_ready is None:
                    nn_ready = nnunet_setup(args, out, data, split)
                r = run_nnunet(args, out, data, *nn_ready, m[len("nnunet-") :])
        except Exception as e:  # one failing model must not lose the others' results
            r = {"model": m, "error": str(e).splitlines()[0]}
            log(f"{m} FAILED: {e}")
        results[m] = r
        (out / m).mkdir(parents=True, exist_ok=True)
        (out / m / "result.json").write_text(json.dumps(r, indent=2) + "\n")
        log(f"{m}: {json.dumps(r)}")

    # the table: this run's models plus earlier results left in --out by runs with other --models
    for m in ALL_MODELS:
        f = out / m / "result.json"
        if m not in results and f.is_file():
            results[m] = json.loads(f.read_text())
    ordered = [results[m] for m in ALL_MODELS if m in results]
    md = table(ordered)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {
        "started": started,
        "minutes": round((time.time() - t_start) / 60, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}, no GPU used",
        "budget_s": args.budget_s,
        "data": {k: getattr(args, k) for k in ("cases", "test_cases", "matrix", "slices", "seed")},
        "split": {"train": len(split["train"]), "val": split["val"]},
        "notes": notes,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": ordered}, indent=2) + "\n")
    text = f"{md}\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n"
    (out / "results.md").write_text(text)
    print()
    print(md)
    print()
    for n in notes:
        print("note:", n)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'} ({meta['minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
