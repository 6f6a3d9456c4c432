"""The phantoms' variety (domain randomisation): which confounders, acquisition settings and tumour variants a
varied phantom may get, with what probability and in what size and HU ranges, and the two named families.

A :class:`Variety` is off by default (``build_case(variety=None)`` and ``synth --variety off`` give the
default phantoms, byte for byte). Each element is an :class:`Element`: drawn for a phantom with probability
``p`` (0: switched off), its sizes (mm), HU and counts uniform in its ranges. What each range means for each
element is listed in :data:`ELEMENT_DOCS` and, with the values of both families, in ``docs/phantoms.md``.
Every element draws from its own random stream (:func:`element_streams`), so switching one element off leaves
the others' draws as they were. The HU and size values come from textbook and review ranges; each is cited by
its source kind next to the family below.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

Range = tuple[float, float]


@dataclass(frozen=True)
class Element:
    """One switchable element of the variety.

    Attributes:
        p: probability that a phantom gets it (0: off).
        size_mm: its size range in mm (see :data:`ELEMENT_DOCS` for which size).
        hu: its HU range (non-contrast values; contrast-enhancing tissue gets its enhancement on top).
        count: how many instances, inclusive range.
        choices: discrete settings drawn with equal probability (kernel names, slice thicknesses, patterns).
    """

    p: float = 0.0
    size_mm: Range = (0.0, 0.0)
    hu: Range = (0.0, 0.0)
    count: tuple[int, int] = (1, 1)
    choices: tuple = ()

    def size(self, rng: np.random.Generator) -> float:
        """A size (mm) uniform in ``size_mm``."""
        return float(rng.uniform(*self.size_mm))

    def hu_value(self, rng: np.random.Generator) -> float:
        """An HU value uniform in ``hu``."""
        return float(rng.uniform(*self.hu))

    def n(self, rng: np.random.Generator) -> int:
        """A count uniform in ``count`` (inclusive)."""
        return int(rng.integers(self.count[0], self.count[1] + 1))

    def choice(self, rng: np.random.Generator):
        """One of ``choices``, with equal probability (a plain Python value)."""
        c = self.choices[int(rng.integers(len(self.choices)))]
        return float(c) if isinstance(c, float | int) else str(c)


@dataclass(frozen=True)
class Confounders:
    """Look-alikes and anatomy that are never labelled tumour (one :class:`Element` each)."""

    effusion: Element = Element()
    atelectasis: Element = Element()
    consolidation: Element = Element()
    emphysema: Element = Element()
    ground_glass: Element = Element()
    fibrosis: Element = Element()
    granulomas: Element = Element()
    lymph_nodes: Element = Element()
    bronchi: Element = Element()
    oesophagus: Element = Element()
    abdomen: Element = Element()
    breasts: Element = Element()
    arms: Element = Element()


@dataclass(frozen=True)
class Acquisition:
    """Scanner and patient-motion settings (one :class:`Element` each)."""

    contrast: Element = Element()
    kernel: Element = Element()
    dose: Element = Element()
    thickness: Element = Element()
    beam_hardening: Element = Element()
    metal: Element = Element()
    port: Element = Element()
    breathing: Element = Element()


@dataclass(frozen=True)
class TumourVariety:
    """How a varied phantom's tumours are redrawn (one :class:`Element` each)."""

    tumour_size: Element = Element()
    tumour_type: Element = Element()
    chest_wall: Element = Element()
    mediastinum: Element = Element()
    post_obstructive: Element = Element()


