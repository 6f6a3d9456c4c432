"""What each ``lungtumor`` subcommand does: call one library function or workflow and print its result.

Run by :func:`lungtumor.cli.main` as ``cmd_<name>(args)``; returns the exit code.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lungtumor.core.config_io import load_config
from lungtumor.core.errors import InputError
from lungtumor.core.runtime import lightning_devices
from lungtumor.data.msd import check_dataset, format_check_report
from lungtumor.data.phantom import synth_dataset
from lungtumor.evaluation.evaluate import evaluate_dirs, format_summary
from lungtumor.evaluation.measure import measure_files
from lungtumor.inference.card import PHANTOM_WARNING, card_line, trained_on_phantoms_only
from lungtumor.inference.checkpoint import read_card
from lungtumor.inference.store import install, list_models, models_dir, remove, resolve_model
from lungtumor.models import is_3d
from lungtumor.preprocessing.prepare import prepare_dataset
from lungtumor.preprocessing.prepare3d import prepare_dataset_3d
from lungtumor.report.writer import report_files
from lungtumor.training.run import train
from lungtumor.workflows.batch import check_part, check_processes
from lungtumor.workflows.compare import compare
from lungtumor.workflows.cv import format_cv_summary, run_benchmark_msd, run_cv
from lungtumor.workflows.demo import run_demo
from lungtumor.workflows.distributed import accelerator, launched_rank, predict_sharded
from lungtumor.workflows.export import export_model
from lungtumor.workflows.outputs import check_dicom_inputs, load_dicom_writer, parse_output_types
from lungtumor.workflows.predict import PredictOptions, collect_inputs, predict_paths


def cmd_synth(args) -> int:
    summary = synth_dataset(
        args.out,
        n_train=args.cases,
        n_test=args.test_cases,
        seed=args.seed,
        matrix=args.matrix,
        slices=args.slices or None,
        progress=not args.quiet,
        train_lesions=args.train_lesions,
        val_cases=args.val_cases,
        train_hilar_vessels=args.train_hilar_vessels,
        variety=args.variety,
        test_variety=args.test_variety,
        variety_without=tuple(n.strip() for n in args.without.split(",") if n.strip()),
        hard_negatives=args.hard_negatives,
    )
    print(summary)
    return 0


def cmd_check(args) -> int:
    report = check_dataset(args.dataset, progress=not args.quiet)
    print(format_check_report(report))
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    return 0 if report.ok else 2


def cmd_prepare(args) -> int:
    cfg = load_config(args.config, args.preset)
    if is_3d(cfg):  # the 3D recipe has its own cache (lungtumor.preprocessing.prepare3d)
        print(prepare_dataset_3d(args.dataset, args.out, cfg.vol3d, val_cases=args.val_cases or None,
                                 folds=args.folds, seed=args.seed, progress=not args.quiet))  # fmt: skip
        return 0
    summary = prepare_dataset(
        args.dataset,
        args.out,
        cfg.prep,
        val_cases=args.val_cases or None,
        folds=args.folds,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(summary)
    return 0


def cmd_train(args) -> int:
    run_cfg = args.out / "config.yaml"
    source = str(args.config) if args.config is not None else "config"  # what a config error names
    if args.resume and args.config is None and args.preset is None and run_cfg.is_file():
        cfg, source = load_config(run_cfg), str(run_cfg)  # continue the run with its own settings
    else:
        cfg = load_config(args.config, args.preset)
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.devices is not None:
        cfg.train.devices = args.devices
    if args.num_nodes is not None:
        cfg.train.num_nodes = args.num_nodes
    if args.device is not None:  # --device (old name --accelerator): predict's names; cuda:N → devices [N]
        acc_devices = lightning_devices(args.device, cfg.train.devices, args.devices)
        cfg.train.accelerator, cfg.train.devices = acc_devices
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lg = logging.getLogger("lungtumor.training")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    result = train(args.cache, args.out, cfg, resume=args.resume, progress=not args.quiet, source=source)
    if result.is_global_zero:
        print(result)
    return 0


def _print_skipped(skipped: list[tuple[Path, str]]) -> None:
    """One ``note:`` line per skipped folder entry; many of one kind in one folder share a line."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path, why in skipped:
        groups.setdefault((path.parent, why), []).append(path)
    for (parent, why), items in groups.items():
        if len(items) <= 3:
            for path in items:
                print(f"note: skipped {path}: {why}", file=sys.stderr)
        else:
            print(
                f"note: skipped {len(items)} entries of {parent} ({items[0].name}, ...): {why}",
                file=sys.stderr,
            )


def _print_cards(models: list[Path], paths: list[Path]) -> None:
    """Which model, trained on what: one line per model (its card), and the phantom-only warning."""
    for m, path in zip(models, paths, strict=True):
        card = read_card(path)
        print(card_line(m, card))
        if trained_on_phantoms_only(card):
            print(f"warning: {m}: {PHANTOM_WARNING}")  # stdout: stderr is for the one error line


