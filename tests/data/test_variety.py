"""Tests of the phantoms' variety (lungtumor.data.variety): switches, records, families, and the unchanged
default phantoms."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lungtumor.data.lesions import sample_lesion_plan
from lungtumor.data.phantom import PhantomCase, build_case, make_case, synth_dataset
from lungtumor.data.variety import (
    HELD_OUT,
    IN_FAMILY,
    TUMOUR_TYPES,
    Variety,
    draw_present,
    draw_tumours,
    element_streams,
    variety_family,
)
from lungtumor.imaging.io import read_volume

#: Hashes of default phantoms computed with the code before the variety existed (commit 7471d0a): with the
#: variety off, every generator must give these bytes.
DEFAULT_HASHES = {
    "build_case_0": "0310506f5c65c920",
    "build_case_3": "b4b7a83f21da60bf",
    "build_case_11": "dd4ab92bd52292ba",
    "build_case_5": "0ee1d77e30c348d2",
    "make_case_7": "eeb02457e71c3f8d",
    "plans": "2bcd0d8153b4b2ac",
    "synth": "a87e8a9da7977e70",
    "default_size": "db9b85ff06a98268",
}


def _case_hash(c: PhantomCase) -> str:
    m = hashlib.sha256()
    for a in (c.image.array, c.label.array, c.lung, c.vessels, c.bone):
        m.update(np.ascontiguousarray(a).tobytes())
        m.update(str(a.shape).encode())
    m.update(repr((c.image.spacing, c.image.origin)).encode())
    m.update(json.dumps(c.lesions, sort_keys=True).encode())
    return m.hexdigest()[:16]


def _default_hashes(tmp: Path, **variety) -> dict[str, str]:
    """The hashes of :data:`DEFAULT_HASHES`, built with ``variety`` passed on (nothing: the old calls)."""
    cavitary = [{"diameter_mm": 30.0, "kind": "intrapulmonary", "texture": "cavitary", "spiculated": True}]
    out = {}
    for seed, kw in [
        (0, dict(matrix=64, slices=16)),
        (3, dict(matrix=96, slices=None)),
        (11, dict(matrix=64, slices=12, lesion_plan="rich_basal", hilar_vessels=True)),
        (5, dict(matrix=80, slices=20, plan=cavitary)),
    ]:
        out[f"build_case_{seed}"] = _case_hash(build_case(seed, **kw, **variety))
    img, lab, les = make_case(7, matrix=64, slices=12, **variety)
    raw = img.array.tobytes() + lab.array.tobytes() + json.dumps(les).encode()
    out["make_case_7"] = hashlib.sha256(raw).hexdigest()[:16]
    plans = [
        sample_lesion_plan(np.random.default_rng(i), k)
        for i in range(30)
        for k in ("standard", "rich", "rich_basal")
    ]
    out["plans"] = hashlib.sha256(json.dumps(plans).encode()).hexdigest()[:16]
    d = tmp / "ds"
    synth_dataset(d, n_train=2, n_test=1, seed=2, matrix=48, slices=None, workers=1, val_cases=1,
                  train_lesions="rich", train_hilar_vessels=True, **variety)  # fmt: skip
    m = hashlib.sha256()
    for f in sorted(d.rglob("*.nii.gz")):
        m.update(f.name.encode() + read_volume(f).array.tobytes())
    m.update((d / "lesions.json").read_bytes())
    m.update((d / "dataset.json").read_bytes())
    out["synth"] = m.hexdigest()[:16]
    big = build_case(np.random.SeedSequence(0, spawn_key=(1, 2)), matrix=256, **variety)  # the default size
    out["default_size"] = _case_hash(big)
    return out


def test_default_phantoms_are_byte_identical(tmp_path: Path):
    assert _default_hashes(tmp_path) == DEFAULT_HASHES


def test_variety_off_gives_the_default_phantoms(tmp_path: Path):
    """An all-off variety and ``synth --variety off`` build the default phantoms."""
    off = IN_FAMILY.only()
    assert not off.enabled and variety_family("off") is None
    assert _case_hash(build_case(0, matrix=64, slices=16, variety=off)) == DEFAULT_HASHES["build_case_0"]
    kw = dict(n_train=1, n_test=1, seed=3, matrix=48, slices=8, workers=1)
    synth_dataset(tmp_path / "a", **kw)
    synth_dataset(tmp_path / "b", variety="off", test_variety=off, **kw)
    for rel in ("imagesTr/lung_000.nii.gz", "labelsTs/lung_001.nii.gz", "lesions.json", "dataset.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def forced(family: Variety, *names: str, hard: float = 0.0) -> Variety:
    """``family`` with only ``names`` switched on, each with probability 1."""
    v = family.only(*names)
    groups = {}
    for gname in ("confounders", "acquisition", "tumours"):
        g = getattr(v, gname)
        groups[gname] = replace(g, **{n: replace(getattr(g, n), p=1.0) for n in names if hasattr(g, n)})
    return replace(v, hard_negatives=hard, **groups)


#: The confounder record types each element paints, and the acquisition key each element records.
RECORD_TYPES = {
    "effusion": {"pleural_effusion"},
    "atelectasis": {"atelectasis"},
    "consolidation": {"consolidation"},
    "emphysema": {"emphysema", "bulla"},
    "ground_glass": {"ground_glass"},
    "fibrosis": {"fibrosis"},
    "granulomas": {"calcified_granuloma"},
    "lymph_nodes": {"lymph_node"},
    "bronchi": {"bronchi"},
    "oesophagus": {"oesophagus"},
    "abdomen": {"liver", "spleen", "stomach"},
    "breasts": {"breast"},
    "arms": {"arm"},
    "metal": {"clip"},
    "port": {"port", "catheter"},
}
ACQ_KEYS = {
    "contrast": "contrast",
    "kernel": "kernel",
    "dose": "noise_hu",
    "thickness": "slice_thickness_mm",
    "beam_hardening": "beam_hardening",
    "breathing": "breathing_mm",
    "metal": "metal_streaks_hu",
    "port": "metal_streaks_hu",
}


def _types(case: PhantomCase) -> dict[str, int]:
    """Visible voxels per confounder record type."""
    out: dict[str, int] = {}
    for r in case.variety["confounders"]:
        out[r["type"]] = out.get(r["type"], 0) + r["voxels"]
    return out


@pytest.mark.parametrize("family", [IN_FAMILY, HELD_OUT], ids=["in-family", "held-out"])
@pytest.mark.parametrize("name", sorted(set(RECORD_TYPES) | set(ACQ_KEYS)))
def test_each_element_appears_when_switched_on_and_is_recorded(family: Variety, name: str):
    if family.elements()[name].p == 0:
        pytest.skip(f"{name} is not in the {family.name} family")
    for seed in range(4):  # a scan window may miss it (the abdomen below a partial scan): try a few seeds
        c = build_case(seed, matrix=48, slices=None, variety=forced(family, name))
        assert name in c.variety["elements"] and c.variety["family"] == family.name
        if name in ACQ_KEYS:
            assert ACQ_KEYS[name] in c.variety["acquisition"]
        types = _types(c)
        if name not in RECORD_TYPES or all(
            types.get(t, 0) > 0 for t in RECORD_TYPES[name] if t != "catheter"
        ):
            break
    else:
        pytest.fail(f"{name}: nothing visible in 4 phantoms ({types})")
    assert set(types) <= RECORD_TYPES.get(name, set())  # nothing else
    for r in c.variety["confounders"]:
        assert len(r["centre_mm"]) == 3 and "_id" not in r and "_c" not in r


def test_switched_off_elements_are_absent():
    names = list(RECORD_TYPES) + [n for n in ACQ_KEYS if n not in RECORD_TYPES]
    for half in (names[::2], names[1::2]):
        c = build_case(2, matrix=64, slices=None, variety=forced(HELD_OUT, *half))
        off = set(names) - set(half)
        assert not off & set(c.variety["elements"])
        assert not set().union(*(RECORD_TYPES.get(n, set()) for n in off)) & set(_types(c))
        keys = {ACQ_KEYS[n] for n in off if n in ACQ_KEYS} - {ACQ_KEYS[n] for n in half if n in ACQ_KEYS}
        assert not keys & set(c.variety["acquisition"]) - {"fov_mm"}


def test_element_streams_are_independent():
    """Switching one element off leaves the other elements' draws as they were."""
    a, _ = draw_present(IN_FAMILY, element_streams(np.random.default_rng(5)))
    b, _ = draw_present(IN_FAMILY.without("metal"), element_streams(np.random.default_rng(5)))
    assert b == a - {"metal"}


