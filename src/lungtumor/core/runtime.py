"""Device and precision: one place that picks the device and the autocast context."""

from __future__ import annotations

import contextlib

import torch

from lungtumor.core.errors import InputError

#: What ``--device`` accepts (predict, train, cv, compare), for messages and help texts.
DEVICE_CHOICES = "auto, cpu, cuda (or gpu), cuda:N, mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _check_device_name(name: str) -> str:
    """``name`` normalised (``gpu`` → ``cuda``, ``gpu:N`` → ``cuda:N``); raises InputError when unknown."""
    norm = name.strip().lower()
    if norm == "gpu" or norm.startswith("gpu:"):
        norm = "cuda" + norm[3:]
    ok = norm in ("auto", "cpu", "cuda", "mps") or (norm.startswith("cuda:") and norm[5:].isdigit())
    if not ok:
        raise InputError("--device", f"unknown device {name!r}; use {DEVICE_CHOICES}")
    return norm


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or
    its alias ``gpu``, ``cuda:N`` (``gpu:N``) and ``mps`` (Apple GPUs, where torch has it).

    Raises:
        InputError: an unknown name, or a device this machine does not have.
    """
    norm = _check_device_name(name)
    if norm == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if norm.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", "CUDA was requested but no CUDA device is available")
        index = int(norm[5:]) if ":" in norm else 0
        if index >= torch.cuda.device_count():
            raise InputError(
                "--device", f"{name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if norm == "mps" and not _mps_available():
        raise InputError("--device", "MPS was requested but this torch build has no MPS device here")
    return torch.device(norm)


def lightning_accelerator(name: str) -> str:
    """A ``--device`` value as Lightning's accelerator name (for ``train``): ``cuda``/``gpu`` and ``cuda:N`` →
    ``gpu``, ``mps``, ``cpu`` and ``auto`` as they are (the GPU of ``cuda:N`` goes into the devices:
    :func:`lightning_devices`).

    Raises:
        InputError: an unknown name.
    """
    norm = _check_device_name(name)
    return "gpu" if norm.startswith("cuda") else norm


def lightning_devices(
    name: str, devices: int | list[int], count: int | None = None
) -> tuple[str, int | list[int]]:
    """A train ``--device`` value as Lightning's (accelerator, devices), given the recipe's ``train.devices``
    and ``--devices K`` (``count``; None when not given):

    * ``cuda:N`` (``gpu:N``) → ``("gpu", [N])``: GPU N alone (Lightning's ``devices=[N]``), once it exists;
    * ``cuda``/``gpu`` → ``"gpu"`` with ``devices`` as they are (a count, or the recipe's GPU indices);
    * ``cpu``, ``mps``, ``auto`` → themselves, with a list of GPU indices turned into its count.

    Raises:
        InputError: an unknown name or a GPU this machine does not have (naming ``--device``), or ``cuda:N``
            with ``--devices K`` above 1 (naming ``--devices``).
    """
    acc = lightning_accelerator(name)
    norm = _check_device_name(name)
    if ":" not in norm:
        keep = acc == "gpu" or not isinstance(devices, list)
        return acc, devices if keep else len(devices)
    index = int(norm[5:])
    if count is not None and count != 1:
        raise InputError(
            "--devices",
            f"--device {name} trains on GPU {index} alone; use --device cuda --devices {count} for {count} GPUs",
        )
    resolve_device(name)  # GPU N exists, or a one-line error naming --device
    return "gpu", [index]


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` when ``precision`` is ``"bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False