#: What each element's ranges mean.
ELEMENT_DOCS = {
    "effusion": "pleural effusion along the dependent (posterior) pleura; size: greatest thickness; count: sides",
    "atelectasis": "dependent subpleural or plate atelectasis (compressive beside an effusion); size: thickness",
    "consolidation": "airspace consolidation with air bronchograms, subpleural; size: diameter",
    "emphysema": "low-attenuation holes (hu) in the upper lungs and subpleural bullae; size: bulla diameter; "
    "choices: pattern",
    "ground_glass": "ill-defined ground-glass patches that keep the vessels; size: diameter",
    "fibrosis": "subpleural basal reticulation or honeycombing (choices); size: depth of the band; hu: lines",
    "granulomas": "calcified granulomas in the lungs; size: diameter",
    "lymph_nodes": "hilar and mediastinal lymph nodes in the mediastinal fat; size: short axis",
    "bronchi": "extra segmental bronchi with walls; size: wall thickness; choices: lumen x (bronchiectasis)",
    "oesophagus": "the oesophagus with its wall and content; size: outer diameter; hu: content; choices: content",
    "abdomen": "liver, spleen and stomach below the diaphragm dome; size: stomach diameter; hu: gastric content",
    "breasts": "breasts on the anterior chest wall; size: radius; hu: fibroglandular tissue",
    "arms": "arms down beside the chest (else up, out of the field; p: arms down); size: arm radius; hu: muscle",
    "contrast": "intravenous contrast; hu: enhanced blood (aorta) HU; choices: phase (none: blood 35-50 HU)",
    "kernel": "reconstruction kernel (blur, noise texture, edge overshoot); choices: kernel",
    "dose": "dose, as the noise SD in soft tissue (hu)",
    "thickness": "slice thickness = z spacing (choices, mm)",
    "beam_hardening": "dark streaks between dense structures; size: streak width; hu: depth; count: streaks",
    "metal": "surgical clips with metal streaks; size: clip length; count: clips; hu: streak amplitude",
    "port": "a chest port (reservoir and catheter) with metal streaks; size: reservoir diameter; hu: streaks",
    "breathing": "breathing blur at the lung bases; size: motion amplitude",
    "tumour_size": "tumour diameters redrawn log-uniform in size (35 % under 15 mm)",
    "tumour_type": "tumour types redrawn from choices",
    "chest_wall": "a juxtapleural tumour >= 20 mm invades the chest wall (p per tumour)",
    "mediastinum": "a hilar tumour >= 20 mm invades the mediastinum (p per tumour)",
    "post_obstructive": "a hilar tumour >= 15 mm has post-obstructive atelectasis distal to it (p per tumour); "
    "size: its length; hu: its HU",
}

#: Tumour types a varied phantom may draw, and how each is rendered (texture, spiculated).
TUMOUR_TYPES = {
    "solid": ("solid", False),
    "spiculated": ("solid", True),
    "part_solid": ("subsolid", False),
    "ground_glass": ("ground_glass", False),
    "cavitating": ("cavitary", False),
}

#: Tumour elements whose ``p`` is drawn per tumour, not per phantom.
PER_TUMOUR = ("chest_wall", "mediastinum", "post_obstructive")

#: Kernel names (:mod:`lungtumor.data.acquisition` holds their blur, noise texture and edge overshoot).
KERNELS = ("soft", "standard", "sharp")


@dataclass(frozen=True)
class Variety:
    """A family of varied phantoms: its confounders, acquisition and tumour variants, and the share of
    tumour-free "hard negative" phantoms, whose confounders (those with p > 0) get probability
    ``hard_negative_p``."""

    name: str = "off"
    confounders: Confounders = Confounders()
    acquisition: Acquisition = Acquisition()
    tumours: TumourVariety = TumourVariety()
    hard_negatives: float = 0.0
    hard_negative_p: float = 0.9

    @property
    def enabled(self) -> bool:
        """Whether anything is switched on (else the default phantom is built)."""
        return self.hard_negatives > 0 or any(e.p > 0 for e in self.elements().values())

    def elements(self) -> dict[str, Element]:
        """Every element by name, in :data:`ELEMENTS` order."""
        return {f.name: getattr(g, f.name) for g in self._groups() for f in fields(g)}

    def _groups(self) -> tuple:
        """The three element groups: confounders, acquisition, tumours."""
        return (self.confounders, self.acquisition, self.tumours)

    def without(self, *names: str) -> Variety:
        """This family with the named elements switched off (``p`` = 0)."""
        unknown = sorted(set(names) - set(ELEMENTS))
        if unknown:
            raise ValueError(f"unknown element {', '.join(unknown)}; valid: {', '.join(ELEMENTS)}")
        groups = [replace(g, **{n: replace(getattr(g, n), p=0.0) for n in names if hasattr(g, n)})
                  for g in self._groups()]  # fmt: skip
        return replace(self, confounders=groups[0], acquisition=groups[1], tumours=groups[2])

    def with_hard_negatives(self, share: float | None) -> Variety:
        """This family with ``share`` (in [0, 1]) of tumour-free hard negatives (None: unchanged)."""
        if share is None:
            return self
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the share of hard negatives must be in [0, 1], got {share}")
        return replace(self, hard_negatives=float(share))

    def only(self, *names: str) -> Variety:
        """This family with every element but the named ones switched off, and no hard negatives."""
        return replace(self.without(*(n for n in ELEMENTS if n not in names)), hard_negatives=0.0)


