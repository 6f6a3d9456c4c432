"""Reading a prepared 2D cache (memory-mapped slices, slice table) and stacking 2.5D context."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.core.errors import InputError


@dataclass
class CaseInfo:
    """One prepared case: name, number of slices, (H, W), indices of slices with tumour, slice spacing (mm)."""

    name: str
    n_slices: int
    shape_hw: tuple[int, int]
    tumour_slices: list[int]
    dz_mm: float = 0.0


@dataclass
class PreparedCache:
    """A prepared cache folder: ``cache.json``, ``splits.json`` and ``cases/<name>_{img,seg}.npy``."""

    root: Path
    prep: dict[str, Any]
    stats: dict[str, float]
    cases: dict[str, CaseInfo]
    train: list[str]
    val: list[str]
    source: dict[str, Any] | None = (
        None  # the dataset it came from (cache.json ``source``; None in older caches)
    )
    _mmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike) -> PreparedCache:
        """Read and check the index files. Raises InputError naming the file and the problem."""
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "cache folder not found (write one with `lungtumor prepare`)")
        meta = read_cache_json(root / "cache.json")
        splits = read_cache_json(root / "splits.json")
        if meta.get("version") != 1:
            raise InputError(
                root / "cache.json", f"unsupported cache version {meta.get('version')!r} (expected 1)"
            )
        if meta.get("complete") is not True:
            raise InputError(
                root / "cache.json", "cache is incomplete; rerun `lungtumor prepare` to finish it"
            )
        try:
            cases = {}
            for c in meta["cases"]:
                z, h, w = (int(v) for v in c["prepared_shape"])
                dz = float(c.get("orig_spacing", [0.0, 0.0, 0.0])[2])
                cases[c["name"]] = CaseInfo(
                    c["name"], int(c["n_slices"]), (h, w), [int(s) for s in c["tumour_slices"]], dz
                )
            prep, stats = dict(meta["prep"]), {k: float(v) for k, v in meta["stats"].items()}
            train, val = list(splits["train"]), list(splits["val"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                root / "cache.json", f"malformed cache index ({type(e).__name__}: {e})"
            ) from None
        missing = [n for n in train + val if n not in cases]
        if missing:
            raise InputError(root / "splits.json", f"case {missing[0]!r} is not in cache.json")
        if not train:
            raise InputError(root / "splits.json", "no training cases")
        if not val:
            raise InputError(
                root / "splits.json", "no validation cases (per-patient validation needs at least one)"
            )
        sizes = {c.shape_hw for c in cases.values()}
        if len(sizes) != 1:
            raise InputError(root / "cache.json", f"cases have different slice sizes {sorted(sizes)}")
        kinds = ("img", "seg", "blob") if prep.get("blob") else ("img", "seg")
        for n in train + val:
            for kind in kinds:
                if not (root / "cases" / f"{n}_{kind}.npy").is_file():
                    raise InputError(root / "cases" / f"{n}_{kind}.npy", "missing; rerun `lungtumor prepare`")
        src = meta.get("source")
        return cls(root, prep, stats, cases, train, val, dict(src) if isinstance(src, dict) else None)

    @property
    def shape_hw(self) -> tuple[int, int]:
        """(H, W) of every prepared slice, pixels."""
        return next(iter(self.cases.values())).shape_hw

    def _array(self, name: str, kind: str) -> np.ndarray:
        key = f"{name}_{kind}"
        if key not in self._mmaps:
            path = self.root / "cases" / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(path, f"cannot read array ({e})") from None
            info = self.cases[name]
            if arr.shape != (info.n_slices, *info.shape_hw):
                raise InputError(
                    path, f"shape {arr.shape} differs from cache.json {(info.n_slices, *info.shape_hw)}"
                )
            self._mmaps[key] = arr
        return self._mmaps[key]

    def image(self, name: str) -> np.ndarray:
        """Memory-mapped float16 (z, H, W) normalised CT of case ``name``."""
        return self._array(name, "img")

    def seg(self, name: str) -> np.ndarray:
        """Memory-mapped uint8 (z, H, W) tumour mask of case ``name``."""
        return self._array(name, "seg")

    @property
    def has_blob(self) -> bool:
        """Whether the recipe adds the blobness channel (``prep.blob``; see blobness.py)."""
        return bool(self.prep.get("blob", False))

    def blob(self, name: str) -> np.ndarray:
        """Memory-mapped float16 (z, H, W) blobness channel of case ``name`` (only when :attr:`has_blob`)."""
        return self._array(name, "blob")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        return state


def read_cache_json(path: Path, writer: str = "lungtumor prepare") -> dict[str, Any]:
    """A cache's ``cache.json`` or ``splits.json`` as a dict; ``writer`` (the command that writes the cache) goes
    into the message when the file is missing. Raises InputError naming the file and the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, f"not found; is this a cache written by `{writer}`?") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


