"""Installed models: a folder of verified model packages, ``<models dir>/<NAME>.zip``.

``lungtumor models install PACKAGE.zip [--name NAME]`` copies a package there after checking it
(``inference.package``), ``models list`` shows them, ``models remove NAME`` deletes one, and
``predict --model NAME`` finds one when NAME is not an existing path. The folder is ``--models-dir DIR``, or by
default the user's data folder: ``platformdirs.user_data_dir("lungtumor") / "models"`` (e.g.
``~/.local/share/lungtumor/models`` on Linux).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # an optional extra (lungtumor[deploy]); --models-dir works without it
    from platformdirs import user_data_dir
except ImportError:  # pragma: no cover - exercised by the one-line error below
    user_data_dir = None  # type: ignore[assignment]

from lungtumor.core.errors import InputError, atomic_path
from lungtumor.inference.package import is_package, package_summary

#: What a model name may hold: letters, digits, ``.``, ``_``, ``-``; no leading dot, at most 100 characters.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def default_models_dir() -> Path:
    """The user's model folder: ``platformdirs.user_data_dir("lungtumor") / "models"``."""
    if user_data_dir is None:
        raise InputError(
            "--models-dir",
            "not given, and the default folder needs platformdirs: pip install 'lungtumor[deploy]'",
        )
    return Path(user_data_dir("lungtumor", appauthor=False)) / "models"


def models_dir(given: str | os.PathLike | None = None) -> Path:
    """``given`` (``--models-dir``), or :func:`default_models_dir`."""
    return Path(given) if given is not None else default_models_dir()


def check_name(name: str) -> str:
    """``name`` when it is a valid model name.

    Raises:
        InputError: it holds a path separator, starts with a dot or has other characters.
    """
    if not NAME_RE.fullmatch(name) or name.lower().endswith(".zip"):
        raise InputError(
            "--name",
            f"{name!r} is not a model name: use letters, digits, '.', '_' and '-' (not first: '.'), at most "
            "100 characters, without .zip",
        )
    return name


@dataclass
class InstalledModel:
    """One installed package: its name, file and manifest (with its card)."""

    name: str
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the package no longer passes its checks


def installed_names(folder: Path) -> list[str]:
    """The names of the packages in ``folder`` (sorted; none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.zip") if p.is_file() and NAME_RE.fullmatch(p.stem))


def install(
    package: str | os.PathLike,
    name: str | None = None,
    folder: str | os.PathLike | None = None,
    force: bool = False,
) -> InstalledModel:
    """Check ``package`` and copy it to ``<folder>/<name>.zip`` (``name``: the package's file stem).

    Raises:
        InputError: not a valid package, a bad name, or the name is taken and ``force`` is off.
    """
    src = Path(package)
    if not is_package(src):
        raise InputError(src, "not a model package (.zip); make one with lungtumor export RUN OUT.zip")
    summary = package_summary(src)  # every check predict makes, before anything is copied
    name = check_name(name if name is not None else src.stem)
    root = models_dir(folder)
    dest = root / f"{name}.zip"
    if dest.exists() and not force:
        raise InputError(name, f"a model of this name is installed ({dest}); pass --force to replace it")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as e:
        raise InputError(root, f"cannot install into the models folder ({e.strerror or e})") from None
    return InstalledModel(name, dest, summary)


def list_models(folder: str | os.PathLike | None = None) -> list[InstalledModel]:
    """The installed packages, by name, each checked (a damaged one has ``error`` set)."""
    root = models_dir(folder)
    out = []
    for name in installed_names(root):
        path = root / f"{name}.zip"
        try:
            out.append(InstalledModel(name, path, package_summary(path)))
        except InputError as e:
            out.append(InstalledModel(name, path, error=e.problem))
    return out


def remove(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Delete the installed package ``name``; return the file removed.

    Raises:
        InputError: no model of that name is installed (the message lists those that are).
    """
    root = models_dir(folder)
    path = root / f"{name}.zip"
    if not NAME_RE.fullmatch(name) or not path.is_file():
        raise InputError(name, f"no installed model of this name{_installed_note(root)}")
    path.unlink()
    return path


def _installed_note(root: Path) -> str:
    names = installed_names(root)
    return f" (installed in {root}: {', '.join(names)})" if names else f" (none installed in {root})"


def resolve_model(spec: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint, run folder or package that ``--model spec`` names: ``spec`` itself when it exists, else
    the installed package of that name; a path that exists nowhere is returned as it is (the checkpoint reader
    then says it is not found).

    Raises:
        InputError: ``spec`` is a bare name (no folder, no suffix) that is neither a path nor installed.
    """
    p = Path(spec)
    if p.exists() or p.is_symlink():
        return p
    name = str(spec)
    if not NAME_RE.fullmatch(name):
        return p
    root = models_dir(folder)
    installed = root / f"{name}.zip"
    if installed.is_file():
        return installed
    if p.suffix.lower() in (".ckpt", ".zip", ".pt", ".pth"):
        return p  # a missing file: the reader's "not found"
    raise InputError(
        name, f"no such checkpoint or run folder, and no installed model of this name{_installed_note(root)}"
    )
