"""Typed configuration: dataclasses for preparation, model, training and inference, with YAML I/O.

A run's resolved :class:`RunConfig` is saved next to (and inside) every checkpoint, so prediction needs
nothing but the checkpoint. Unknown keys and wrong types in a YAML file are refused with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The losses `lungtumor.training.losses.LOSSES` offers (kept here so that config needs no torch; a test checks they agree):
# batch soft Dice + BCE, BCE alone (the seed), per-sample soft Dice + BCE (small lesions weigh like big ones), and
# batch soft Dice + a BCE whose small-lesion pixels weigh up to 9x.
LOSS_NAMES = ("bce", "dice_bce", "dice_bce_sample", "dice_bce_small")


#: ``model.arch`` of the 3D recipe (every other arch is a 2D/2.5D network).
ARCH_3D = "unet3d"


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
        blob: add a 3D blobness channel (Hessian objectness of the prepared HU, see ``preprocessing.blobness``): on
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
    # acquisition (training.acquisition; docs/decisions/0036): share of samples re-"acquired" (0 = off), the
    # added noise's sd in HU (uniform per sample), the reconstruction kernel (-1 = a 1-px Gaussian blur, 0 = as
    # is, +1 = an unsharp mask of the same width; uniform per sample, applied after the noise so that a sharp
    # kernel sharpens the noise too) and the share of those samples whose slices are averaged with their
    # neighbours (thicker slices; 2.5D context channels only)
    acq_p: float = 0.0
    acq_noise_hu: tuple[float, float] = (10.0, 60.0)
    acq_kernel: tuple[float, float] = (-1.0, 1.0)
    acq_thick_p: float = 0.3


@dataclass
class TrainConfig:
    """Optimisation and runtime settings.

    ``ema_decay`` > 0 keeps an exponential moving average of the weights (decay per optimiser step, e.g.
    0.995 averages over about 200 steps); validation, the checkpoints and so prediction use the average.
    0 = off. 2D trainer only (a 3D config with it is refused).

    ``devices`` is Lightning's: a count (GPUs, or CPU processes, per node) or a list of GPU indices (``[1]``:
    GPU 1 alone, what ``train --device cuda:1`` sets; ``[0, 2]``: DDP on GPUs 0 and 2).
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
    negative_fraction: float = 0.0  # share of each batch from tumour-free (hard-negative) cases; 0: as drawn
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    accelerator: str = "auto"
    devices: int | list[int] = 1
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
    axial diameter (``postprocessing.filters.remove_flat_components``: the one-slice false positives of a 2D model).
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
    """The 3D nodule detector that runs beside a 2D model (``inference.detector``, ``training.detector``).

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
            quarter of ``mine_pool`` scored candidates (0 = off, the default; 0.5 measured no better).
        mine_pool: how many non-tumour candidates are scored to find the hard ones.
        threshold: smallest candidate score that adds a lesion.
        min_diameter_mm: smallest lesion the detector adds, as the diameter of a sphere of its volume (its
            false positives are mostly smaller: docs/decisions/0011).
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
    hard_negatives: float = 0.0  # off: no effect over 3 seeds (docs/decisions/0014); 0.5 before 2026-12-07
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


# ----------------------------------------------------------------------------- YAML / dict conversion