ELEMENTS = tuple(f.name for g in (Confounders, Acquisition, TumourVariety) for f in fields(g))

# Literature values (textbook = standard chest-CT / radiology textbooks; review = review articles):
# simple pleural effusion 0-20 HU, haemorrhagic effusion / haemothorax 30-60 HU (textbook); atelectasis
# 20-40 HU unenhanced, enhancing strongly with contrast (textbook); consolidation 20-45 HU (textbook);
# emphysema below -950 HU (LAA-950, review), bullae > 10 mm, giant bullae > 1/3 hemithorax (textbook);
# ground glass -750 to -300 HU (review); calcified granulomas > 200 HU, often several hundred (textbook);
# normal nodes < 10 mm short axis, bulky > 15-20 mm (textbook); bronchial wall about 1 mm, bronchiectasis
# lumen > 1-1.5x the artery (review); oesophagus about 20 mm, dilated > 30 mm (textbook); oral contrast
# 150-300 HU (textbook); fibroglandular breast 20-50 HU (textbook); cortical bone > 1000 HU (textbook);
# aorta 35-50 HU unenhanced, 130-220 HU portal venous, 250-450 HU arterial (textbook); diagnostic chest CT
# noise 8-25 HU, low dose 30-60 HU (review); slice thickness 0.6-5 mm (scanner manuals); diaphragm motion
# 10-20 mm in quiet breathing (textbook), so residual blur of a few mm to about 10 mm.

#: The training family: every confounder and setting within the ranges below.
IN_FAMILY = Variety(
    name="in-family",
    confounders=Confounders(
        effusion=Element(0.25, (5.0, 30.0), (0.0, 20.0), (1, 2)),
        atelectasis=Element(0.35, (3.0, 12.0), (20.0, 40.0), (1, 3)),
        consolidation=Element(0.25, (20.0, 60.0), (20.0, 45.0), (1, 2)),
        emphysema=Element(0.3, (10.0, 35.0), (-990.0, -950.0), (1, 3), ("centrilobular",)),
        ground_glass=Element(0.3, (10.0, 40.0), (-700.0, -550.0), (1, 3)),
        fibrosis=Element(0.2, (5.0, 15.0), (-400.0, -200.0), (1, 1), ("reticulation",)),
        granulomas=Element(0.4, (2.0, 6.0), (300.0, 800.0), (1, 4)),
        lymph_nodes=Element(0.5, (5.0, 10.0), (25.0, 45.0), (2, 6)),
        bronchi=Element(0.5, (0.8, 1.5), (30.0, 50.0), (10, 20), (1.0,)),
        oesophagus=Element(0.5, (14.0, 22.0), (-1000.0, -900.0), (1, 1), ("air",)),
        abdomen=Element(0.6, (50.0, 90.0), (0.0, 20.0)),
        breasts=Element(0.3, (40.0, 70.0), (20.0, 45.0)),
        arms=Element(0.3, (35.0, 50.0), (40.0, 55.0)),
    ),
    acquisition=Acquisition(
        contrast=Element(1.0, hu=(130.0, 220.0), choices=("none", "venous")),
        kernel=Element(1.0, choices=("soft", "standard")),
        dose=Element(1.0, hu=(8.0, 25.0)),
        thickness=Element(1.0, choices=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0)),
        beam_hardening=Element(0.4, (3.0, 6.0), (15.0, 40.0), (1, 3)),
        metal=Element(0.2, (3.0, 6.0), (80.0, 200.0), (1, 4)),
        port=Element(0.0),
        breathing=Element(0.3, (1.0, 4.0)),
    ),
    tumours=TumourVariety(
        tumour_size=Element(1.0, (4.0, 100.0)),
        tumour_type=Element(1.0, choices=tuple(TUMOUR_TYPES)),
        chest_wall=Element(0.3),
        mediastinum=Element(0.3),
        post_obstructive=Element(0.4, (20.0, 60.0), (20.0, 40.0)),
    ),
    hard_negatives=0.15,
)