def cmd_predict(args) -> int:
    check_part(args.num_parts, args.part_id)  # before anything is printed or loaded
    check_processes(args.devices, args.num_nodes)
    several = args.devices * args.num_nodes > 1  # processes (workflows.distributed): rank 0 prints
    lead = not several or launched_rank() == 0
    if several:
        accelerator(args.device)  # cuda:N or a missing GPU: before the model line
    skipped: list[tuple[Path, str]] = []
    cases = collect_inputs(args.inputs, skipped)  # the same walk predict_paths makes: say what it leaves out
    if lead:
        _print_skipped(skipped)
    types = parse_output_types(args.output_type)  # bad output types fail before the model line is printed
    check_dicom_inputs([src for _, src in cases], types, args.out)
    load_dicom_writer(types)

    opts = PredictOptions(
        threshold=args.threshold,
        min_lesion_mm3=args.min_lesion_mm3,
        min_z_extent_ratio=args.min_z_extent_ratio,
        postprocess=not args.no_postprocess,
        lung_gate=args.lung_gate,
        save_prob=args.save_prob,
        report=args.report,
        device=args.device,
        tta=args.tta,
        threads=args.threads,
        progress=not args.quiet and lead,
        nodules=args.nodules,
        output_types=args.output_type,
        num_parts=args.num_parts,
        part_id=args.part_id,
        continue_prediction=args.continue_prediction,
        models_dir=args.models_dir,
        devices=args.devices,
        num_nodes=args.num_nodes,
    )
    paths = [resolve_model(m, args.models_dir) for m in args.model]  # a path, or an installed model's name
    if lead:
        _print_cards(args.model, paths)
    try:
        results = (predict_sharded if several else predict_paths)(args.inputs, paths, args.out, opts)
    except InputError:
        if lead:
            raise
        return 0  # every rank has it; rank 0 says it (another's exit code would stop rank 0 before it could)
    if not lead:
        return 0
    if args.num_parts > 1:
        print(
            f"part {args.part_id} of {args.num_parts} (--part-id of --num-parts): {len(results)} of {len(cases)} cases"
        )
    failed = [r for r in results if r.error]
    for r in results:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
        else:
            print(r.summary_line())
    if failed and len(results) > 1:
        print(
            f"error: {len(failed)} of {len(results)} cases failed; the other {len(results) - len(failed)} "
            f"were written to {args.out}",
            file=sys.stderr,
        )
    return 2 if failed else 0


def cmd_measure(args) -> int:
    errors: list[str] = []
    n = 0
    for line in measure_files(args.masks, args.out, errors, label=args.label):
        print(line)
        n += 1
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors and n:
        print(
            f"error: {len(errors)} of {len(errors) + n} masks failed; the other {n} were measured",
            file=sys.stderr,
        )
    return 2 if errors else 0


def cmd_evaluate(args) -> int:
    summary = evaluate_dirs(
        args.pred_dir,
        args.gt_dir,
        out_dir=args.out or args.pred_dir,
        tolerance_mm=args.tolerance_mm,
        lesion_overlap=args.lesion_overlap,
        label=args.label,
        pred_label=args.pred_label,
        score_missing=args.score_missing,
    )
    for w in summary.warnings:  # files that match nothing: skipped, said on stderr
        print(f"warning: {w}", file=sys.stderr)
    print(format_summary(summary))
    return 0


def cmd_report(args) -> int:
    paths = report_files(args.image, args.mask, args.out, run_dir=args.run_dir, label=args.label)
    for p in paths:
        print(p)
    return 0


def cmd_demo(args) -> int:
    result = run_demo(
        args.out,
        cases=args.cases,
        val_cases=args.val_cases,
        test_cases=args.test_cases,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
        train_lesions=args.train_lesions,
        train_hilar_vessels=args.train_hilar_vessels,
    )
    print(result)
    return 0


def cmd_cv(args) -> int:
    s = run_cv(args.dataset, args.out, args.preset, folds=args.folds, epochs=args.epochs, seed=args.seed,
               config_path=args.config, device=args.device, progress=not args.quiet)  # fmt: skip
    print(format_cv_summary(s))
    return 0


def cmd_benchmark_msd(args) -> int:
    b = run_benchmark_msd(args.task_dir, args.out, preset_name=args.preset, folds=args.folds, epochs=args.epochs,
                          seed=args.seed, config_path=args.config, device=args.device,
                          progress=not args.quiet)  # fmt: skip
    print(
        f"{b['folds']}-fold CV of {b['preset']} on {b['n_cases']} cases: mean per-case Dice "
        f"{b['mean_per_case_dice']:.4f} (nnU-Net {b['nnunet_reference_dice']:.2f}); written to {args.out}"
    )
    return 0


def cmd_compare(args) -> int:
    result = compare(args.baseline, args.followup, args.out, baseline_mask=args.baseline_mask,
                     followup_mask=args.followup_mask, model=args.model, interval_days=args.interval_days,
                     affine=args.affine, device=args.device, progress=not args.quiet)  # fmt: skip
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(result.summary_line())
    for p in result.outputs:
        print(p)
    return 0


def cmd_export(args) -> int:
    result = export_model(args.model, args.out, args.format, opset=args.opset)
    for line in result.summary_lines():
        print(line)
    return 0


def cmd_models_install(args) -> int:
    m = install(args.package, args.name, args.models_dir, force=args.force)
    print(f"installed {args.package} as {m.name}: {m.path}")
    print(card_line(m.name, m.summary.get("card", {})))
    print(f"use it with: lungtumor predict CT... --model {m.name}")
    return 0


def cmd_models_list(args) -> int:
    found = list_models(args.models_dir)
    if not found:
        print(f"no models installed in {models_dir(args.models_dir)}")
        return 0
    print(f"{len(found)} model(s) in {models_dir(args.models_dir)}:")
    for m in found:
        if m.error:
            print(f"{m.name}: damaged, reinstall it ({m.error})")
            continue
        det = ", nodule detector" if m.summary.get("nodule_detector") else ""
        size = m.path.stat().st_size / 1e6
        print(
            f"{m.name}: {m.summary.get('arch', '?')}{det}, {size:.1f} MB, format {m.summary['format_version']}"
        )
        print(f"  {card_line(m.name, m.summary.get('card', {}))}")
    return 0


def cmd_models_remove(args) -> int:
    path = remove(args.name, args.models_dir)
    print(f"removed {args.name} ({path})")
    return 0
