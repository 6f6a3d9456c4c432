"""User-facing errors and atomic file writing.

Every problem caused by the user's input raises :class:`InputError` with one line that names the
file (or option) and the problem. The command line turns it into ``error: <message>`` and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class InputError(Exception):
    """Bad input from the user: a file, an option, a dataset. The message is one line."""

    def __init__(self, where: str | os.PathLike | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        msg = f"{self.where}: {problem}" if self.where else problem
        super().__init__(msg.replace("\n", " "))


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and check that we can write into it.

    Raises:
        InputError: the folder cannot be created or written to.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(p, "output path exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(p, f"cannot create output folder ({e.strerror or e})") from None
    if not p.is_dir():
        raise InputError(p, "output path exists and is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(p, "output folder is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=p, prefix=".lt-probe-"):
            pass
    except OSError as e:
        raise InputError(p, f"output folder is not writable ({e.strerror or e})") from None
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the real suffix (``.x.nii.gz.tmp-123`` would confuse writers that
    pick the format from the suffix), so it is built as ``.tmp-<pid>-<name>``.
    A reader therefore never sees a half-written file under the final name.

    Links are never written through: the rename replaces whatever entry is at ``path`` (a symlink there is
    replaced by the new file; its target is untouched), and a stale entry at the temporary name (a leftover,
    or a planted symlink) is removed before the block writes there. A folder in ``path`` is used as given
    (an output folder that is itself a symlink is fine).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()  # a link itself, not its target
    elif tmp.is_dir():
        shutil.rmtree(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:  # exclusive: never opens an existing file or follows a link
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
