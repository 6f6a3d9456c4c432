"""The dataset model (Medical Segmentation Decathlon layout) and ``lungtumor check``.

A dataset folder holds either a ``dataset.json`` (``training``: [{image, label}], ``test``: [paths],
``labels``, ``modality``) or, without one, ``imagesTr/``, ``labelsTr/`` and optionally ``imagesTs/``
whose labels are matched to images by file name (an nnU-Net channel suffix ``_0000`` is ignored).

:func:`load_dataset` checks the structure only (JSON, keys, duplicates, no path outside the folder);
:func:`check_dataset` then reads every case and reports per-case problems without stopping.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungtumor.core.errors import InputError
from lungtumor.core.progress import tqdm
from lungtumor.imaging.io import case_name, is_image_path, read_mask, read_volume

_CHANNEL_SUFFIX = re.compile(r"_0000$")

#: dataset.json ``name`` of the phantoms that ``lungtumor synth`` writes (``data.phantom``): how a model card
#: knows that a model saw nothing but synthetic data.
PHANTOM_DATASET_NAME = "lungtumor-phantoms"


@dataclass(frozen=True)
class Case:
    """One labelled case: ``image`` and ``label`` are absolute paths inside the dataset folder (symlinks there
    are kept as links, not resolved)."""

    name: str
    image: Path
    label: Path | None


@dataclass
class Dataset:
    """A dataset: its resolved ``root``, labelled ``cases`` (sorted by name), unlabelled ``test`` images, and
    ``validation``: case names that dataset.json fixes as the validation patients (empty: prepare draws them)."""

    root: Path
    cases: list[Case]
    test: list[Path] = field(default_factory=list)
    source: str = "folders"  # "dataset.json" or "folders"
    validation: list[str] = field(default_factory=list)


def _inside(root: Path, rel: str | os.PathLike, where: str) -> Path:
    """``rel`` joined to ``root``; refuse a path whose name leaves ``root`` (``..``, an absolute path elsewhere).

    Symlinks are not resolved: a file or folder inside ``root`` may be a link to anywhere (nnU-Net datasets
    are often folders of links to the raw data), and the case keeps the link's name. An absolute path
    spelled through a symlinked ``root`` is accepted when it resolves inside it.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(where, f"path must be a non-empty string, got {rel!r}")
    if "\x00" in rel:
        raise InputError(where, f"path {rel!r} is not a valid path (embedded null byte)")
    full = Path(os.path.normpath(root / rel))  # an absolute ``rel`` replaces ``root``
    if full != root and root not in full.parents:
        try:
            resolved = full.resolve()
        except (ValueError, OSError, RuntimeError):  # e.g. a symlink loop
            resolved = full
        if Path(rel).is_absolute() and root in resolved.parents:
            return resolved
        raise InputError(where, f"path {rel!r} points outside the dataset folder {root}")
    return full


def _name_of(path: Path) -> str:
    return _CHANNEL_SUFFIX.sub("", case_name(path))


