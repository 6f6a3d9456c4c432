"""The ``lungtumor`` command's arguments: one parser per subcommand (no heavy imports, so ``--help`` is fast).

Each subcommand sets ``cmd``; :func:`lungtumor.cli.main` runs ``lungtumor.cli.commands.cmd_<cmd>``.

Conventions (issue 24, users' habits from nnU-Net and TotalSegmentator): ``-i/--input`` names what a command
reads (the CTs or masks of predict, measure and report, the dataset of prepare) and ``-o/--out`` its output
folder on every command that writes one; a command that takes them as positional arguments keeps those too
(``cli.options.finish_args`` fills each slot from whichever form was given). Every option's help shows its
default (``cli.options.HelpFormatter``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungtumor.cli.options import (
    DEVICE_HELP,
    MODELS_DIR_HELP,
    PRESET_NAMES,
    add_hilar,
    add_inputs,
    add_label,
    add_out,
    add_slot,
    add_train_lesions,
    add_variety,
    quiet_leaf,
)


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a Task06-style dataset of synthetic chest-CT phantoms (the built-in data)",
        description="Write dataset.json, imagesTr/, labelsTr/, imagesTs/ (and labelsTs/ for scoring) of synthetic "
        "chest CTs with tumours of known volume; lesions.json records every lesion's true volume.",
    )
    add_slot(p, "out", "OUT", ("-o", "--out"), "output dataset folder")
    p.add_argument("--cases", type=int, default=20, help="number of labelled training cases (default 20)")
    p.add_argument("--test-cases", type=int, default=4, help="number of test cases in imagesTs (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument(
        "--matrix", type=int, default=256, help="in-plane matrix size in pixels (default 256; real CT is 512)"
    )
    p.add_argument("--slices", type=int, default=0, help="number of slices (default 0: random per case)")
    p.add_argument(
        "--val-cases",
        type=int,
        default=0,
        help="fix the last N labelled cases as validation patients, drawn like the test phantoms "
        "(dataset.json 'validation'; prepare then validates on them); default 0: prepare draws them",
    )
    add_train_lesions(p, "standard")
    add_hilar(p)
    add_variety(p)
    p.set_defaults(cmd="synth")


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="verify an MSD-style dataset (dataset.json or imagesTr/labelsTr/imagesTs)",
        description="Verify every case: files readable, image and label on one grid, labels in {0,1}, no NaNs, "
        "no path outside the dataset. Prints a table and one line per bad case; exits 2 if any case is bad.",
    )
    p.add_argument("dataset", type=Path, help="dataset folder")
    p.set_defaults(cmd="check")


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a dataset into a training cache (one array per case, tumour-slice index, patient split)",
        description="Normalise and resample every labelled case once and store it as memory-mapped arrays, with "
        "an index of tumour slices and a patient-level split. Resumable: run it again after an interruption.",
    )
    add_slot(p, "dataset", "DATASET", ("-i", "--input"), "dataset folder (dataset.json or imagesTr/labelsTr)")
    add_slot(p, "out", "CACHE", ("-o", "--out"), "cache folder to write")
    p.add_argument(
        "--preset",
        default=None,
        choices=PRESET_NAMES,
        help="preparation preset (default: the config's, or default)",
    )
    p.add_argument(
        "--config", type=Path, help="YAML config; its prep section overrides the preset (default: none)"
    )
    p.add_argument(
        "--val-cases", type=int, default=0, help="validation patients (default: about 10%%, the seed's 58/6)"
    )
    p.add_argument("--folds", type=int, default=5, help="also write k patient-level folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.set_defaults(cmd="prepare")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a segmentation model on a prepared cache",
        description="Train with PyTorch Lightning. Writes checkpoints (best by per-patient validation Dice, and last), "
        "the resolved config, TensorBoard logs and a loss-curve PNG into RUN_DIR.",
    )
    p.add_argument("cache", type=Path, help="cache folder written by `lungtumor prepare`")
    add_out(p, "run folder", required=True)
    p.add_argument("--config", type=Path, help="YAML config overriding the preset (default: none)")
    p.add_argument(
        "--preset",
        default=None,
        choices=PRESET_NAMES,
        help="recipe: default (2.5D, Dice+BCE), seed2d, demo or 3d (default: the config's, or default)",
    )
    p.add_argument("--epochs", type=int, help="override train.epochs (default: the recipe's)")
    p.add_argument(
        "--devices", type=int, help="devices (GPUs, or CPU processes) per node (default: the recipe's, 1)"
    )
    p.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP (default: the recipe's, 1)")
    p.add_argument(
        "--device",
        "--accelerator",
        dest="device",
        help="training device: auto, cpu, cuda (or gpu), cuda:N (GPU N alone), mps; several GPUs with "
        "--devices K (default: the recipe's train.accelerator, auto); --accelerator is its old name",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/checkpoints/last.ckpt (with RUN_DIR/config.yaml unless --config/--preset is "
        "given; default: off, a new run)",
    )
    p.set_defaults(cmd="train")


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment tumours in CTs; writes masks in the input's original geometry, plus lesion measurements",
        description="CT may be NIfTI, NRRD, MHA, a DICOM series folder, or a folder of these.",
    )
    add_inputs(p, "inputs", "CT", "CT files or folders")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        action="append",
        help="checkpoint (.ckpt), run folder, model package (.zip, from lungtumor export) or the name of an "
        "installed model (lungtumor models list), 2D or 3D; repeat it to average several models (an ensemble)",
    )
    add_out(
        p,
        "output folder; two inputs with the same name get distinct outputs (<name>_<parent folder>_tumour...)",
        required=True,
    )
    p.add_argument("--threshold", type=float, help="probability threshold (default from the checkpoint, 0.5)")
    p.add_argument(
        "--min-lesion-mm3",
        type=float,
        help="drop components smaller than this (mm³; default from the checkpoint)",
    )
    p.add_argument(
        "--min-z-extent-ratio",
        type=float,
        help="drop components whose z extent (mm) is under this fraction of their axial diameter "
        "(one-slice false positives; 0 = off; default from the checkpoint)",
    )
    p.add_argument("--no-postprocess", action="store_true", help="keep every component")
    p.add_argument(
        "--lung-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only lesions inside or touching the lungs (a lung mask from HU); default from the checkpoint "
        "(on in the demo preset)",
    )
    p.add_argument("--save-prob", action="store_true", help="also write the tumour probability map")
    p.add_argument("--report", action="store_true", help="also write the HTML report for each case")
    p.add_argument(
        "--device",
        "--accelerator",
        dest="device",
        default="auto",
        help=f"{DEVICE_HELP}; with --devices N: cpu, gpu or auto (--accelerator: its Lightning name)",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average with the left-right mirrored prediction (about 2x the model time; default from the checkpoint)",
    )
    p.add_argument(
        "--nodules",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the lesions the checkpoint's 3D nodule detector finds and the 2D model missed "
        "(default: on when the checkpoint has one)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--output-type",
        default="nifti",
        metavar="TYPES",
        help="comma-separated outputs: nifti (<case>_tumour.nii.gz), and for a DICOM series input dicom-seg, "
        "rtstruct, sr (DICOM SEG, RT Structure Set, measurement SR; need pip install 'lungtumor[dicom]'); "
        "default nifti",
    )
    _add_batch_options(p)
    p.set_defaults(cmd="predict")


def _add_models_dir(p) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        help=f"folder of installed models (default: {MODELS_DIR_HELP})",
    )


def _add_batch_options(p) -> None:
    """predict's options for many CTs: parts for cluster array jobs, --continue, installed models."""
    p.add_argument(
        "--num-parts",
        type=int,
        default=1,
        metavar="K",
        help="split the cases into K parts (for K array jobs): sorted by output name, part I takes every K-th "
        "from the I-th and writes predict_manifest.part-I-of-K.json (default 1: all cases, predict_manifest.json)",
    )
    p.add_argument(
        "--part-id", type=int, default=0, metavar="I", help="which part to predict, 0 to K-1 (default 0)"
    )
    p.add_argument(
        "--continue",
        dest="continue_prediction",
        action="store_true",
        help="skip the cases that the output folder's manifest lists as finished and whose outputs all exist "
        "(same models and settings); predict the others (default: off, predict every case)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="processes per node (Lightning Fabric, DDP), one per GPU with --device gpu: rank R predicts every "
        "N-th case; one merged manifest (default 1: this process alone)",
    )
    p.add_argument(
        "--num-nodes", type=int, default=1, metavar="M", help="nodes, under srun or torchrun (default 1)"
    )
    _add_models_dir(p)


