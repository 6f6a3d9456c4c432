"""RunConfig to and from dicts and YAML, with validation: a bad field is an InputError naming the file and the field."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from lungtumor.core.config import ARCH_3D, LOSS_NAMES, RunConfig
from lungtumor.core.errors import InputError, atomic_write_text
from lungtumor.core.presets import preset


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


#: a decimal number in exponent form without a dot ("1e-4"): YAML 1.2 reads it as a float, PyYAML (YAML 1.1) as
#: a string, so ``lr: 1e-4`` in a config file is accepted as the number it means
_EXP_FLOAT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


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
    if origin is list:  # list[int]: any length
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{where}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], where, source) for v in value]
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
        if isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
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
    if cfg.model.arch == ARCH_3D and cfg.train.ema_decay > 0:
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
    _validate_devices(cfg.train.devices, bad)
    _validate_nodule(cfg, bad)
    cfg.model.in_channels = 2 * cfg.train.context_slices + 1 + int(cfg.prep.blob)


def _validate_devices(devices: int | list[int], bad: typing.Callable[[str, str], None]) -> None:
    """``train.devices``: a count >= 1, or a non-empty list of distinct GPU indices >= 0."""
    if isinstance(devices, list):
        if not devices or min(devices) < 0 or len(set(devices)) != len(devices):
            bad("train.devices", f"a list of GPU indices needs distinct indices >= 0, got {devices}")
    elif devices < 1:
        bad("train.devices", "must be at least 1 (a count), or a list of GPU indices such as [1]")


def _validate_nodule(cfg: RunConfig, bad: typing.Callable[[str, str], None]) -> None:
    n = cfg.nodule
    if n.enabled and cfg.model.arch == ARCH_3D:
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
