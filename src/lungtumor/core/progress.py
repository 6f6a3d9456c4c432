"""Progress: a tqdm bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (a CI log, ``2> log.txt``,
``nohup``) that is a flood of ``\\r``-joined redraws. :func:`tqdm` is a drop-in for ``tqdm.tqdm`` (the subset
lungtumor uses: iterate, ``update``, ``close``, a context manager) that gives the real bar when stderr is a
terminal and otherwise :class:`PlainProgress`: one line per tenth of the work (``prepare: 4/10 case (40%),
12 s``), never a ``\\r``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm as _tqdm


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (where a redrawn bar is readable)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def log_line(text: str, file: TextIO | None = None) -> None:
    """Write one progress line to stderr (``file``) and flush it."""
    f = file if file is not None else sys.stderr
    print(text, file=f, flush=True)


class PlainProgress:
    """A progress counter that writes a plain line at every ``step`` fraction of ``total`` and at the end."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        step: float = 0.1,
        **_: Any,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.file, self.step = disable, file, step
        self.n, self._next, self._t0, self._closed = 0, step, time.monotonic(), False

    def _line(self) -> str:
        head = f"{self.desc}: " if self.desc else ""
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{head}{self.n}{of} {self.unit}{pct}, {time.monotonic() - self._t0:.0f} s"

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; write a line when a new tenth of the total is reached."""
        self.n += n
        if self.disable or not self.total:
            return
        if self.n / self.total >= self._next - 1e-9 and self.n < self.total:
            log_line(self._line(), self.file)
            while self._next <= self.n / self.total + 1e-9:
                self._next += self.step

    def close(self) -> None:
        """Write the final line (once)."""
        if not self._closed and not self.disable and self.n:
            log_line(self._line(), self.file)
        self._closed = True

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; plain lines carry no postfix."""

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tqdm(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """``tqdm.tqdm(iterable, **kwargs)`` when stderr is a terminal, else a :class:`PlainProgress` with the same
    arguments (plain lines, no carriage returns)."""
    if stderr_is_terminal():
        return _tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
