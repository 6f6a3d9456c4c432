"""The command line fits users' habits (issue 24): -i/-o as nnU-Net and TotalSegmentator spell them, --out on
every command, help with defaults, --preset choices, one --device vocabulary for train and predict."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.cli import _UsageError, build_parser, commands, main
from lungtumor.cli.options import PRESET_NAMES
from lungtumor.core import runtime
from lungtumor.core.errors import InputError
from lungtumor.core.presets import PRESETS
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

SKIP = (argparse._HelpAction, argparse._VersionAction)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, SKIP)]


def test_every_option_has_help_that_shows_its_default() -> None:
    parsers = _subparsers()
    assert len(parsers) >= 12
    missing = []
    for name, p in parsers.items():
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, SKIP):
                continue
            if not (a.help or "").strip():
                missing.append(f"{name} {a.dest}: no help")
                continue
            if not a.option_strings:
                continue
            text = fmt._expand_help(a)  # the help as shown, after HelpFormatter adds the default
            if not ("default" in text or "required" in text or a.required):
                missing.append(f"{name} {'/'.join(a.option_strings)}: {text!r} shows no default")
    assert not missing, "\n".join(missing)


def test_defaults_appear_in_help_output(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0)" in out  # --seed: added by the formatter
    assert "(default: off)" in out  # a flag (--debug)


def test_preset_choices_everywhere() -> None:
    assert PRESET_NAMES == tuple(sorted(PRESETS))
    with_preset = {}
    for name, p in _subparsers().items():
        for a in _options(p):
            if "--preset" in a.option_strings:
                with_preset[name] = tuple(a.choices or ())
    assert set(with_preset) == {"prepare", "train", "cv", "benchmark-msd"}
    assert all(c == PRESET_NAMES for c in with_preset.values()), with_preset


def test_every_output_folder_is_out_with_short_o() -> None:
    for name, p in _subparsers().items():
        flags = {s for a in _options(p) for s in a.option_strings}
        if name in ("check", "models"):  # check writes nothing; models writes into --models-dir
            assert "--out" not in flags and "-o" not in flags
            continue
        assert {"-o", "--out"} <= flags, name


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["prepare", "ds", "cache"], {"dataset": "ds", "out": "cache"}),
        (["prepare", "-i", "ds", "-o", "cache"], {"dataset": "ds", "out": "cache"}),
        (["prepare", "ds", "-o", "cache"], {"dataset": "ds", "out": "cache"}),
        (["prepare", "-i", "ds", "cache"], {"dataset": "ds", "out": "cache"}),
        (["synth", "data"], {"out": "data"}),
        (["synth", "-o", "data"], {"out": "data"}),
        (["report", "ct.nii.gz", "--mask", "m", "-o", "r"], {"image": "ct.nii.gz", "out": "r"}),
        (["report", "-i", "ct.nii.gz", "--mask", "m", "--out", "r"], {"image": "ct.nii.gz", "out": "r"}),
        (["train", "cache", "-o", "run"], {"out": "run"}),
        (["demo", "-o", "d"], {"out": "d"}),
        (["evaluate", "p", "g", "-o", "ev"], {"out": "ev"}),
        (["compare", "a", "b", "-o", "c"], {"out": "c"}),
    ],
)
def test_positional_and_short_forms_agree(argv: list[str], expect: dict[str, str]) -> None:
    ns = build_parser().parse_args(argv)
    for key, value in expect.items():
        assert getattr(ns, key) == Path(value), (argv, key)
    assert not [k for k in vars(ns) if k.endswith("_opt") or k.startswith("_")]


def test_inputs_from_positional_and_i_are_merged() -> None:
    ns = build_parser().parse_args(["predict", "a.nii.gz", "-i", "b.nii.gz", "c", "--model", "m", "-o", "o"])
    assert ns.inputs == [Path("a.nii.gz"), Path("b.nii.gz"), Path("c")]
    ns = build_parser().parse_args(["measure", "-i", "m1.nii.gz", "-i", "m2.nii.gz", "-o", "o"])
    assert ns.masks == [Path("m1.nii.gz"), Path("m2.nii.gz")]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["predict", "--model", "m", "-o", "o"], "required: CT (or -i/--input)"),
        (["prepare", "ds"], "required: CACHE (or -o/--out)"),
        (["synth"], "required: OUT (or -o/--out)"),
        (["prepare", "ds", "cache", "-o", "other"], "unrecognized arguments: cache"),
        (["measure", "m.nii.gz"], "required: -o/--out"),
    ],
)
def test_missing_or_doubled_slots_are_one_line_usage_errors(argv, needle, capsys, tmp_path) -> None:
    with pytest.raises(_UsageError, match="see lungtumor"):
        build_parser().parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: lungtumor {argv[0]}: ") and needle in err


def test_measure_with_i_and_o_forms(tmp_path: Path, capsys) -> None:
    m = np.zeros((6, 16, 18), np.uint8)
    m[2:4, 4:8, 4:9] = 1
    path = write_volume(Volume(m, spacing=(0.8, 0.8, 2.5)), tmp_path / "c1.nii.gz")
    assert main(["measure", "-i", str(path), "-o", str(tmp_path / "a")]) == 0
    assert main(["measure", str(path), "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (tmp_path / d / "c1_lesions.json" for d in "ab")
    assert a.read_text() == b.read_text()


# ----------------------------------------------------------------------------- devices


def test_gpu_is_an_alias_of_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("gpu") == torch.device("cuda")
    assert runtime.resolve_device("GPU:1") == torch.device("cuda:1")
    assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="only 2 CUDA device"):
        runtime.resolve_device("cuda:2")


def test_cuda_without_a_gpu_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("gpu", "cuda", "cuda:0"):
        with pytest.raises(InputError, match="no CUDA device is available"):
            runtime.resolve_device(name)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(
        InputError, match=r"unknown device 'tpu'; use auto, cpu, cuda \(or gpu\), cuda:N, mps"
    ):
        runtime.resolve_device("tpu")
    with pytest.raises(InputError, match="unknown device"):
        runtime.resolve_device("cuda:x")


def test_mps_where_torch_has_it(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(InputError, match="MPS was requested"):
        runtime.resolve_device("mps")


def test_train_takes_the_same_device_names() -> None:
    acc = runtime.lightning_accelerator
    names = ("auto", "cpu", "cuda", "gpu", "mps", "cuda:1")
    assert [acc(n) for n in names] == ["auto", "cpu", "gpu", "gpu", "mps", "gpu"]
    for flag in ("--device", "--accelerator"):  # --accelerator: the old name, kept
        ns = build_parser().parse_args(["train", "cache", "-o", "run", flag, "gpu"])
        assert ns.device == "gpu"


def test_train_device_index_is_lightnings_gpu_list(monkeypatch) -> None:
    """``train --device cuda:N`` trains on GPU N alone: Lightning's ``devices=[N]``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    dev = runtime.lightning_devices
    assert dev("cuda:1", 1) == ("gpu", [1])
    assert dev("GPU:0", 4) == ("gpu", [0])  # the index replaces the recipe's count
    assert dev("cuda:1", [0], count=1) == ("gpu", [1])
    assert dev("cuda", [0, 1]) == ("gpu", [0, 1])  # the recipe's GPU indices stay on a GPU
    assert dev("gpu", 2) == ("gpu", 2)
    assert dev("cpu", [0, 1]) == ("cpu", 2)  # off the GPU, indices become their count
    assert dev("auto", 1) == ("auto", 1)
    with pytest.raises(InputError, match=r"^--device: 'cuda:2' requested but only 2 CUDA device\(s\) exist$"):
        dev("cuda:2", 1)
    with pytest.raises(InputError, match=r"^--devices: --device cuda:1 trains on GPU 1 alone"):
        dev("cuda:1", 1, count=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InputError, match="^--device: CUDA was requested but no CUDA device is available$"):
        dev("cuda:0", 1)


def test_train_device_index_reaches_the_config(monkeypatch, tmp_path: Path) -> None:
    """The CLI's config for ``train --device cuda:1`` (what the trainer gets, and what the run saves)."""
    seen = {}

    class _Done:
        is_global_zero = False

    def fake_train(cache, out, cfg, **kw):
        seen["cfg"] = cfg
        return _Done()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(commands, "train", fake_train)
    assert (
        main(["train", str(tmp_path / "cache"), "-o", str(tmp_path / "run"), "--device", "cuda:1", "-q"]) == 0
    )
    assert (seen["cfg"].train.accelerator, seen["cfg"].train.devices) == ("gpu", [1])
    for flag in ("--device", "--accelerator"):
        assert main(["train", str(tmp_path / "cache"), "-o", str(tmp_path / "run"), flag, "cpu", "-q"]) == 0
        assert (seen["cfg"].train.accelerator, seen["cfg"].train.devices) == ("cpu", 1)
