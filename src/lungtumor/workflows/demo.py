"""``lungtumor demo``: the main job on the built-in phantoms.

synth → prepare → train → predict held-out phantoms → evaluate → report, with the ``demo`` preset, sized to
finish in minutes on 2 CPU cores. Prediction uses the checkpoint's own settings, as ``lungtumor predict`` does: the 2D
mirror TTA is off (it did not earn its place over 3 training seeds, docs/decisions/0008).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lungtumor.core.config_io import load_config
from lungtumor.core.errors import check_subdirs, ensure_writable_dir
from lungtumor.core.progress import log_line
from lungtumor.data.phantom import synth_dataset
from lungtumor.evaluation.evaluate import evaluate_dirs, format_summary
from lungtumor.preprocessing.prepare import prepare_dataset
from lungtumor.training.run import train
from lungtumor.workflows.predict import PredictOptions, predict_paths


@dataclass
class DemoResult:
    """Where everything went and how well it did."""

    out: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    summary_text: str = ""

    def __str__(self) -> str:
        lines = ["lungtumor demo finished", ""]
        for k, p in self.paths.items():
            lines.append(f"  {k:<12} {p}")
        lines.append("")
        lines.append("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.timings_s.items()))
        if self.summary_text:
            lines += ["", "held-out phantoms:", self.summary_text]
        return "\n".join(lines)


def run_demo(
    out: str | os.PathLike,
    *,
    cases: int = 35,
    val_cases: int | None = 6,
    test_cases: int = 8,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    config=None,
    matrix: int = 256,
    slices: int | None = None,
    train_lesions: str = "rich",
    train_hilar_vessels: bool = True,
) -> DemoResult:
    """Run the whole pipeline into ``out`` and return paths, timings and the held-out summary. With ``progress``,
    each step and its progress go to stderr: bars on a terminal, plain lines in a log (no carriage returns).

    ``config`` (a RunConfig) replaces the ``demo`` preset; ``matrix``/``slices`` size the phantoms (tests use
    tiny ones). ``val_cases`` of the ``cases`` labelled phantoms validate (6 of 35: 3 were too few to choose a
    checkpoint, docs/decisions/0020; None = prepare's default). ``train_lesions`` is how the training phantoms draw their tumours (``synth
    --train-lesions``): ``"rich"`` (more, and more small, tumours per training case; docs/decisions/0018) by default; the held-out
    phantoms are always drawn the standard way. ``train_hilar_vessels``: the training phantoms' hila have
    vessels of real calibre (``synth --train-hilar-vessels``; docs/decisions/0019: far fewer false
    positives at the hila of real CTs).
    """

    root = ensure_writable_dir(out)
    res = DemoResult(out=root)
    cfg = config if config is not None else load_config(None, "demo")
    cfg.train.seed = seed
    if epochs is not None:
        cfg.train.epochs = epochs

    def step(name: str, fn):
        if progress:  # one plain line per step: the log reads as a list of stages
            log_line(f"demo: step {len(res.timings_s) + 1}/5: {name}")
        t0 = time.perf_counter()
        value = fn()
        res.timings_s[name] = time.perf_counter() - t0
        if progress:
            log_line(f"demo: {name} done in {res.timings_s[name]:.0f} s")
        return value

    data, cache, run, pred = root / "data", root / "cache", root / "run", root / "predictions"
    check_subdirs(root, data.name, cache.name, run.name, pred.name)  # never write through a link out of OUT
    step(
        "synth",
        lambda: synth_dataset(
            data,
            n_train=cases,
            n_test=test_cases,
            seed=seed,
            matrix=matrix,
            slices=slices,
            progress=progress,
            train_lesions=train_lesions,
            train_hilar_vessels=train_hilar_vessels,
        ),
    )
    step(
        "prepare",
        lambda: prepare_dataset(
            data, cache, cfg.prep, val_cases=val_cases, folds=5, seed=seed, progress=progress
        ),
    )
    step("train", lambda: train(cache, run, cfg, resume=False, progress=progress))
    results = step(
        "predict",
        lambda: predict_paths(
            [data / "imagesTs"],
            run,
            pred,
            PredictOptions(report=True, save_prob=False, progress=progress),
        ),
    )
    failed = [r for r in results if r.error]
    if failed:
        raise RuntimeError(f"demo prediction failed: {failed[0].error}")
    summary = step("evaluate", lambda: evaluate_dirs(pred, data / "labelsTs", out_dir=pred))
    res.summary = summary.aggregate
    res.summary_text = format_summary(summary)
    res.paths = {
        "data": data,
        "cache": cache,
        "run": run,
        "checkpoint": run / "checkpoints" / "best.ckpt",
        "predictions": pred,
        "evaluation": pred / "evaluation_summary.json",
        "report": next(iter(sorted(pred.glob("*.html"))), pred),
        "tensorboard": run / "tb",
    }
    return res