def _image_files(folder: Path) -> list[Path]:
    """Image files (and DICOM series folders) of ``folder``, hidden files (e.g. macOS ``._x``) skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and (is_image_path(p) or p.is_dir())
    )


def _load_json(root: Path, jpath: Path) -> Dataset:
    try:
        data = json.loads(jpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(jpath, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise InputError(jpath, "invalid JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(jpath, f"cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise InputError(jpath, "expected a JSON object with a 'training' list")
    if "training" not in data:
        raise InputError(jpath, 'missing key \'training\' (a list of {"image": ..., "label": ...})')
    training = data["training"]
    if not isinstance(training, list):
        raise InputError(jpath, '\'training\' must be a list of {"image": ..., "label": ...}')
    modality = data.get("modality")
    if isinstance(modality, dict) and len(modality) > 1:
        raise InputError(jpath, f"'modality' lists {len(modality)} channels; one CT channel is supported")
    labels = data.get("labels")
    if isinstance(labels, dict) and len(labels) > 2:
        raise InputError(
            jpath, f"'labels' lists {len(labels)} classes; binary tumour labels (0, 1) are supported"
        )
    cases: list[Case] = []
    for i, entry in enumerate(training):
        where = f"{jpath}: training[{i}]"
        if not isinstance(entry, dict):
            raise InputError(where, "expected an object with 'image' and 'label'")
        for key in ("image", "label"):
            if key not in entry:
                raise InputError(where, f"missing key '{key}'")
        image = _inside(root, entry["image"], where)
        label = _inside(root, entry["label"], where)
        cases.append(Case(_name_of(image), image, label))
    test_raw = data.get("test", [])
    if not isinstance(test_raw, list):
        raise InputError(jpath, "'test' must be a list of image paths")
    test = []
    for i, t in enumerate(test_raw):
        if isinstance(t, dict) and "image" in t:  # some tools write [{"image": ...}]
            t = t["image"]
        test.append(_inside(root, t, f"{jpath}: test[{i}]"))
    val = data.get("validation", [])
    names = {c.name for c in cases}
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise InputError(jpath, "'validation' must be a list of training case names")
    unknown = [v for v in val if v not in names]
    if unknown:
        raise InputError(jpath, f"'validation' names {unknown[0]!r}, which is not a training case")
    if len(set(val)) != len(val) or (val and len(val) >= len(cases)):
        raise InputError(jpath, "'validation' must name distinct cases and leave at least one for training")
    return Dataset(root, cases, test, source="dataset.json", validation=sorted(val))


def _load_folders(root: Path) -> Dataset:
    images = _image_files(root / "imagesTr")
    labels = {_name_of(p): p for p in _image_files(root / "labelsTr")}
    cases = []
    for img in images:
        name = _name_of(img)
        cases.append(Case(name, _inside(root, str(img), str(img)), labels.get(name)))
    names = {c.name for c in cases}
    for name, lab in labels.items():
        if name not in names:
            raise InputError(lab, "label has no image with the same name in imagesTr")
    resolved = [
        Case(c.name, c.image, _inside(root, str(c.label), str(c.label)) if c.label else None) for c in cases
    ]
    test = [_inside(root, str(p), str(p)) for p in _image_files(root / "imagesTs")]
    return Dataset(root, resolved, test, source="folders")


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Read a dataset's structure (no voxels).

    Returns:
        Dataset with cases sorted by name; a case's ``label`` is ``None`` when the folder layout has no label.

    Raises:
        InputError: missing folder, invalid dataset.json, missing keys, duplicate cases, a path outside the
            folder by its name (``..`` or absolute; a symlink in the folder may point anywhere), or no cases.
    """
    given = Path(root)
    if not given.exists():
        raise InputError(given, "dataset folder does not exist")
    if not given.is_dir():
        raise InputError(
            given, "not a folder (expected a dataset folder with dataset.json or imagesTr/labelsTr)"
        )
    rootr = given.resolve()
    jpath = rootr / "dataset.json"
    if jpath.exists():
        ds = _load_json(rootr, jpath)
    elif (rootr / "imagesTr").is_dir():
        ds = _load_folders(rootr)
    else:
        raise InputError(given, "no dataset.json and no imagesTr/ folder (empty or not a dataset)")
    where = str(jpath) if ds.source == "dataset.json" else str(rootr / "imagesTr")
    if not ds.cases:
        raise InputError(where, "dataset has no training cases")
    seen: dict[str, Case] = {}
    for c in ds.cases:
        if c.name in seen:
            raise InputError(where, f"duplicate case {c.name!r} ({seen[c.name].image} and {c.image})")
        seen[c.name] = c
    ds.cases.sort(key=lambda c: c.name)
    return ds


