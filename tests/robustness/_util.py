"""Helpers of the robustness suite: run the CLI in-process or as the console script, check error lines."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lungtumor.cli import main

#: Observed one-line messages per bad-input kind, for docs/errors.md (see ``record_error``).
OBSERVED: dict[str, tuple[str, str, str]] = {}


def run_cli(capsys, *args: str | os.PathLike) -> tuple[int, str, str]:
    """``lungtumor ARGS`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, *needles: str, rc: int | None = None) -> str:
    """Assert ``err`` is exactly one line ``error: ...`` holding every needle and no traceback; return it."""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def record_error(kind: str, command: str, line: str, tmp_path: Path) -> None:
    """Keep the observed message of ``kind`` (temporary folders shown as ``<tmp>``)."""
    text = line.replace(str(tmp_path), "<tmp>")
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ]+", "<tmp>", text)
    OBSERVED[kind] = (command, text)


def console_script() -> Path:
    """The installed ``lungtumor`` console script of this interpreter's environment."""
    p = Path(sys.executable).parent / "lungtumor"
    if not p.exists():
        pytest.skip("the lungtumor console script is not installed next to this Python")
    return p


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: few threads (the suite shares 2 cores), no Python warnings."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run_console(*args: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console script in a child process."""
    return subprocess.run(
        [str(console_script()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
    )


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
