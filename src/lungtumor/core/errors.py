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
from typing import Any


class InputError(Exception):
    """Bad input from the user: a file, an option, a dataset. The message is one line."""

    def __init__(self, where: str | os.PathLike | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        msg = f"{self.where}: {problem}" if self.where else problem
        super().__init__(msg.replace("\n", " "))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its two fields, so that it crosses from a worker process to the parent intact."""
        return (type(self), (self.where, self.problem))


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


def _link_out(root: Path, sub: str | os.PathLike) -> Path | None:
    """The first part of ``root/sub`` below ``root`` that is a symbolic link resolving outside ``root``."""
    try:
        base = root.resolve()
    except (OSError, RuntimeError):
        base = root.absolute()
    p = root
    for part in Path(sub).parts:
        p = p / part
        if not p.is_symlink():
            continue
        try:
            target = p.resolve()
        except (OSError, RuntimeError):  # a loop of links
            return p
        if not target.is_relative_to(base):
            return p
    return None


def check_subdirs(root: str | os.PathLike, *subs: str | os.PathLike) -> None:
    """Refuse sub-folders of the output folder ``root`` that are symbolic links out of it.

    Writing never follows a link out of the output folder: a sub-folder (``RUN/checkpoints``, ``CACHE/cases``)
    that is a symlink resolving outside ``root`` is refused, not replaced (nothing of the user's is deleted).
    A link that stays inside ``root``, a sub-folder that does not exist yet and ``root`` itself being a
    symlink are fine. Call it before anything is written for folders that other code (Lightning) creates.

    Raises:
        InputError: naming the link, ``... is a symbolic link out of the output folder; remove it``.
    """
    root = Path(root)
    for sub in subs:
        link = _link_out(root, sub)
        if link is not None:
            raise InputError(link, "is a symbolic link out of the output folder; remove it")


def ensure_subdir(root: str | os.PathLike, sub: str | os.PathLike) -> Path:
    """Create (or enter) the sub-folder ``root/sub`` of the output folder ``root`` and check that we can write
    into it; a part of it that is a symbolic link out of ``root`` is refused (:func:`check_subdirs`).

    Raises:
        InputError: a link out of ``root``, or a folder that cannot be created or written to.
    """
    check_subdirs(root, sub)
    return ensure_writable_dir(Path(root) / sub)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the real suffix (``.x.nii.gz.tmp-123`` would confuse writers that
    pick the format from the suffix), so it is built as ``.tmp-<pid>-<name>``.
    A reader therefore never sees a half-written file under the final name.

    Links are never written through: the rename replaces whatever entry is at ``path`` (a symlink there is
    replaced by the new file; its target is untouched), and a stale entry at the temporary name (a leftover,
    or a planted symlink) is removed before the block writes there. A folder in ``path`` is used as given
    (an output folder that is itself a symlink is fine); sub-folders of an output folder are made with
    :func:`ensure_subdir` or checked with :func:`check_subdirs`, which refuse a link out of it.
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