class SliceTable:
    """Global slice index over ``names`` (cases concatenated along z).

    Attributes:
        starts: (n_cases + 1,) int64 offsets; case i holds global slices starts[i]..starts[i+1]-1.
        case_of: (N,) int64 case number of each global slice.
        tumour: (N,) bool, slice contains tumour.
    """

    def __init__(self, cache: PreparedCache, names: Sequence[str]) -> None:
        self.names = list(names)
        counts = [cache.cases[n].n_slices for n in self.names]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.case_of = np.repeat(np.arange(len(self.names)), counts).astype(np.int64)
        self.tumour = np.zeros(int(self.starts[-1]), dtype=bool)
        for i, n in enumerate(self.names):
            ts = [t for t in cache.cases[n].tumour_slices if 0 <= t < counts[i]]
            self.tumour[self.starts[i] + np.asarray(ts, dtype=np.int64)] = True

    def __len__(self) -> int:
        return int(self.starts[-1])

    def slices_of(self, names: Sequence[str]) -> np.ndarray:
        """Global indices (int64) of every slice of the given cases."""
        pos = {n: i for i, n in enumerate(self.names)}
        return np.concatenate([np.arange(self.starts[pos[n]], self.starts[pos[n] + 1]) for n in names])

    def steps(self, cache: PreparedCache, context_mm: float) -> np.ndarray:
        """(n_cases,) float64 context step of each case in slices: context_mm / its slice spacing, or 1."""
        return np.asarray(
            [context_step(context_mm, cache.cases[n].dz_mm) for n in self.names], dtype=np.float64
        )


def context_step(context_mm: float, dz_mm: float) -> float:
    """Slices between context channels: ``context_mm / dz_mm`` when both are > 0, else 1 (adjacent slices)."""
    return float(context_mm) / float(dz_mm) if context_mm > 0 and dz_mm > 0 else 1.0


def context_index(
    z: torch.Tensor, k: int, step: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the 2k+1 context channels of slices ``z`` lie, for linear interpolation along z.

    Args:
        z: (B,) int64 slice indices; step: (B,) float slices per channel; lo, hi: (B,) int64 first and
            last slice of each sample's case (positions outside are clamped: edges replicated).

    Returns:
        (i0, i1, w): (B, 2k+1) int64, int64, float32; channel = (1 - w) * slice[i0] + w * slice[i1].
        With integer steps every ``w`` is 0 and i0 is exactly z + j * step.
    """
    off = torch.arange(-k, k + 1, device=z.device, dtype=torch.float64)[None] * step.double()[:, None]
    f = torch.floor(off)
    w = off - f
    i0 = z[:, None] + f.long()
    lo, hi = lo[:, None].expand_as(i0), hi[:, None].expand_as(i0)
    edge = (i0 < lo) | (i0 >= hi)
    i0 = torch.minimum(torch.maximum(i0, lo), hi)
    w = torch.where(edge, torch.zeros_like(w), w)
    return i0, torch.minimum(i0 + 1, hi), w.float()


def interp_slices(vol: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """vol (Z, H, W) and (B, C) indices/weights from :func:`context_index` -> (B, C, H, W) in vol's dtype."""
    if not bool((w > 0).any()):
        return vol[i0]
    a = vol[i0].float()
    return torch.lerp(a, vol[i1].float(), w[:, :, None, None]).to(vol.dtype)


def append_blob(x: torch.Tensor, blob: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) context slices of slices ``z`` -> (B, C + 1, H, W) with their blobness channel
    ``blob[z]`` (blob (Z, H, W), cast to x's dtype) appended; x unchanged when ``blob`` is None."""
    return x if blob is None else torch.cat([x, blob[z][:, None].to(x.dtype)], 1)


def stack_context(vol: torch.Tensor, z: torch.Tensor, k: int, step: float = 1.0) -> torch.Tensor:
    """The 2k+1 context slices of slices ``z`` of one case as channels: vol (Z, H, W), z (B,) ->
    (B, 2k+1, H, W). ``step`` = slices between channels (1: z-k..z+k; fractional: interpolated); edges
    replicated."""
    b = z.shape[0]
    zero = torch.zeros(b, dtype=torch.int64, device=z.device)
    i0, i1, w = context_index(
        z,
        k,
        torch.full((b,), float(step), device=z.device, dtype=torch.float64),
        zero,
        zero + vol.shape[0] - 1,
    )
    return interp_slices(vol, i0, i1, w)


def cache_nbytes(cache: PreparedCache, names: Sequence[str]) -> int:
    """Bytes that the resident tensors of ``names`` need (float16 image + uint8 mask + float16 blob)."""
    h, w = cache.shape_hw
    return sum(cache.cases[n].n_slices for n in names) * h * w * (5 if cache.has_blob else 3)


def resident_fits(
    cache: PreparedCache, names: Sequence[str], device: torch.device, fraction: float = 0.5
) -> bool:
    """Whether the cache fits in ``fraction`` of the free memory of CUDA ``device`` (False for non-CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache_nbytes(cache, names) <= fraction * free