def _busy(family: Variety, hard: float = 0.0) -> Variety:
    """``family`` with every element it has switched on with probability 1."""
    return forced(family, *(n for n, e in family.elements().items() if e.p > 0), hard=hard)


CENTRAL = [
    {"diameter_mm": 40.0, "kind": "hilar", "texture": "solid", "spiculated": False},
    {"diameter_mm": 35.0, "kind": "juxtapleural", "texture": "solid", "spiculated": True},
    {"diameter_mm": 12.0, "kind": "intrapulmonary", "texture": "subsolid", "spiculated": False},
]


@pytest.mark.parametrize("family", [IN_FAMILY, HELD_OUT], ids=["in-family", "held-out"])
def test_confounders_never_overlap_the_tumour_label_and_hu_stays_in_range(family: Variety):
    for seed in (1, 4):
        c = build_case(seed, matrix=80, slices=None, plan=[dict(p) for p in CENTRAL], variety=_busy(family))
        lab = c.label.array > 0
        assert c.confounders.shape == lab.shape and c.confounders.any()
        assert not (lab & (c.confounders > 0)).any()  # the label is the tumours alone
        assert lab.sum() == sum(x["voxels"] for x in c.lesions)
        a = c.image.array
        assert a.dtype == np.int16 and a.min() >= -1024 and a.max() <= 3071
        for r in c.variety["confounders"]:
            assert -1024 <= r.get("hu", 0) <= 3071 and r["voxels"] >= 0
        for x in c.lesions:
            assert x["type"] in TUMOUR_TYPES and x["invasion"] in ("none", "chest_wall", "mediastinum")


