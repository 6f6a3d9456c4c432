"""Reading a prepared cache, 2D or 3D (one reader, one layout), and stacking 2.5D context.

Both preparations write the same layout: ``cache.json`` (index: ``version`` 1, ``kind``, ``stats``, ``cases``,
``source``, ``complete``), ``splits.json`` (``train``, ``val``, ``folds``) and one memory-mappable ``.npy`` per case
and array, every volume (z, y, x). ``kind`` says which frame the arrays are in:

* ``"2d"`` (no ``kind`` key in caches written before it was named): ``prepare``'s slice frame, every slice
  resized to one (H, W), the original slices kept along z; arrays in ``cases/<name>_{img,seg,blob}.npy``.
* ``"3d"``: ``prepare3d``'s frame, every case resampled to one target ``spacing`` (x, y, z) mm; arrays in
  ``cases3d/<name>_{img,seg,fg}.npy`` (``fg``: (n, 3) int32 tumour voxel indices for patch sampling).

:class:`Cache` reads either; the trainers take the cases as 2D slices (``training.slice_plan``) or as 3D
patches (``training.patch_plan``).
"""

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

#: The cache kinds and the folder of their arrays.
ARRAY_DIRS = {"2d": "cases", "3d": "cases3d"}


@dataclass
class CaseInfo:
    """One prepared case: name, slices (z), slice size (H, W) in voxels, indices of slices with tumour (2D caches;
    empty in 3D ones), slice spacing in mm of the source (0: unknown), source shape (z, y, x) and source voxel
    size (x, y, z) mm (None in caches that do not record them)."""

    name: str
    n_slices: int
    shape_hw: tuple[int, int]
    tumour_slices: list[int]
    dz_mm: float = 0.0
    orig_shape: tuple[int, int, int] | None = None
    orig_spacing: tuple[float, float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Prepared (z, y, x) voxels."""
        return (self.n_slices, *self.shape_hw)


def _source_spacing(c: dict[str, Any]) -> tuple[float, tuple[float, ...] | None]:
    """(slice spacing in mm (0: unknown), voxel size (x, y, z) mm or None) of a cache.json case's source."""
    spacing = tuple(float(v) for v in c["orig_spacing"]) if "orig_spacing" in c else None
    return (spacing[2] if spacing is not None else 0.0), spacing


def _case_2d(c: dict[str, Any]) -> CaseInfo:
    z, h, w = (int(v) for v in c["prepared_shape"])
    dz, spacing = _source_spacing(c)
    orig = tuple(int(v) for v in c["orig_shape"]) if "orig_shape" in c else None
    tumour = [int(s) for s in c["tumour_slices"]]
    return CaseInfo(c["name"], int(c["n_slices"]), (h, w), tumour, dz, orig, spacing)  # type: ignore[arg-type]


def _case_3d(c: dict[str, Any]) -> CaseInfo:
    z, h, w = (int(v) for v in c["shape"])
    orig = tuple(int(v) for v in c["orig_shape"])
    dz, spacing = _source_spacing(c)
    return CaseInfo(c["name"], z, (h, w), [], dz, orig, spacing)  # type: ignore[arg-type]


@dataclass
class Cache:
    """A prepared cache folder of either kind (see the module docstring).

    Attributes:
        kind: ``"2d"`` or ``"3d"``. prep: the preprocessing the arrays went through (2D: cache.json ``prep``;
        3D: ``{"kind": "3d", "spacing": [x, y, z]}``), stored in every checkpoint. stats: intensity statistics.
        cases: name -> :class:`CaseInfo`. splits: splits.json (``train``, ``val``, ``folds``). spacing: the 3D
        target spacing (x, y, z) mm (None for 2D). source: the dataset it came from (None in older caches).
    """

    root: Path
    kind: str
    prep: dict[str, Any]
    stats: dict[str, float]
    cases: dict[str, CaseInfo]
    splits: dict[str, Any]
    spacing: tuple[float, float, float] | None = None
    source: dict[str, Any] | None = None
    _mmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike, kind: str | None = None) -> Cache:
        """Read and check the index files; ``kind`` (``"2d"``/``"3d"``): refuse a cache of the other kind.

        A 2D cache must also have training and validation cases whose arrays exist (what its trainer needs).
        Raises InputError naming the file and the problem.
        """
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "cache folder not found (write one with `lungtumor prepare`)")
        hint = "lungtumor prepare --preset 3d" if kind == "3d" else "lungtumor prepare"
        meta = read_cache_json(root / "cache.json", hint)
        splits = read_cache_json(root / "splits.json", hint)
        found = meta.get("kind", "2d")
        if kind is not None and found != kind:
            raise InputError(root / "cache.json", _wrong_kind(kind))
        if found not in ARRAY_DIRS:
            raise InputError(root / "cache.json", f"unknown cache kind {found!r} (expected 2d or 3d)")
        hint = "lungtumor prepare --preset 3d" if found == "3d" else "lungtumor prepare"
        if meta.get("version") != 1:
            raise InputError(
                root / "cache.json", f"unsupported cache version {meta.get('version')!r} (expected 1)"
            )
        if meta.get("complete") is not True:
            raise InputError(root / "cache.json", f"cache is incomplete; rerun `{hint}` to finish it")
        try:
            read = _case_3d if found == "3d" else _case_2d
            cases = {c["name"]: read(c) for c in meta["cases"]}
            stats = {k: float(v) for k, v in meta["stats"].items()}
            spacing = tuple(float(v) for v in meta["spacing"]) if found == "3d" else None
            prep = {"kind": "3d", "spacing": list(spacing)} if spacing else dict(meta["prep"])
            if found == "2d":
                splits["train"], splits["val"] = list(splits["train"]), list(splits["val"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                root / "cache.json", f"malformed cache index ({type(e).__name__}: {e})"
            ) from None
        src = meta.get("source")
        source = dict(src) if isinstance(src, dict) else None
        cache = cls(root, found, prep, stats, cases, splits, spacing, source)  # type: ignore[arg-type]
        if found == "2d":
            cache._check_2d()
        return cache

    def _check_2d(self) -> None:
        root = self.root
        check_split(self, self.train, self.val)
        sizes = {c.shape_hw for c in self.cases.values()}
        if len(sizes) != 1:
            raise InputError(root / "cache.json", f"cases have different slice sizes {sorted(sizes)}")
        kinds = ("img", "seg", "blob") if self.has_blob else ("img", "seg")
        for n in self.train + self.val:
            for kind in kinds:
                if not (root / "cases" / f"{n}_{kind}.npy").is_file():
                    raise InputError(root / "cases" / f"{n}_{kind}.npy", "missing; rerun `lungtumor prepare`")

    @property
    def train(self) -> list[str]:
        """The training cases of splits.json."""
        return list(self.splits.get("train", []))

    @property
    def val(self) -> list[str]:
        """The validation cases of splits.json."""
        return list(self.splits.get("val", []))

    @property
    def shape_hw(self) -> tuple[int, int]:
        """(H, W) of the first case's slices, voxels (every case of a 2D cache has the same)."""
        return next(iter(self.cases.values())).shape_hw

    @property
    def shapes(self) -> dict[str, tuple[int, int, int]]:
        """name -> prepared (z, y, x) shape."""
        return {n: c.shape for n, c in self.cases.items()}

    @property
    def has_blob(self) -> bool:
        """Whether the recipe adds the blobness channel (``prep.blob``; see blobness.py)."""
        return bool(self.prep.get("blob", False))

    def array(self, name: str, kind: str) -> np.ndarray:
        """Memory-mapped (or RAM-resident) array ``kind`` of case ``name``: ``img`` float16 (z, y, x) normalised
        CT, ``seg`` uint8 (z, y, x) {0, 1}, ``blob`` float16 (z, y, x) (2D, :attr:`has_blob`), ``fg`` int32
        (n, 3) tumour voxel indices (3D). Raises InputError naming the file when it is missing or its shape
        differs from cache.json."""
        key = f"{name}_{kind}"
        if key not in self._mmaps:
            path = self.root / ARRAY_DIRS[self.kind] / f"{key}.npy"
            rerun = "; rerun `lungtumor prepare --preset 3d`" if self.kind == "3d" else ""
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(path, f"cannot read array ({e}){rerun}") from None
            want = self.cases[name].shape
            if kind != "fg" and arr.shape != want:
                raise InputError(path, f"shape {arr.shape} differs from cache.json {want}")
            self._mmaps[key] = arr
        return self._mmaps[key]

    def image(self, name: str) -> np.ndarray:
        """float16 (z, y, x) normalised CT of case ``name`` (memory-mapped)."""
        return self.array(name, "img")

    def seg(self, name: str) -> np.ndarray:
        """uint8 (z, y, x) tumour mask of case ``name`` (memory-mapped)."""
        return self.array(name, "seg")

    def blob(self, name: str) -> np.ndarray:
        """float16 (z, y, x) blobness channel of case ``name`` (only when :attr:`has_blob`)."""
        return self.array(name, "blob")

    def load_into_memory(self, names: Sequence[str]) -> None:
        """Replace the memory maps of ``names`` by in-RAM copies (fast random patch access)."""
        kinds = ("img", "seg", "fg") if self.kind == "3d" else ("img", "seg", "blob")[: 2 + self.has_blob]
        for n in names:
            for k in kinds:
                self._mmaps[f"{n}_{k}"] = np.array(self.array(n, k))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        return state


def _wrong_kind(kind: str) -> str:
    if kind == "3d":
        return "not a 3D cache; write one with `lungtumor prepare --preset 3d`"
    return "a 3D cache; train it with the 3D recipe (`lungtumor train CACHE --preset 3d`)"


def check_split(cache: Cache, train: Sequence[str], val: Sequence[str]) -> None:
    """Raise InputError (naming splits.json) unless ``train`` and ``val`` are non-empty and in the cache."""
    where = cache.root / "splits.json"
    missing = [n for n in [*train, *val] if n not in cache.cases]
    if missing:
        raise InputError(where, f"case {missing[0]!r} is not in cache.json")
    if not train:
        raise InputError(where, "no training cases")
    if not val:
        raise InputError(where, "no validation cases (per-patient validation needs at least one)")


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

    def __init__(self, cache: Cache, names: Sequence[str]) -> None:
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

    def steps(self, cache: Cache, context_mm: float) -> np.ndarray:
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


def cache_nbytes(cache: Cache, names: Sequence[str]) -> int:
    """Bytes that the resident tensors of ``names`` need (float16 image + uint8 mask + float16 blob)."""
    h, w = cache.shape_hw
    return sum(cache.cases[n].n_slices for n in names) * h * w * (5 if cache.has_blob else 3)


def resident_fits(cache: Cache, names: Sequence[str], device: torch.device, fraction: float = 0.5) -> bool:
    """Whether the cache fits in ``fraction`` of the free memory of CUDA ``device`` (False for non-CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache_nbytes(cache, names) <= fraction * free
