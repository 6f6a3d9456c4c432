"""Writing never follows a link out of the output folder: a sub-folder planted as a symlink out of it
(``RUN/checkpoints``, ``RUN/tb``, ``CACHE/cases``, ``OUT/imagesTr``, ``OUT/fold_0``, ...) is refused with one
line naming it, before anything is written, and left in place (refused, not deleted). A link that stays inside
the output folder, and the output folder itself being a link, are fine.

``predict`` and ``report`` write no sub-folders (every output is a file directly in OUT, written through
``core.errors.atomic_path``), so they have nothing here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lungtumor.core.errors import InputError, check_subdirs, ensure_subdir
from lungtumor.training.trainer import AtomicCheckpointIO, check_run_folder

from ._util import one_error_line, run_cli

REFUSAL = "is a symbolic link out of the output folder; remove it"


def _plant(folder: Path, sub: str, tmp: Path) -> tuple[Path, Path]:
    """``folder/sub`` as a link to an empty folder outside ``folder``; returns (link, outside)."""
    outside = tmp / "outside"
    outside.mkdir(exist_ok=True)
    link = folder / sub
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    return link, outside


def _refused(capsys, link: Path, outside: Path, *argv) -> str:
    rc, _, err = run_cli(capsys, *argv)
    line = one_error_line(err, f"{link}: {REFUSAL}")
    assert rc == 2, line
    assert list(outside.iterdir()) == [], "something was written through the link"
    assert link.is_symlink(), "the link was removed"
    return line


@pytest.mark.parametrize("sub", ["checkpoints", "tb", "tb/detector"])
def test_train_refuses_a_run_subfolder_linked_out(
    tmp_path: Path, capsys, tiny_cache: Path, tiny_config: Path, sub: str
) -> None:
    run = tmp_path / "run"
    link, outside = _plant(run, sub, tmp_path)
    _refused(capsys, link, outside, "train", tiny_cache, "--out", run, "--config", tiny_config, "-q")
    assert sorted(p.name for p in run.iterdir()) == [sub.split("/")[0]]  # nothing written into RUN either


def test_train_resume_refuses_checkpoints_linked_out(
    tmp_path: Path, capsys, tiny_cache: Path, tiny_config: Path
) -> None:
    """A planted RUN/checkpoints holding someone else's last.ckpt is neither resumed nor written."""
    run = tmp_path / "run"
    link, outside = _plant(run, "checkpoints", tmp_path)
    argv = ["train", tiny_cache, "--out", run, "--config", tiny_config, "--resume", "-q"]
    _refused(capsys, link, outside, *argv)


@pytest.mark.parametrize(("preset", "sub"), [("demo", "cases"), ("demo", ".state"), ("3d", "cases3d")])
def test_prepare_refuses_a_cache_subfolder_linked_out(
    tmp_path: Path, capsys, tiny_dataset: Path, preset: str, sub: str
) -> None:
    cache = tmp_path / "cache"
    link, outside = _plant(cache, sub, tmp_path)
    _refused(capsys, link, outside, "prepare", tiny_dataset, cache, "--preset", preset, "--folds", "0", "-q")
    assert not (cache / "cache.json").exists()


def test_prepare_follows_a_link_inside_the_cache(
    tmp_path: Path, capsys, tiny_dataset: Path, tiny_config: Path
) -> None:
    cache = tmp_path / "cache"
    (cache / "real_cases").mkdir(parents=True)
    (cache / "cases").symlink_to("real_cases", target_is_directory=True)
    argv = ["prepare", tiny_dataset, cache, "--preset", "demo", "--config", tiny_config, "--folds", "0", "-q"]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert (cache / "cases").is_symlink() and any((cache / "real_cases").glob("*_img.npy"))


def test_synth_refuses_a_dataset_subfolder_linked_out(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    link, outside = _plant(out, "labelsTr", tmp_path)
    argv = ["synth", out, "--cases", "2", "--test-cases", "1", "--matrix", "64", "--slices", "16", "-q"]
    _refused(capsys, link, outside, *argv)


@pytest.mark.parametrize("sub", ["cache", "fold_1"])
def test_cv_refuses_a_subfolder_linked_out(tmp_path: Path, capsys, tiny_dataset: Path, sub: str) -> None:
    out = tmp_path / "cv"
    link, outside = _plant(out, sub, tmp_path)
    _refused(
        capsys, link, outside, "cv", tiny_dataset, "--out", out, "--folds", "2", "--preset", "demo", "-q"
    )


def test_demo_refuses_a_subfolder_linked_out(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    link, outside = _plant(out, "run", tmp_path)
    _refused(capsys, link, outside, "demo", "--out", out, "-q")


def test_checkpoint_writer_refuses_checkpoints_linked_out(tmp_path: Path) -> None:
    """Lightning's own saves go through AtomicCheckpointIO: a link planted mid-run is refused too."""
    link, outside = _plant(tmp_path / "run", "checkpoints", tmp_path)
    with pytest.raises(InputError, match=f"^{link}: {REFUSAL}$"):
        AtomicCheckpointIO().save_checkpoint({"x": 1}, link / "last.ckpt")
    assert list(outside.iterdir()) == []


def test_links_inside_the_output_folder_and_a_linked_output_folder_are_fine(tmp_path: Path) -> None:
    real = tmp_path / "real_run"
    (real / "ckpt_store").mkdir(parents=True)
    (real / "checkpoints").symlink_to(real / "ckpt_store", target_is_directory=True)
    run = tmp_path / "run_link"
    run.symlink_to(real, target_is_directory=True)  # the output folder the user gave is itself a link
    check_run_folder(run)
    assert ensure_subdir(run, "tb/detector").is_dir() and (real / "tb" / "detector").is_dir()
    (real / "loop").symlink_to("loop")  # a loop of links counts as out of the folder
    with pytest.raises(InputError, match=REFUSAL):
        check_subdirs(run, "loop/x")
    with pytest.raises(InputError, match=f"^{run / 'chain'}: {REFUSAL}$"):  # a link to a link that leaves
        (tmp_path / "hop").symlink_to(tmp_path / "outside_dir", target_is_directory=True)
        (real / "chain").symlink_to(tmp_path / "hop", target_is_directory=True)
        ensure_subdir(run, "chain/sub")
    assert not (tmp_path / "outside_dir").exists()