def test_invasion_and_post_obstructive_atelectasis():
    from scipy import ndimage as ndi

    v = forced(IN_FAMILY, "chest_wall", "mediastinum", "post_obstructive")
    wall = build_case(3, matrix=128, slices=None, plan=[dict(CENTRAL[1], spiculated=False)], variety=v)
    (x,) = wall.lesions
    assert x["invasion"] == "chest_wall" and x["invasion_voxels"] > 0
    outside = (wall.label.array > 0) & ~wall.lung
    assert outside.sum() == x["invasion_voxels"] and not (outside & wall.bone).any()
    hil = build_case(3, matrix=128, slices=None, plan=[dict(CENTRAL[0])], variety=v)
    (y,) = hil.lesions
    assert y["post_obstructive_atelectasis"] and y["invasion"] == "mediastinum"
    (rec,) = [r for r in hil.variety["confounders"] if r["type"] == "post_obstructive_atelectasis"]
    assert rec["voxels"] > 0
    ate = hil.confounders == 1 + hil.variety["confounders"].index(rec)
    lab = hil.label.array > 0
    assert not (ate & lab).any() and (ndi.binary_dilation(lab, iterations=2) & ate).any()  # beside, not in


def test_tumour_variants_cover_the_types_and_4_to_100_mm():
    st = element_streams(np.random.default_rng(0))
    present = {"tumour_size", "tumour_type", "chest_wall", "mediastinum", "post_obstructive"}
    plans = [draw_tumours(IN_FAMILY, sample_lesion_plan(np.random.default_rng(i), "rich"), present, st)
             for i in range(300)]  # fmt: skip
    tumours = [t for p in plans for t in p]
    sizes = np.array([t["diameter_mm"] for t in tumours])
    assert sizes.min() >= 4 and sizes.max() <= 100 and sizes.min() < 6 and sizes.max() > 80
    assert {t["type"] for t in tumours} == set(TUMOUR_TYPES)
    assert all(t["diameter_mm"] <= 30 for t in tumours if t["type"] == "ground_glass")
    assert all(t["diameter_mm"] >= 15 for t in tumours if t["type"] == "cavitating")
    assert {t["invasion"] for t in tumours} == {"none", "chest_wall", "mediastinum"}
    assert any(t["post_obstructive_atelectasis"] for t in tumours)
    assert all(p == sorted(p, key=lambda t: -t["diameter_mm"]) for p in plans)


