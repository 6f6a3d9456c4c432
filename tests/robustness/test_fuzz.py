"""Property-based tests: any bytes in an image file and any JSON in dataset.json end in a valid Volume or
Dataset, or in ``InputError``; never another exception (nor a crash, nor a huge allocation).

The number of examples is small for CI; raise it with LUNGTUMOR_FUZZ_EXAMPLES=2000 for a deeper run.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lungtumor.core.errors import InputError
from lungtumor.data.msd import Dataset, load_dataset
from lungtumor.imaging.io import read_volume, write_volume
from lungtumor.imaging.volume import Volume

N = int(os.environ.get("LUNGTUMOR_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BUDGET = 64 << 20  # fuzzed headers may claim anything; never let one allocate more than this

_SHAPE = (3, 5, 4)


def _valid_bytes(suffix: str) -> bytes:
    """A small valid image file's bytes (uncompressed for .nii / .nrrd / .mha)."""
    vol = Volume(
        np.arange(np.prod(_SHAPE), dtype=np.int16).reshape(_SHAPE),
        spacing=(0.7, 0.8, 2.5),
        origin=(1.0, -2.0, 3.0),
    )
    with tempfile.TemporaryDirectory() as d:
        p = write_volume(vol, Path(d) / f"v{suffix}", compress=False)
        return p.read_bytes()


VALID = {s: _valid_bytes(s) for s in (".nii", ".nrrd", ".mha")}


def _read(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"fuzz{suffix}"
        p.write_bytes(data)
        try:
            vol = read_volume(p, memory_budget=BUDGET)
        except InputError as e:
            assert "\n" not in str(e)
            return
        assert isinstance(vol, Volume)
        assert vol.array.ndim == 3 and min(vol.shape) >= 1
        assert all(s > 0 for s in vol.spacing)


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]))
def test_random_bytes(data: bytes, suffix: str) -> None:
    _read(data, suffix)


@st.composite
def _mutated(draw) -> tuple[bytes, str]:
    """A valid file with some bytes replaced (mostly in the header), maybe truncated, maybe gzipped."""
    kind = draw(st.sampled_from([".nii", ".nrrd", ".mha"]))
    buf = bytearray(VALID[kind])
    head = 352 if kind == ".nii" else len(buf) - 2 * int(np.prod(_SHAPE))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, max(0, head - 1)) | st.integers(0, len(buf) - 1))
        buf[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        buf = buf[: draw(st.integers(0, len(buf)))]
    if kind == ".nii" and draw(st.booleans()):
        return gzip.compress(bytes(buf), mtime=0), ".nii.gz"
    return bytes(buf), kind


@FUZZ
@given(case=_mutated())
def test_mutated_headers_and_bodies(case: tuple[bytes, str]) -> None:
    _read(*case)


_NRRD_FIELDS = {
    "type": ["short", "float", "double", "uchar", "int8", "block", "", "complex"],
    "dimension": ["3", "2", "4", "0", "-1", "99999999999", "x"],
    "sizes": ["4 5 3", "4 5", "0 5 3", "-4 5 3", "100000 100000 1000", "4 5 3 1", "a b c", "4 5 1"],
    "space directions": [
        "(0.7,0,0) (0,0.8,0) (0,0,2.5)",
        "(1,0,0) (0.5,1,0) (0,0,1)",
        "(0,0,0) (0,1,0) (0,0,1)",
        "(nan,0,0) (0,1,0) (0,0,1)",
        "(1e30,0,0) (0,1,0) (0,0,1)",
        "none (0,1,0) (0,0,1)",
        "(1,0,0) (0,1,0)",
    ],
    "encoding": ["raw", "gzip", "ascii", "bzip2", "hex", "nonsense"],
    "endian": ["little", "big", "middle"],
    "space origin": ["(0,0,0)", "(inf,0,0)", "(1,2)", "nan"],
}


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {k: st.sampled_from(v) | st.text(max_size=12) for k, v in _NRRD_FIELDS.items()}
    ),
    body=st.binary(max_size=300),
)
def test_hand_written_nrrd_headers(fields: dict[str, str], body: bytes) -> None:
    lines = ["NRRD0004"] + [
        f"{k}: {v}" for k, v in fields.items() if "\n" not in v and "\r" not in v and "\x00" not in v
    ]
    lines.insert(3, "space: left-posterior-superior")
    _read(("\n".join(lines) + "\n\n").encode("utf-8", "replace") + body, ".nrrd")


# ----------------------------------------------------------------------------- dataset.json

_json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_paths = st.sampled_from(
    [
        "./imagesTr/a.nii.gz",
        "./labelsTr/a.nii.gz",
        "imagesTr/b.nii.gz",
        "../evil.nii.gz",
        "/etc/passwd",
        "",
        " ",
        ".",
        "a\x00b",
        "imagesTr/../../x",
        "~/x.nii.gz",
        "imagesTr/" + "a" * 300 + ".nii.gz",
    ]
) | st.text(max_size=30)
_json = st.recursive(
    _json_scalar | _paths,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_entry = st.fixed_dictionaries({}, optional={"image": _paths | _json, "label": _paths | _json}) | _json
_dataset_json = (
    st.fixed_dictionaries(
        {},
        optional={
            "training": st.lists(_entry, max_size=4) | _json,
            "test": st.lists(_paths | _entry, max_size=3) | _json,
            "modality": _json,
            "labels": _json,
            "name": _json,
        },
    )
    | _json
)


@FUZZ
@given(doc=_dataset_json, raw=st.booleans(), junk=st.binary(max_size=64))
def test_dataset_json_structures(doc, raw: bool, junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ds"
        (root / "imagesTr").mkdir(parents=True)
        text = json.dumps(doc).encode() if not raw else junk
        (root / "dataset.json").write_bytes(text)
        try:
            ds = load_dataset(root)
        except InputError as e:
            assert "\n" not in str(e)
            return
        assert isinstance(ds, Dataset) and ds.cases
        for c in ds.cases:
            assert c.image.is_relative_to(ds.root)
            assert c.label is None or c.label.is_relative_to(ds.root)
