"""Progress in a log (stderr is a file or a pipe) is plain lines, not carriage-return redraws of a bar."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from lungtumor.core import progress
from lungtumor.core.progress import PlainProgress


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def test_plain_progress_writes_a_line_per_tenth() -> None:
    buf = io.StringIO()
    items = list(PlainProgress(range(20), desc="prepare", unit="case", file=buf))
    assert items == list(range(20))
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert len(lines) == 10 and lines[0].startswith("prepare: 2/20 case (10%)")
    assert lines[-1].startswith("prepare: 20/20 case (100%)")
    buf = io.StringIO()
    with PlainProgress(total=3, desc="synth", unit="case", file=buf) as bar:
        for _ in range(3):
            bar.update()
    assert [ln.split(",")[0] for ln in buf.getvalue().splitlines()] == [
        "synth: 1/3 case (33%)",
        "synth: 2/3 case (67%)",
        "synth: 3/3 case (100%)",
    ]
    buf = io.StringIO()
    list(PlainProgress(range(5), disable=True, file=buf))
    assert buf.getvalue() == ""


def test_bar_on_a_terminal_plain_lines_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert not isinstance(progress.tqdm(range(3), disable=True), PlainProgress)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert isinstance(progress.tqdm(range(3), disable=True), PlainProgress)


def test_synth_log_has_no_carriage_returns(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "lungtumor"
    argv = [str(exe), "synth", "-o", str(tmp_path / "ds"), "--cases", "2", "--test-cases", "1"]
    proc = subprocess.run(
        [*argv, "--matrix", "48", "--slices", "8"], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "synth: 3/3 case (100%)" in proc.stderr


DEMO = textwrap.dedent(
    """
    import sys
    from lungtumor.core.config_io import load_config
    from lungtumor.workflows.demo import run_demo

    cfg = load_config(None, "demo")
    cfg.prep.size, cfg.prep.spacing_mm = (64, 64), 4.0
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.epochs, cfg.train.max_steps_per_epoch, cfg.train.batch_size, cfg.train.crop_size = 2, 2, 4, 0
    cfg.nodule.channels, cfg.nodule.steps, cfg.nodule.batch_size = (4, 8, 8), 3, 4
    run_demo(sys.argv[1], cases=3, val_cases=1, test_cases=1, seed=3, progress=True, config=cfg,
             matrix=64, slices=16)
    """
)


def test_demo_log_is_readable_lines(tmp_path: Path) -> None:
    """The whole demo (synth, prepare, Lightning training, predict, evaluate) into a pipe: no '\\r' at all."""
    proc = subprocess.run(
        [sys.executable, "-c", DEMO, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "\r" not in log
    for needle in (
        "demo: step 1/5: synth",
        "demo: step 3/5: train",
        "epoch 1/2: ",
        "epoch 2/2: ",
        "val_dice",
    ):
        assert needle in log, log
    assert "demo: evaluate done in" in log and "predict: 1/1 case (100%)" in log