def test_hard_negatives_are_tumour_free_and_full_of_confounders():
    c = build_case(6, matrix=64, slices=None, variety=IN_FAMILY.with_hard_negatives(1.0))
    assert c.variety["hard_negative"] and not c.lesions and not c.label.array.any()
    conf = {n for n, e in IN_FAMILY.confounders.__dict__.items() if e.p > 0}
    assert len(conf & set(c.variety["elements"])) >= 0.7 * len(conf)  # each at p = 0.9


def _disjoint(a: tuple, b: tuple) -> bool:
    return a[1] < b[0] or b[1] < a[0]


def test_held_out_settings_lie_outside_the_in_family_ranges():
    ins, outs = IN_FAMILY.elements(), HELD_OUT.elements()
    for name in (*RECORD_TYPES, *ACQ_KEYS):
        i, o = ins[name], outs[name]
        if i.p == 0:
            assert o.p > 0  # only in the held-out family
            continue
        apart = [_disjoint(i.size_mm, o.size_mm) and i.size_mm != (0.0, 0.0), _disjoint(i.hu, o.hu) and i.hu != (0, 0),
                 bool(i.choices) and not set(i.choices) & set(o.choices)]  # fmt: skip
        assert any(apart), name
    for name in ("kernel", "thickness", "contrast"):
        assert not set(ins[name].choices) & set(outs[name].choices)
    for seed in range(2):  # and the phantoms' records say so
        acq = build_case(seed, matrix=48, slices=None, variety=HELD_OUT).variety["acquisition"]
        assert acq["kernel"] not in ins["kernel"].choices
        assert acq["slice_thickness_mm"] not in ins["thickness"].choices
        assert not ins["dose"].hu[0] <= acq["noise_hu"] <= ins["dose"].hu[1]
        assert acq["contrast"]["blood_hu"] > ins["contrast"].hu[1]


def test_varied_phantoms_are_deterministic():
    a = build_case(np.random.SeedSequence(3, spawn_key=(0, 1)), matrix=48, slices=12, variety=IN_FAMILY)
    b = build_case(np.random.SeedSequence(3, spawn_key=(0, 1)), matrix=48, slices=12, variety=IN_FAMILY)
    assert np.array_equal(a.image.array, b.image.array) and a.variety == b.variety and a.lesions == b.lesions


def test_synth_records_the_variety_in_lesions_json(tmp_path: Path):
    from lungtumor.cli import build_parser, main

    args = build_parser().parse_args(["synth", "OUT"])
    assert args.variety == "off" and args.test_variety is None and args.hard_negatives is None
    out = tmp_path / "v"
    cmd = ["synth", str(out), "--cases", "2", "--test-cases", "1", "--matrix", "48", "--slices", "10", "-q",
           "--variety", "in-family", "--test-variety", "held-out", "--without", "metal,port"]  # fmt: skip
    assert main(cmd) == 0
    les = json.loads((out / "lesions.json").read_text())
    assert les["variety"]["train"]["name"] == "in-family" and les["variety"]["test"]["name"] == "held-out"
    assert les["variety"]["test"]["acquisition"]["port"]["p"] == 0.0
    fams = [r["variety"]["family"] for r in les["cases"]]
    assert fams == ["in-family", "in-family", "held-out"]
    for r in les["cases"]:
        assert not {"metal", "port"} & set(r["variety"]["elements"])
        assert {"acquisition", "confounders", "hard_negative", "arms"} <= set(r["variety"])
    assert (
        main(["synth", str(tmp_path / "x"), "--cases", "1", "--variety", "in-family", "--without", "nope"])
        == 2
    )