def dataset_source(ds: Dataset) -> dict[str, object]:
    """Where a dataset's cases come from, for the prepared cache and the model card (primitives only).

    Returns:
        ``{"name", "path", "description", "synthetic", "cases"}``: ``synthetic`` is True for the phantoms of
        ``lungtumor synth`` (dataset.json ``name`` is :data:`PHANTOM_DATASET_NAME` and ``lesions.json`` lies
        beside it), False for any other dataset; ``cases`` counts the labelled cases.
    """
    meta: dict = {}
    if ds.source == "dataset.json":
        try:
            loaded = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            meta = {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ds.root.name
    synthetic = name == PHANTOM_DATASET_NAME and (ds.root / "lesions.json").is_file()
    description = meta.get("description") if isinstance(meta.get("description"), str) else ""
    return {
        "name": name,
        "path": str(ds.root),
        "description": description,
        "synthetic": synthetic,
        "cases": len(ds.cases),
    }


# ----------------------------------------------------------------------------- check


@dataclass
class CaseCheck:
    """Result of reading one case: geometry and tumour volume, or the one-line ``error``."""

    name: str
    image: Path
    shape: tuple[int, int, int] | None = None  # (z, y, x)
    spacing: tuple[float, float, float] | None = None  # (x, y, z) mm
    tumour_ml: float | None = None
    error: str | None = None


@dataclass
class CheckReport:
    """All cases of a dataset; ``ok`` is False when any case is bad."""

    root: Path
    source: str
    cases: list[CaseCheck]
    n_test: int = 0
    test_errors: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """One line per bad case or test image: ``<file>: <problem>``."""
        return [c.error for c in self.cases if c.error] + self.test_errors

    @property
    def ok(self) -> bool:
        return not self.errors


def check_case(case: Case) -> CaseCheck:
    """Read one case fully and validate it (readable, 3D, finite, label {0, 1} on the image grid)."""
    res = CaseCheck(case.name, case.image)
    try:
        if case.label is None:
            raise InputError(case.image, "no label with the same name in labelsTr")
        vol = read_volume(case.image)
        res.shape, res.spacing = vol.shape, vol.spacing
        mask = read_mask(case.label, reference=vol)
        res.tumour_ml = float(np.count_nonzero(mask.array)) * vol.voxel_volume_mm3 / 1000.0
    except InputError as e:
        res.error = str(e)
    return res


def check_dataset(root: str | os.PathLike, progress: bool = False, check_test: bool = True) -> CheckReport:
    """Validate every case of the dataset at ``root`` (reads every file once).

    Raises:
        InputError: the dataset's structure is invalid (see :func:`load_dataset`). Per-case problems are
            collected in the report instead.
    """

    ds = load_dataset(root)
    results = [check_case(c) for c in tqdm(ds.cases, desc="check", unit="case", disable=not progress)]
    test_errors = []
    if check_test and ds.test:
        for t in tqdm(ds.test, desc="check test", unit="image", disable=not progress):
            try:
                read_volume(t)
            except InputError as e:
                test_errors.append(str(e))
    return CheckReport(ds.root, ds.source, results, len(ds.test), test_errors)


def format_check_report(report: CheckReport) -> str:
    """The table (case, shape z×y×x, spacing x×y×z mm, tumour mL) and a summary line; errors excluded."""
    rows = [("case", "shape (z,y,x)", "spacing (x,y,z) mm", "tumour mL")]
    for c in report.cases:
        if c.error:
            rows.append((c.name, "-", "-", "BAD"))
            continue
        shape = "x".join(str(s) for s in c.shape or ())
        spacing = "x".join(f"{s:.3g}" for s in c.spacing or ())
        rows.append((c.name, shape, spacing, f"{c.tumour_ml:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    n_bad = sum(1 for c in report.cases if c.error) + len(report.test_errors)
    lines.append(
        f"{len(report.cases)} training cases, {report.n_test} test images ({report.source}): "
        + ("all OK" if not n_bad else f"{n_bad} bad")
    )
    return "\n".join(lines)