def _add_measure(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="measure every lesion of a mask: volume, RECIST-like diameters, 3D diameter, size category",
        description="Writes <case>_lesions.json and <case>_lesions.csv. The size category follows AJCC 8th edition T "
        "thresholds by greatest dimension; it is a size category only, not a stage.",
    )
    add_inputs(
        p, "masks", "MASK", "mask files, or folders of them (a predict output folder: its *_tumour masks)"
    )
    add_out(
        p,
        "output folder; two masks with the same name get distinct outputs (<name>_<parent folder>)",
        required=True,
    )
    add_label(p)
    p.set_defaults(cmd="measure")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted masks against ground truth: Dice, NSD, HD95 (mm), lesion-wise recall and FPs",
        description="Cases are matched by name after stripping the usual suffixes (_tumour, _label, _mask, _seg, "
        "_gt, _0000: lung_001_0000_tumour.nii.gz in PRED_DIR matches lung_001_gt.nii.gz in GT_DIR; also .nrrd/.mha). "
        "A file that matches nothing is skipped with a warning (with --score-missing a ground-truth case without a "
        "prediction is scored as an empty prediction); no match at all is an error. Writes evaluation_cases.csv "
        "(a row per case), evaluation_lesions.csv (a row per ground-truth lesion: volume, size bin, found, "
        "lesion Dice) and evaluation_summary.json (with recall by lesion size).",
    )
    p.add_argument("pred_dir", type=Path, help="folder of predicted masks")
    p.add_argument("gt_dir", type=Path, help="folder of ground-truth masks")
    add_out(p, "folder for per-case CSV and summary JSON (default: PRED_DIR)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument(
        "--lesion-overlap",
        type=float,
        default=0.1,
        help="fraction of a true lesion's voxels one predicted component must cover to count it found (default 0.1)",
    )
    add_label(p, "the ground truth")
    p.add_argument(
        "--pred-label",
        type=int,
        metavar="N",
        help="the predictions are multi-label and the voxels equal to N are the tumour (default: none, binary "
        "predictions such as lungtumor's own)",
    )
    p.add_argument(
        "--score-missing",
        action="store_true",
        help="score a ground-truth case without a prediction as an empty prediction (Dice 0) instead of skipping it",
    )
    p.set_defaults(cmd="evaluate")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report (slice scroller, overlay, lesion table, metadata, loss curves)",
    )
    add_slot(p, "image", "CT", ("-i", "--input"), "the CT")
    p.add_argument("--mask", type=Path, required=True, help="the tumour mask on the CT's grid")
    add_out(p, required=True)
    p.add_argument(
        "--run-dir", type=Path, help="training run folder, to include its loss curves (default: none)"
    )
    add_label(p)
    p.set_defaults(cmd="report")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on built-in phantoms: synth, prepare, train, predict, evaluate, report",
        description="synth, prepare, train, predict the held-out phantoms (with reports), evaluate, into OUT; prints "
        "where everything is. Progress goes to stderr: bars on a terminal; in a log (a file, a pipe, nohup) plain "
        "lines instead, one per step, per tenth of a step's cases and per training epoch.",
    )
    add_out(p, "output folder (default ./lungtumor_demo)", default=Path("lungtumor_demo"))
    p.add_argument(
        "--cases", type=int, default=35, help="labelled phantoms, training + validation (default 35)"
    )
    p.add_argument("--val-cases", type=int, default=6, help="of those, validation phantoms (default 6)")
    p.add_argument(
        "--test-cases", type=int, default=8, help="held-out phantoms to predict and score (default 8)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="override the demo preset's epochs (default: the preset's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phantoms, the split and training")
    add_train_lesions(p, "rich")
    add_hilar(p, default=True)
    p.set_defaults(cmd="demo")


def _add_cv(sub) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation: train per fold, score out-of-fold cases, choose postprocessing",
        description="Prepares the recipe's cache into OUT/cache, trains one model per patient fold (OUT/fold_k/), "
        "predicts each fold's validation cases on their original grid, writes OUT/cv_cases.csv, OUT/cv_lesions.csv and "
        "OUT/cv_summary.json, and keeps a postprocessing (minimum lesion size, lung gating) only if it raises the "
        "mean out-of-fold Dice (OUT/postprocessing.json; also written into each fold's checkpoint).",
    )
    p.add_argument("dataset", type=Path, help="labelled dataset folder (dataset.json or imagesTr/labelsTr)")
    add_out(p, required=True)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--preset", default="default", choices=PRESET_NAMES, help="recipe (default: default)")
    p.add_argument("--config", type=Path, help="YAML config overriding the preset (default: none)")
    p.add_argument("--epochs", type=int, help="override train.epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="fold and training seed")
    p.add_argument("--device", default="auto", help=f"prediction device: {DEVICE_HELP}")
    p.set_defaults(cmd="cv")


def _add_benchmark_msd(sub) -> None:
    p = sub.add_parser(
        "benchmark-msd",
        help="5-fold CV of a recipe on an MSD Task06 folder, compared with nnU-Net's 0.72 mean per-case Dice",
    )
    p.add_argument("task_dir", type=Path, help="the Task06_Lung folder (dataset.json, imagesTr, labelsTr)")
    add_out(p, "output folder (default ./benchmark_msd)", default=Path("benchmark_msd"))
    p.add_argument("--preset", default="default", choices=PRESET_NAMES, help="recipe (default: default)")
    p.add_argument("--config", type=Path, help="YAML config overriding the preset (default: none)")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5, as nnU-Net)")
    p.add_argument("--epochs", type=int, help="override train.epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="fold and training seed")
    p.add_argument("--device", default="auto", help=f"prediction device: {DEVICE_HELP}")
    p.set_defaults(cmd="benchmark_msd")


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare a follow-up CT with its baseline: registration, lesion matching, RECIST 1.1 size category, "
        "volume change (a size measurement, not a diagnosis)",
        description="Registers the follow-up to the baseline on the lungs (rigid, optionally affine), matches the "
        "lesions (overlap, then centroid distance within 15 mm), chooses RECIST 1.1 target lesions at baseline and "
        "writes OUT/response.json (category, rule, sums, targets, registration residual), OUT/lesions.csv (a row "
        "per matched pair, new or vanished lesion) and OUT/compare.html. Missing masks are predicted with --model. "
        "See docs/followup.md.",
    )
    p.add_argument("baseline", type=Path, help="baseline CT (NIfTI, NRRD, MHA or a DICOM series folder)")
    p.add_argument("followup", type=Path, help="follow-up CT")
    add_out(p, required=True)
    p.add_argument(
        "--baseline-mask",
        type=Path,
        help="tumour mask on the baseline CT's grid, used as it is (default: predicted with --model)",
    )
    p.add_argument(
        "--followup-mask",
        type=Path,
        help="tumour mask on the follow-up CT's grid, used as it is (default: predicted with --model)",
    )
    p.add_argument(
        "--model",
        type=Path,
        action="append",
        help="checkpoint or run folder to predict a missing mask (repeat it for an ensemble; default: none)",
    )
    p.add_argument(
        "--interval-days",
        type=float,
        help="days between the scans, for volume doubling times (default: from the two DICOM StudyDates, else none)",
    )
    p.add_argument("--affine", action="store_true", help="refine the rigid registration with an affine one")
    p.add_argument("--device", default="auto", help=f"device for predicting missing masks: {DEVICE_HELP}")
    p.set_defaults(cmd="compare")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model package (.zip: safetensors weights, config, preprocessing, model card, README, sha256 "
        "manifest) or ONNX files of a checkpoint",
        description="--format package (default) writes OUT.zip, which predict --model and lungtumor models install "
        "take; --format onnx writes model.onnx (and detector.onnx) with onnx_export.json into the folder OUT "
        "(pip install 'lungtumor[onnx]'). See docs/deploy.md.",
    )
    add_slot(p, "model", "RUN_OR_CKPT", ("-i", "--input"), "checkpoint (.ckpt), run folder or model package")
    add_slot(p, "out", "OUT", ("-o", "--out"), "the package file (.zip), or a folder for --format onnx")
    p.add_argument("--format", default="package", choices=("package", "onnx"), help="what to write")
    p.add_argument("--opset", type=int, help="ONNX opset for --format onnx (default 17)")
    p.set_defaults(cmd="export")


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="install, list and remove model packages in a local models folder (predict --model NAME uses them)",
        description=f"Installed models live in --models-dir (default: {MODELS_DIR_HELP}) as NAME.zip.",
    )
    actions = p.add_subparsers(
        dest="models_action", metavar="ACTION", required=True, help="install, list or remove"
    )
    inst = actions.add_parser("install", help="check a package and copy it into the models folder")
    inst.add_argument("package", type=Path, help="model package (.zip) written by lungtumor export")
    inst.add_argument(
        "--name", help="the name to install it under (default: the package's file name without .zip)"
    )
    inst.add_argument("--force", action="store_true", help="replace an installed model of that name")
    inst.set_defaults(cmd="models_install")
    lst = actions.add_parser("list", help="the installed models, with their model cards")
    lst.set_defaults(cmd="models_list")
    rm = actions.add_parser("remove", help="delete an installed model")
    rm.add_argument("name", help="the installed model's name")
    rm.set_defaults(cmd="models_remove")
    for leaf in (inst, lst, rm):
        _add_models_dir(leaf)
        quiet_leaf(leaf)


COMMANDS = (
    _add_synth,
    _add_check,
    _add_prepare,
    _add_train,
    _add_predict,
    _add_measure,
    _add_evaluate,
    _add_report,
    _add_demo,
)
COMMANDS += (_add_cv, _add_benchmark_msd, _add_compare, _add_export, _add_models)
