"""Predict over files: CT files or DICOM folders in, masks, lesion tables, probability maps and reports out."""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lungtumor.core.errors import InputError, ensure_writable_dir
from lungtumor.core.paths import unique_stems
from lungtumor.core.runtime import cpu_has_bf16, resolve_device
from lungtumor.imaging.io import IMAGE_SUFFIXES, case_name, is_image_path
from lungtumor.inference.predictor import Predictor
from lungtumor.inference.store import resolve_model
from lungtumor.models import is_3d
from lungtumor.workflows.batch import (
    Shard,
    check_part,
    check_processes,
    continue_sources,
    finished_in,
    manifest_name,
    select_part,
)
from lungtumor.workflows.manifest import PredictManifest, model_record, settings_record
from lungtumor.workflows.outputs import (
    check_dicom_inputs,
    expected_outputs,
    load_dicom_writer,
    parse_output_types,
    run_info,
)
from lungtumor.workflows.stages import CaseReader, PredictResult, RunContext, run_cases
from lungtumor.workflows.stages import Settings as _Settings


@dataclass
class PredictOptions:
    """Options for :func:`predict_paths`. ``None`` means: use the checkpoint's ``infer`` config."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    min_z_extent_ratio: float | None = None
    postprocess: bool = True
    lung_gate: bool | None = None
    save_prob: bool = False
    report: bool = False
    measure: bool = True
    device: str = "auto"
    batch_size: int | None = None
    tta: bool | None = None
    precision: str = "auto"
    threads: int | None = None
    progress: bool = False
    nodules: bool | None = None
    output_types: str | Sequence[str] = ("nifti",)  # "nifti,dicom-seg,rtstruct,sr" (workflows.outputs)
    num_parts: int = 1  # predict part part_id of num_parts (cluster array jobs; workflows.batch)
    part_id: int = 0
    continue_prediction: bool = False  # skip the cases the manifest lists as finished (workflows.batch)
    models_dir: str | os.PathLike | None = None  # installed models (inference.store); None: the user's folder
    devices: int = 1  # processes per node (> 1, or num_nodes > 1: workflows.distributed.predict_sharded)
    num_nodes: int = 1
    # read the next case and write the last one while the model runs, the detector beside the 2D model's
    # batches (workflows.stages, inference.workers); False: one step after the other, the same outputs
    overlap: bool = True


def _is_dicom_file(f: Path) -> bool:
    """A ``.dcm`` file, or one with the DICOM preamble's ``DICM`` marker."""
    if f.suffix.lower() == ".dcm":
        return True
    try:
        with open(f, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _looks_like_dicom_dir(p: Path) -> bool:
    """A folder holding DICOM files and no image file of another format (then it is one series)."""
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return not any(is_image_path(f) for f in files) and any(_is_dicom_file(f) for f in files)


#: What ``predict`` writes beside a mask; a folder of inputs that holds them (a rerun into the input folder)
#: does not take them for CTs.
OUTPUT_SUFFIXES = ("_tumour", "_prob")


def collect_inputs(
    paths: Iterable[str | os.PathLike], skipped: list[tuple[Path, str]] | None = None
) -> list[tuple[str, Path]]:
    """Expand CLI inputs into (case name, path) pairs.

    A file is one case; a folder holding DICOM files and no other image file is one case (the series); any
    other folder contributes each image file and each DICOM sub-folder in it (sorted). What such a folder
    holds and is not taken (other files, sub-folders without a DICOM series, DICOM files beside other images,
    ``predict``'s own ``*_tumour``/``*_prob`` outputs) is appended to ``skipped`` as (path, reason), so that
    the caller can say so; hidden files are passed over.

    Raises:
        InputError: an input does not exist, or a folder holds nothing readable. Two inputs may share a case
            name: :func:`predict_paths` gives their outputs distinct names.
    """
    out: list[tuple[str, Path]] = []
    skip = skipped if skipped is not None else []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "no such file or folder")
        if p.is_file():
            out.append((case_name(p), p))
        elif _looks_like_dicom_dir(p):
            out.append((p.name, p))
        else:
            found = []
            for child in sorted(p.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_file() and is_image_path(child):
                    if case_name(child).endswith(OUTPUT_SUFFIXES):
                        skip.append((child, "a lungtumor output (*_tumour / *_prob), not a CT"))
                    else:
                        found.append((case_name(child), child))
                elif child.is_dir():
                    if _looks_like_dicom_dir(child):
                        found.append((child.name, child))
                    else:
                        skip.append((child, "a folder without a DICOM series (sub-folders are not searched)"))
                elif _is_dicom_file(child):
                    skip.append(
                        (child, "a DICOM file beside other CT images (give a series a folder of its own)")
                    )
                else:
                    skip.append((child, f"not a CT image ({', '.join(IMAGE_SUFFIXES)}) or DICOM series"))
            if not found:
                raise InputError(
                    p, f"folder holds no CT images ({', '.join(IMAGE_SUFFIXES)}) or DICOM series"
                )
            out.extend(found)
    return out


def _settings(opts: PredictOptions, loaded, device: torch.device) -> _Settings:
    """Resolve and check the options against the checkpoint's ``infer`` config (policy, no I/O)."""
    icfg = loaded.config.infer
    threshold = opts.threshold if opts.threshold is not None else icfg.threshold
    if not 0 < threshold < 1:
        raise InputError("--threshold", f"{threshold} is not a probability in (0, 1)")
    min_mm3 = opts.min_lesion_mm3 if opts.min_lesion_mm3 is not None else icfg.min_lesion_mm3
    if not (math.isfinite(min_mm3) and min_mm3 >= 0):
        raise InputError("--min-lesion-mm3", f"must be a finite number >= 0, got {min_mm3}")
    z_ratio = opts.min_z_extent_ratio if opts.min_z_extent_ratio is not None else icfg.min_z_extent_ratio
    if not (math.isfinite(z_ratio) and z_ratio >= 0):
        raise InputError("--min-z-extent-ratio", f"must be a finite number >= 0 (0 = off), got {z_ratio}")
    if opts.threads is not None and opts.threads < 1:
        raise InputError("--threads", f"must be at least 1, got {opts.threads}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InputError("--batch-size", f"must be at least 1, got {opts.batch_size}")
    tta = (
        opts.tta
        if opts.tta is not None
        else (icfg.tta or (is_3d(loaded.config) and loaded.config.vol3d.mirror_tta))
    )
    if opts.precision not in ("auto", "32", "bf16"):
        raise InputError("--precision", f"unknown precision {opts.precision!r}; use auto, 32 or bf16")
    if opts.precision != "auto":
        precision = opts.precision
    else:  # bf16 where the hardware has it (docs/decisions/0026)
        precision = "bf16" if device.type == "cuda" or cpu_has_bf16() else "32"
    lung_gate = opts.lung_gate if opts.lung_gate is not None else icfg.lung_gate
    return _Settings(threshold, min_mm3, z_ratio, lung_gate, bool(tta), precision)


def _skipped(case: str, src: Path, stem: str, entry: dict[str, Any], out: Path) -> PredictResult:
    """The result of a case an earlier run finished (``--continue``), from its manifest entry."""
    outputs = [out / str(o["path"]) for o in entry.get("outputs", [])]
    mask = out / f"{stem}_tumour.nii.gz"
    return PredictResult(
        case=case,
        source=src,
        mask_path=mask if mask in outputs else None,
        outputs=outputs,
        n_lesions=int(entry.get("n_lesions", 0)),
        tumour_ml=float(entry.get("tumour_ml", 0.0)),
        seconds=float(entry.get("seconds", 0.0)),
        stem=stem,
        skipped=True,
    )


def _carry_finished(
    manifest: PredictManifest, items: list[tuple[str, Path, str]], opts: PredictOptions, sources: list[Path]
) -> dict[str, dict[str, Any]]:
    """``--continue``: the manifest entries (by stem) of the cases an earlier run finished, carried over into
    ``manifest`` (``workflows.batch.finished_in`` the manifests ``sources``)."""

    def expected(stem: str) -> list[str]:
        return expected_outputs(
            stem, opts.output_types, save_prob=opts.save_prob, measure=opts.measure, report=opts.report
        )

    done, previous = finished_in(sources, items, expected, manifest.data["models"], manifest.data["settings"])
    manifest.carry([done[st] for _, _, st in items if st in done], previous or {})
    return done


def predict_paths(
    inputs: Iterable[str | os.PathLike],
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: PredictOptions | None = None,
    shard: Shard | None = None,
) -> list[PredictResult]:
    """Predict every input; write ``<case>_tumour.nii.gz`` (uint8, input geometry), lesion files, optional
    ``<case>_prob.nii.gz`` and report, DICOM SEG/RTSTRUCT/SR for DICOM inputs with ``opts.output_types``, and
    ``predict_manifest.json`` (docs/outputs.md). A failing case is reported in its result; the others go on.

    ``model_path`` is one checkpoint, run folder, model package or installed model name, or several: then
    their probabilities on the input grid are averaged (an ensemble, e.g. a 2D and a 3D model); the first
    model's infer settings apply. ``opts.num_parts``/``part_id`` predict one part of the cases (its own
    manifest), ``opts.continue_prediction`` skips the cases an earlier run finished (``workflows.batch``).
    ``shard``: this process is one rank of several (``workflows.distributed.predict_sharded``, which runs
    ``opts.devices`` x ``opts.num_nodes`` processes): it predicts its share into its own rank manifest.

    Raises:
        InputError: the model cannot be loaded, the output folder is not writable, or inputs are missing.
    """
    opts = opts or PredictOptions()
    opts = replace(opts, output_types=parse_output_types(opts.output_types))
    check_part(opts.num_parts, opts.part_id)
    check_processes(opts.devices, opts.num_nodes)
    if shard is None and opts.devices * opts.num_nodes > 1:
        raise InputError("--devices", "several processes: call workflows.distributed.predict_sharded")
    device = shard.device if shard else resolve_device(opts.device)
    cases = collect_inputs(inputs)
    check_dicom_inputs([src for _, src in cases], opts.output_types, Path(out_dir))  # DICOM in, not into it
    load_dicom_writer(opts.output_types)  # highdicom missing: say so before anything is loaded
    stems = unique_stems(cases)  # two inputs named ct.nii.gz: ct_<parent folder>_tumour.nii.gz each
    items = select_part([(c, src, st) for (c, src), st in zip(cases, stems, strict=True)], stems,
                        opts.num_parts, opts.part_id)  # fmt: skip
    items = shard.select(items) if shard else items  # this rank's cases: every N-th of the part
    specs = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    paths = [resolve_model(m, opts.models_dir) for m in specs]
    reader = CaseReader()  # the first CT is read while the models load (not with --continue: it may be done)
    if items and not opts.continue_prediction and opts.overlap:
        reader.prefetch(items[0][1])
    # load before the output folder exists: a bad model leaves nothing behind
    t_load = time.perf_counter()
    models = Predictor.load(paths, opts.nodules)
    t_load = time.perf_counter() - t_load
    s = _settings(opts, models[0], device)
    if opts.precision == "bf16" and any(m.runtime == "onnxruntime" for m in models):  # decisions/0030
        raise InputError("--precision", "bf16: ONNX exports run in float32 (onnxruntime); use 32 or auto")
    s = replace(s, precision="32") if all(m.runtime == "onnxruntime" for m in models) else s  # what ran
    # --batch-size applies to every model; without it each checkpoint uses its own infer.batch_size
    predictor = Predictor(models, device=device, precision=s.precision, tta=s.tta, batch_size=opts.batch_size,
                          parallel=opts.overlap)  # fmt: skip
    gc.freeze()  # libraries and models are long-lived: keep the per-case collection below cheap
    threads = opts.threads or (shard.threads if shard else None)
    if threads:
        torch.set_num_threads(threads)
    out, run_dir = ensure_writable_dir(out_dir), _run_dir_of(paths[0])
    # provenance: predict_manifest.json (one per part), rewritten atomically after every case
    part = (opts.part_id, opts.num_parts) if opts.num_parts > 1 else None
    name = manifest_name(opts.num_parts, opts.part_id)
    manifest = PredictManifest(out, [model_record(m) for m in models], settings_record(s, opts, device, models),
                               name=shard.manifest_name(name) if shard else name, part=part)  # fmt: skip
    sources = continue_sources(out, name) if shard else [manifest.path]  # a rank: the rank manifests too
    done = _carry_finished(manifest, items, opts, sources) if opts.continue_prediction else {}
    manifest.set_timing("load_models_s", t_load)
    info = run_info(manifest.data["models"], manifest.data["settings"])
    todo = [PredictResult(case=case, source=src, stem=stem) for case, src, stem in items if stem not in done]
    ctx = RunContext(predictor, s, opts, out, run_dir, info, manifest)
    predicted = iter(run_cases(todo, ctx, overlap=opts.overlap, progress=opts.progress, reader=reader))
    results = [_skipped(case, src, stem, done[stem], out) if stem in done else next(predicted)
               for case, src, stem in items]  # fmt: skip
    if shard:
        shard.manifest = manifest.data  # for rank 0's merge (workflows.distributed)
    return results


def _run_dir_of(model_path: Path) -> Path | None:
    """The training run folder of a checkpoint (for loss curves in reports), if recognisable."""
    if model_path.is_dir():
        return model_path
    for parent in (model_path.parent, model_path.parent.parent):
        if (parent / "config.yaml").exists():
            return parent
    return None


def predict(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    **options: Any,
) -> list[PredictResult]:
    """Segment the tumours of one or more CTs: the public face of :func:`predict_paths`.

    Args:
        inputs: a CT file (NIfTI, NRRD, MHA), a DICOM series folder, a folder of these, or a list of them.
        model: a checkpoint (.ckpt), run folder, model package (.zip) or installed model's name, 2D or 3D; a
            list averages several (an ensemble).
        out_dir: where ``<case>_tumour.nii.gz`` (uint8, the input's geometry) and the lesion tables go.
        **options: any :class:`PredictOptions` field, e.g. ``threshold=0.5, device="cpu", report=True``.

    Returns:
        One :class:`PredictResult` per CT; a failed case has ``error`` set and the others go on.

    Raises:
        InputError: a bad option, model or input path (the message names it).
    """
    fields = set(PredictOptions.__dataclass_fields__)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(
            "predict", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return predict_paths(items, model, out_dir, PredictOptions(**options))