#: The held-out family: every confounder and acquisition setting outside the in-family ranges (or only here:
#: honeycombing, the port, bronchiectasis, a fluid-filled oesophagus, oral contrast); tumours drawn alike.
HELD_OUT = Variety(
    name="held-out",
    confounders=Confounders(
        effusion=Element(0.35, (40.0, 70.0), (30.0, 60.0), (1, 2)),
        atelectasis=Element(0.35, (15.0, 30.0), (45.0, 65.0), (1, 3)),
        consolidation=Element(0.3, (70.0, 110.0), (50.0, 70.0), (1, 1)),
        emphysema=Element(0.35, (45.0, 80.0), (-1000.0, -991.0), (1, 2), ("panlobular",)),
        ground_glass=Element(0.35, (50.0, 90.0), (-500.0, -350.0), (1, 2)),
        fibrosis=Element(0.3, (16.0, 30.0), (-150.0, 0.0), (1, 1), ("honeycombing",)),
        granulomas=Element(0.4, (7.0, 12.0), (900.0, 1500.0), (1, 3)),
        lymph_nodes=Element(0.5, (15.0, 30.0), (5.0, 20.0), (1, 4)),
        bronchi=Element(0.5, (2.0, 3.5), (55.0, 80.0), (6, 12), (1.8, 2.5)),
        oesophagus=Element(0.5, (30.0, 45.0), (10.0, 40.0), (1, 1), ("fluid_level",)),
        abdomen=Element(0.6, (100.0, 140.0), (150.0, 300.0)),
        breasts=Element(0.3, (80.0, 110.0), (50.0, 70.0)),
        arms=Element(0.8, (52.0, 65.0), (56.0, 70.0)),
    ),
    acquisition=Acquisition(
        contrast=Element(1.0, hu=(260.0, 450.0), choices=("arterial",)),
        kernel=Element(1.0, choices=("sharp",)),
        dose=Element(1.0, hu=(35.0, 60.0)),
        thickness=Element(1.0, choices=(0.6, 0.75, 4.0, 5.0)),
        beam_hardening=Element(0.7, (7.0, 12.0), (60.0, 120.0), (2, 5)),
        metal=Element(0.3, (7.0, 10.0), (250.0, 500.0), (5, 8)),
        port=Element(0.5, (25.0, 30.0), (300.0, 600.0)),
        breathing=Element(0.6, (6.0, 12.0)),
    ),
    tumours=IN_FAMILY.tumours,
    hard_negatives=0.15,
)

#: The named families of ``synth --variety``.
VARIETY_FAMILIES = {"in-family": IN_FAMILY, "held-out": HELD_OUT}


def variety_family(
    name: str, without: tuple[str, ...] = (), hard_negatives: float | None = None
) -> Variety | None:
    """The named family (``"off"``: None) with the named elements switched off and, if given, another share
    of hard negatives in [0, 1]. Raises ValueError naming the valid choices."""
    if name == "off":
        return None
    if name not in VARIETY_FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid: off, {', '.join(VARIETY_FAMILIES)}")
    return VARIETY_FAMILIES[name].without(*without).with_hard_negatives(hard_negatives)


