"""Typed configuration: dataclasses for preparation, model, training and inference, with YAML I/O.

A run's resolved :class:`RunConfig` is saved next to (and inside) every checkpoint, so prediction needs
nothing but the checkpoint. Unknown keys and wrong types in a YAML file are refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lungtumor.core.errors import InputError, atomic_write_text

# The losses `lungtumor.training.losses.LOSSES` offers (kept here so that config needs no torch; a test checks they agree):
# batch soft Dice + BCE, BCE alone (the seed), per-sample soft Dice + BCE (small lesions weigh like big ones), and
# batch soft Dice + a BCE whose small-lesion pixels weigh up to 9x.
LOSS_NAMES = ("bce", "dice_bce", "dice_bce_sample", "dice_bce_small")


@dataclass
class PrepConfig:
    """How a CT becomes model input (the same steps run in ``prepare`` and ``predict``).

    Attributes:
        norm: ``"divide"`` (HU / hu_divisor, the seed's recipe) or ``"window_zscore"`` (clip to
            ``window_hu`` then z-score with the training set's mean/std, computed by ``prepare``).
        hu_divisor: divisor for ``norm="divide"``.
        window_hu: (low, high) HU clip window for ``norm="window_zscore"``.
        resize: ``"size"`` (resize each axial slice to ``size``, the seed's recipe) or ``"spacing"``
            (resample in-plane to ``spacing_mm``, then pad/crop the centre to ``size``).
        size: in-plane output size (rows, cols) = (y, x) in pixels.
        spacing_mm: in-plane target spacing in mm for ``resize="spacing"``.
        blob: add a 3D blobness channel (Hessian objectness of the prepared HU, see ``blobness.py``): on
            one slice a small nodule looks like a vessel, in 3D it is a blob and a vessel a tube.
    """

    norm: str = "window_zscore"
    hu_divisor: float = 3071.0
    window_hu: tuple[float, float] = (-1000.0, 500.0)
    resize: str = "spacing"
    size: tuple[int, int] = (256, 256)
    spacing_mm: float = 1.5
    blob: bool = False


@dataclass
class ModelConfig:
    """Network choice. ``in_channels`` is derived: 2 * context_slices + 1 CT slices, + 1 with ``prep.blob``.

    Attributes:
        arch: registry name, e.g. ``"unet2d"``.
        base_channels: channels of the first level (UNet-64 means 64).
        depth: number of down-sampling steps.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
    """

    arch: str = "unet2d"
    base_channels: int = 32
    depth: int = 4
    norm: str = "batch"
    in_channels: int = 3
    out_channels: int = 1


@dataclass
class AugmentConfig:
    """Joint image+mask augmentation, applied to whole batches on the training device."""

    scale: tuple[float, float] = (0.85, 1.15)
    rotation_deg: float = 45.0
    elastic_alpha_px: float = 8.0
    elastic_sigma_px: float = 16.0
    elastic_p: float = 0.5
    flip: bool = True
    intensity_jitter: float = 0.1
    p: float = 1.0


@dataclass
class TrainConfig:
    """Optimisation and runtime settings.

    ``ema_decay`` > 0 keeps an exponential moving average of the weights (decay per optimiser step, e.g.
    0.995 averages over about 200 steps); validation, the checkpoints and so prediction use the average.
    0 = off. 2D trainer only (a 3D config with it is refused).
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "dice_bce"
    context_slices: int = 1
    context_mm: float = 0.0
    oversample: bool = True
    lesion_balance: float = 0.0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_steps_per_epoch: int = 0
    val_every_n_epochs: int = 1
    data_on_device: str = "auto"
    lr_schedule: str = "cosine"
    num_workers: int = 0
    log_every_n_steps: int = 10
    val_batch_size: int = 32
    crop_size: int = 0
    crop_tumour_fraction: float = 0.67
    ema_decay: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class InferConfig:
    """Prediction settings.

    ``min_z_extent_ratio`` > 0 drops components whose z extent (mm) is under that fraction of their largest
    axial diameter (``postprocess.remove_flat_components``: the one-slice false positives of a 2D model).
    """

    threshold: float = 0.5
    min_lesion_mm3: float = 20.0
    min_z_extent_ratio: float = 0.0
    lung_gate: bool = False
    batch_size: int = 16
    tta: bool = False


@dataclass
class Vol3DConfig:
    """The 3D recipe (preset ``3d``, ``model.arch = "unet3d"``): nnU-Net-like resampling, CT normalisation,
    patch training and sliding-window inference. Zeros mean "choose automatically"; the chosen values are
    written back into the run's config, so a checkpoint records what it was trained with.

    Attributes:
        target_spacing: (x, y, z) mm; (0, 0, 0) = the training set's median spacing (computed by prepare).
        clip_percentiles: foreground (tumour voxel) HU percentiles to clip to, then z-score with the
            foreground mean/std (nnU-Net's CT scheme).
        patch_size: training/inference window (z, y, x) voxels; zeros = from spacing and memory.
        batch_size: patches per step; 0 = from memory.
        memory_budget_gb: activation memory for planning; 0 = 60 % of free GPU memory, or 1 GB on the CPU.
        anisotropic_levels: first levels pooled (1, 2, 2) instead of (2, 2, 2); -1 = from the spacing.
        deep_supervision: extra logits at lower scales in training (loss weights halve per scale).
        residual_encoder: residual blocks in the encoder.
        overlap: sliding-window overlap fraction at inference (validation uses min(overlap, 0.25)).
        sw_batch_size: windows per forward pass at inference.
        foreground_fraction: share of patches centred on a tumour voxel.
        mirror_tta: average over the 8 axis flips at inference.
        steps_per_epoch: optimiser steps per epoch.
        rotation_deg: max rotation (degrees; about z only when anisotropic).
        scale: (low, high) zoom factor range of the augmentation.
    """

    target_spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    patch_size: tuple[int, int, int] = (0, 0, 0)
    batch_size: int = 0
    memory_budget_gb: float = 0.0
    anisotropic_levels: int = -1
    deep_supervision: bool = True
    residual_encoder: bool = False
    overlap: float = 0.5
    sw_batch_size: int = 4
    foreground_fraction: float = 0.33
    mirror_tta: bool = False
    steps_per_epoch: int = 250
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.25)


@dataclass
class NoduleConfig:
    """The 3D nodule detector that runs beside a 2D model (``nodules.py``, ``nodule_train.py``).

    A 2D model sees a small nodule on a few slices, where it looks like a vessel's cross-section; in 3D one
    is a blob, the other a tube. The detector finds bright blobs in the lungs (multi-scale Laplacian of
    Gaussian peaks on the prepared frame resampled to ``spacing_mm`` isotropic), and a small 3D CNN scores
    a ``patch`` ³ cube around each one and segments it. Lesions it accepts (score >= ``threshold``) that the
    2D model missed are added to the 2D mask; the 2D model's own lesions are kept as they are.

    Attributes:
        enabled: train the detector after the 2D model and use it in predict.
        spacing_mm: isotropic voxel size (mm) of the detector's frame.
        radii_mm: blob radii (mm) of the LoG scales (sigma = r / sqrt(3)).
        min_response: smallest scale-normalised LoG response (HU) of a candidate.
        min_hu: smallest HU at a candidate's centre.
        patch: side of the cube (voxels) the network sees around a candidate.
        channels: widths of the network's three levels.
        steps: optimiser steps (batches of ``batch_size`` patches, half of them on tumours).
        batch_size: patches per step.
        lr: peak learning rate (one-cycle schedule).
        hard_negatives: from halfway on, the share of each batch's non-tumour cubes drawn from the hardest
            quarter of ``mine_pool`` scored candidates (0 = off).
        mine_pool: how many non-tumour candidates are scored to find the hard ones.
        threshold: smallest candidate score that adds a lesion.
        min_diameter_mm: smallest lesion the detector adds, as the diameter of a sphere of its volume (its
            false positives are mostly smaller: BENCHMARKS.md "Session 9").
        confirm_small: at predict, the 2D model's lesions smaller than ``min_diameter_mm`` are kept only
            where a voxel of the detector's segmentation (>= 0.5, of a candidate scoring >= ``threshold``)
            lies in them or next to them (26-neighbourhood), also one of a size the detector would not add
            itself (a vessel's cross-section looks like a small nodule on a few slices; the 2D model's small
            lesions are mostly that). No effect with ``min_diameter_mm`` 0.
        tta: at predict, score and segment each candidate that can still reach ``threshold`` as the mean
            over the 8 flips of its cube's axes (the flips it was trained with).
        Both are read from the checkpoint, so a checkpoint saved before they existed predicts without them.
    """

    enabled: bool = False
    spacing_mm: float = 2.0
    radii_mm: tuple[float, ...] = (2.5, 4.0, 6.0, 9.0)
    min_response: float = 250.0
    min_hu: float = -600.0
    patch: int = 16
    channels: tuple[int, int, int] = (16, 32, 64)
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    hard_negatives: float = 0.5
    mine_pool: int = 4096
    threshold: float = 0.98
    min_diameter_mm: float = 8.0
    confirm_small: bool = False
    tta: bool = False


@dataclass
class RunConfig:
    """Everything a training run needs and prediction reuses."""

    prep: PrepConfig = field(default_factory=PrepConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    preset: str = "default"
    vol3d: Vol3DConfig = field(default_factory=Vol3DConfig)
    nodule: NoduleConfig = field(default_factory=NoduleConfig)


def _seed2d() -> RunConfig:
    c = RunConfig(preset="seed2d")
    c.prep = PrepConfig(norm="divide", resize="size", size=(256, 256))
    c.model = ModelConfig(arch="unet2d", base_channels=64, depth=4, in_channels=1)
    c.train = TrainConfig(
        epochs=30,
        batch_size=8,
        lr=1e-4,
        loss="bce",
        lr_schedule="constant",
        context_slices=0,
        precision="32",
        channels_last=False,
        augment=AugmentConfig(flip=False, intensity_jitter=0.0),
    )
    return c


def _default() -> RunConfig:
    return RunConfig(preset="default")


def _demo() -> RunConfig:
    """Small and fast enough for 2 CPU cores in a few minutes: UNet-16 on 96x96 crops of 2 mm slices, bf16.

    ``train.context_mm`` and ``prep.blob`` stay off: on the phantoms they gained +0.03 Dice or less (within
    the seed noise), lowered the real-data check, and the blob channel doubles the predict time
    (BENCHMARKS.md "Session 4")."""
    c = RunConfig(preset="demo")
    c.prep = PrepConfig(norm="window_zscore", resize="spacing", spacing_mm=2.0, size=(192, 192))
    c.model = ModelConfig(arch="unet2d", base_channels=16, depth=4, in_channels=3)
    c.train = TrainConfig(
        # BENCHMARKS.md "Session 5": 20 beat 12 on all three held-out sets (mean +0.07); 16: +0.02. Session 9:
        # 14, to make room for the nodule detector (14 + detector 0.656 mean over 40 held-out phantoms, 20 alone 0.586)
        epochs=14,
        batch_size=16,
        lr=1e-3,  # BENCHMARKS.md "Session 3": 1e-3 beat 5e-4, 2e-3 and 3e-3 on both held-out sets
        loss="dice_bce",
        context_slices=1,
        precision="bf16-mixed",
        max_steps_per_epoch=100,
        val_every_n_epochs=3,
        crop_size=96,
    )
    # `demo` predicts with --tta (BENCHMARKS.md: +0.03 Dice, 1.7x time). Flat components out: BENCHMARKS.md
    # "Session 6" (false positives about halved, every real lesion is deeper than 0.44 x its width)
    c.infer = InferConfig(lung_gate=True, min_z_extent_ratio=0.4)
    # BENCHMARKS.md "Session 9": the 3D detector finds what 2D misses. "Session 12": flip-averaged scores and
    # the detector's word on the 2D model's small lesions: 0.559 -> 0.612 over 3 detector seeds x 40 phantoms
    c.nodule = NoduleConfig(enabled=True, tta=True, confirm_small=True)
    return c


PRESETS: dict[str, typing.Callable[[], RunConfig]] = {"default": _default, "seed2d": _seed2d, "demo": _demo}


def _3d() -> RunConfig:
    """The 3D recipe (nnU-Net-like 3D full resolution): instance-norm 3D U-Net, deep supervision, patches."""
    c = RunConfig(preset="3d")
    c.model = ModelConfig(arch="unet3d", base_channels=32, depth=5, norm="instance", in_channels=1)
    c.train = TrainConfig(epochs=100, lr=1e-3, loss="dice_bce", context_slices=0, weight_decay=3e-5)
    c.infer = InferConfig(min_lesion_mm3=0.0)
    c.vol3d = Vol3DConfig()
    return c


PRESETS["3d"] = _3d


def preset(name: str) -> RunConfig:
    """The named preset. Raises InputError listing the valid names."""
    if name not in PRESETS:
        raise InputError("--preset", f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------- YAML / dict conversion


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass to plain dict (tuples become lists for YAML/JSON)."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return conv(asdict(cfg))


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, prefix=where + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise InputError(source, f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], where, source) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InputError(source, f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where, source) for v, a in zip(value, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _coerce(value, a, where, source)
            except InputError:
                continue
        raise InputError(source, f"{where}: value {value!r} has the wrong type")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(source, f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(source, f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(source, f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(source, f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: Any, *, source: str = "config", prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or defaults) and overriding given keys.

    Raises:
        InputError: unknown keys or wrong types, naming ``source`` and the key path.
    """
    if not isinstance(data, dict):
        raise InputError(
            source, f"{prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(source, f"unknown key {prefix}{unknown[0]}; valid keys: {', '.join(sorted(names))}")
    obj = base if base is not None else cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            sub_base = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = from_dict(
                    hints[f.name], data[f.name], source=source, prefix=f"{prefix}{f.name}.", base=sub_base
                )
            else:
                kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name, source)
    return dataclasses.replace(obj, **kwargs)


def load_config(path: str | os.PathLike | None = None, preset_name: str | None = None) -> RunConfig:
    """Resolve a config: start from ``preset_name`` (or the YAML's ``preset`` key, or ``default``), apply the YAML."""

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(p, f"cannot read config ({getattr(e, 'strerror', None) or e})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(p, f"invalid YAML ({str(e).splitlines()[0]})") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise InputError(p, "config must be a mapping of sections (prep, model, train, infer)")
    name = preset_name or data.get("preset") or "default"
    if not isinstance(name, str):
        raise InputError(path, "preset: expected a string")
    base = preset(name)
    cfg = from_dict(RunConfig, data, source=str(path) if path else "config", base=base)
    cfg.preset = name
    validate(cfg, str(path) if path else "config")
    return cfg


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check values that types alone cannot (ranges, choices). Raises InputError."""

    def bad(key: str, msg: str) -> None:
        raise InputError(source, f"{key}: {msg}")

    if not 0 <= cfg.train.ema_decay < 1:
        bad("train.ema_decay", "must be in [0, 1) (0 = off; e.g. 0.995 averages over about 200 steps)")
    if cfg.model.arch == "unet3d" and cfg.train.ema_decay > 0:
        bad("train.ema_decay", "is for the 2D trainer; the 3D recipe (model.arch unet3d) has no EMA")
    if cfg.prep.norm not in ("divide", "window_zscore"):
        bad("prep.norm", f"{cfg.prep.norm!r} is not one of divide, window_zscore")
    if cfg.prep.resize not in ("size", "spacing"):
        bad("prep.resize", f"{cfg.prep.resize!r} is not one of size, spacing")
    if cfg.prep.window_hu[0] >= cfg.prep.window_hu[1]:
        bad("prep.window_hu", "low must be below high")
    if min(cfg.prep.size) < 16 or max(cfg.prep.size) > 2048:
        bad("prep.size", "each side must be between 16 and 2048 pixels")
    if not 0.1 <= cfg.prep.spacing_mm <= 20:
        bad("prep.spacing_mm", "must be between 0.1 and 20 mm")
    if cfg.train.epochs < 1:
        bad("train.epochs", "must be at least 1")
    if cfg.train.batch_size < 1:
        bad("train.batch_size", "must be at least 1")
    if not 0 < cfg.train.lr < 1:
        bad("train.lr", "must be in (0, 1)")
    if cfg.train.loss not in LOSS_NAMES:
        bad("train.loss", f"{cfg.train.loss!r} is not one of {', '.join(LOSS_NAMES)}")
    if not 0 <= cfg.train.context_slices <= 8:
        bad("train.context_slices", "must be between 0 and 8")
    if not 0 <= cfg.train.context_mm <= 50:
        bad("train.context_mm", "must be between 0 (adjacent slices) and 50 mm")
    if not 0 < cfg.infer.threshold < 1:
        bad("infer.threshold", "must be in (0, 1)")
    if cfg.infer.min_lesion_mm3 < 0:
        bad("infer.min_lesion_mm3", "must be >= 0")
    if cfg.infer.min_z_extent_ratio < 0:
        bad("infer.min_z_extent_ratio", "must be >= 0 (0 = off)")
    _validate_nodule(cfg, bad)
    cfg.model.in_channels = 2 * cfg.train.context_slices + 1 + int(cfg.prep.blob)


def _validate_nodule(cfg: RunConfig, bad: typing.Callable[[str, str], None]) -> None:
    n = cfg.nodule
    if n.enabled and cfg.model.arch == "unet3d":
        bad("nodule.enabled", "is for 2D models; the 3D recipe sees nodules in 3D already")
    if not 0.5 <= n.spacing_mm <= 5:
        bad("nodule.spacing_mm", "must be between 0.5 and 5 mm")
    if not n.radii_mm or min(n.radii_mm) <= 0:
        bad("nodule.radii_mm", "needs at least one radius, each > 0 mm")
    if n.patch < 8 or n.patch % 4:
        bad("nodule.patch", "must be a multiple of 4, at least 8 voxels")
    if len(n.channels) != 3 or min(n.channels) < 1:
        bad("nodule.channels", "needs three widths >= 1")
    if n.steps < 1 or n.batch_size < 2:
        bad("nodule.steps", "steps must be >= 1 and batch_size >= 2")
    if not 0 < n.lr < 1:
        bad("nodule.lr", "must be in (0, 1)")
    if not 0 < n.threshold < 1:
        bad("nodule.threshold", "must be in (0, 1)")
    if n.min_diameter_mm < 0:
        bad("nodule.min_diameter_mm", "must be >= 0 (0 = keep every size)")
    if not 0 <= n.hard_negatives <= 1 or n.mine_pool < 4:
        bad("nodule.hard_negatives", "must be in [0, 1], with mine_pool >= 4")


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML, atomically."""

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(data: dict[str, Any], source: str = "checkpoint") -> RunConfig:
    """Rebuild a RunConfig from :func:`to_dict` output (as stored in checkpoints).

    Keys missing from ``data`` take the dataclass defaults, not the named preset's current values: a key is
    missing only when the checkpoint predates the option, and the defaults are the option switched off (a
    preset that later turned ``prep.blob`` on must not add a channel to an older model)."""
    cfg = from_dict(RunConfig, data, source=source, base=RunConfig())
    validate(cfg, source)
    return cfg