def element_streams(rng: np.random.Generator) -> dict[str, np.random.Generator]:
    """One random stream per element (and ``"hard_negatives"``), derived from ``rng``'s seed without drawing
    from ``rng`` (so the varied phantom's anatomy starts as the default phantom's)."""
    ss = getattr(rng.bit_generator, "seed_seq", None)
    if isinstance(ss, np.random.SeedSequence):
        root = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, 0x7A21E7))
    else:  # a generator without a seed sequence: take the seed from its stream
        root = np.random.SeedSequence(int(rng.integers(2**63)))
    names = (*ELEMENTS, "hard_negatives")
    kids = [np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, i)) for i in range(len(names))]
    return {n: np.random.default_rng(k) for n, k in zip(names, kids, strict=True)}


def draw_present(variety: Variety, streams: dict[str, np.random.Generator]) -> tuple[set[str], bool]:
    """Which elements a phantom gets, and whether it is a tumour-free hard negative (its confounders then at
    probability ``hard_negative_p``). One draw from each element's stream."""
    hard = bool(streams["hard_negatives"].random() < variety.hard_negatives)
    conf = {f.name for f in fields(Confounders)}
    present = set()
    for name, el in variety.elements().items():
        p = max(el.p, variety.hard_negative_p) if hard and name in conf and el.p > 0 else el.p
        if name in PER_TUMOUR:  # drawn per tumour (draw_tumours)
            if el.p > 0:
                present.add(name)
        elif streams[name].random() < p:
            present.add(name)
    return present, hard


def _type_of(p: dict) -> str:
    """The :data:`TUMOUR_TYPES` name of a default plan's tumour (necrotic counts as solid)."""
    if p["spiculated"]:
        return "spiculated"
    return {"subsolid": "part_solid", "cavitary": "cavitating", "ground_glass": "ground_glass"}.get(
        p["texture"], "solid"
    )


def draw_tumours(variety: Variety, plan: list[dict], present: set[str], streams: dict) -> list[dict]:
    """Copies of ``plan``'s tumours with redrawn sizes and types, and their invasion and post-obstructive
    atelectasis flags (plan keys ``type``, ``invasion``, ``post_obstructive_atelectasis``), largest first."""
    t = variety.tumours
    out = []
    for p in plan:
        q = dict(p)
        if "tumour_size" in present:
            r = streams["tumour_size"]
            lo, hi = t.tumour_size.size_mm
            a, b = (lo, min(15.0, hi)) if r.random() < 0.35 else (max(15.0, lo), hi)
            q["diameter_mm"] = round(float(np.exp(r.uniform(np.log(a), np.log(b)))), 2)
        if "tumour_type" in present:
            r = streams["tumour_type"]
            kind = t.tumour_type.choice(r)
            if kind == "ground_glass" and q["diameter_mm"] > 30:  # pure ground-glass nodules stay <= 3 cm
                q["diameter_mm"] = round(float(r.uniform(8.0, 30.0)), 2)
            if kind == "cavitating" and q["diameter_mm"] < 15:  # a cavity needs a wall around it
                kind = "solid"
            q["texture"], q["spiculated"] = TUMOUR_TYPES[kind]
            if kind == "solid" and q["diameter_mm"] > 30 and r.random() < 0.4:
                q["texture"] = "necrotic"  # a solid mass with a necrotic core
        else:
            kind = _type_of(q)
        q["type"] = kind
        q["invasion"] = "none"
        big = q["diameter_mm"] >= 20
        if big and q["kind"] == "juxtapleural" and "chest_wall" in present:
            q["invasion"] = "chest_wall" if streams["chest_wall"].random() < t.chest_wall.p else "none"
        if big and q["kind"] == "hilar" and "mediastinum" in present:
            q["invasion"] = "mediastinum" if streams["mediastinum"].random() < t.mediastinum.p else "none"
        q["post_obstructive_atelectasis"] = bool(
            q["kind"] == "hilar" and q["diameter_mm"] >= 15 and "post_obstructive" in present
            and streams["post_obstructive"].random() < t.post_obstructive.p
        )  # fmt: skip
        out.append(q)
    return sorted(out, key=lambda p: -p["diameter_mm"])
