"""Progress that reads as progress wherever a job runs: one helper for every job's bars.

:func:`progress_bar` takes tqdm's call shape (``bar.update(n)``, ``bar.set_postfix(...)``,
``bar.set_postfix_str(...)``, ``bar.close()``, a context manager, or wrapping an iterable) and
shows it one of two ways:

* **widget**: a live ``tqdm`` notebook widget, only in a Jupyter kernel whose front end is a
  person's (JupyterLab, Notebook, VS Code). A widget run through papermill is logged as its
  first text only (``record Pong: 0%| | 0/3000`` for the whole run), so it is never used there.
* **text**: otherwise (a terminal, a log file, papermill, ``nbconvert --execute``), plain lines
  at most every :data:`DEFAULT_INTERVAL` seconds, on the start and the close, each flushed::

      record Pong: 1500/3000 step (50%), 12.3 step/s, elapsed 2:01, ETA 2:02 | loss=0.1234

**The rule** (:func:`display_mode`): ``WORKBENCH_PROGRESS=text`` or ``=widget`` decides when
set. Else: widget when this process is an IPython kernel (``ZMQInteractiveShell``) *and* the
request it is executing allows stdin. A front end with a person at it answers ``input()`` and
says so in every ``execute_request`` (``allow_stdin: true``); nbclient, which papermill and
``jupyter nbconvert --execute`` run notebooks through, always sends ``allow_stdin: false`` (it
cannot answer), and ipykernel keeps that flag for the cell being run (``kernel._allow_stdin``).
Papermill itself sets no marker inside the kernel that could be read instead.

``TQDM_DISABLE=1`` (the tests set it) or ``disable=True`` silences a bar either way.
``WORKBENCH_PROGRESS_INTERVAL`` sets the seconds between text lines (0: every update).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm as _tqdm

__all__ = ["DEFAULT_INTERVAL", "INTERVAL_ENV", "MODE_ENV", "Progress", "display_mode", "live_frontend",
           "progress_bar", "silenced", "write"]

MODE_ENV = "WORKBENCH_PROGRESS"
"""``text`` or ``widget`` overrides the rule; empty or ``auto`` applies it."""
INTERVAL_ENV = "WORKBENCH_PROGRESS_INTERVAL"
"""Seconds between text lines (default :data:`DEFAULT_INTERVAL`)."""
DEFAULT_INTERVAL = 10.0

_FALSE = ("", "0", "false", "no", "off")


def silenced(disable: bool = False) -> bool:
    """Whether a bar stays silent: ``disable``, or ``TQDM_DISABLE`` set to anything but 0/false."""
    return bool(disable) or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE


def live_frontend() -> bool:
    """Whether this process is a Jupyter kernel executing a request from a live front end
    (allow_stdin set; see the module docstring): never under papermill or nbconvert."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules or not hasattr(ipython, "get_ipython"):
        return False
    shell = ipython.get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    return bool(getattr(getattr(shell, "kernel", None), "_allow_stdin", False))


def display_mode() -> str:
    """``"widget"`` or ``"text"``: :data:`MODE_ENV` when set, else :func:`live_frontend`."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("text", "widget"):
        return forced
    if forced not in ("", "auto"):
        raise ValueError(f"{MODE_ENV}={forced!r}: give text, widget or auto")
    return "widget" if live_frontend() else "text"


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r} must be >= 0")
    return value


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _count_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _rate_text(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def write(message: str) -> None:
    """A message line between progress lines (``tqdm.write``: it keeps a terminal bar intact)."""
    _tqdm.write(message)


class Progress:
    """One progress bar: a tqdm widget, periodic text lines, or nothing (see the module docstring)."""

    def __init__(
        self, iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
        unit: str = "it", initial: float = 0, disable: bool = False, interval: float | None = None,
        file: IO[str] | None = None, clock: Callable[[], float] = time.monotonic, mode: str | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.disabled = silenced(disable)
        self.mode = "off" if self.disabled else (mode or display_mode())
        self._widget: Any = None
        if self.mode == "widget":
            self._widget = _tqdm(total=total, desc=desc, unit=unit, initial=initial)
        self._file, self._clock = file, clock
        self._interval = _interval() if interval is None else float(interval)
        self._initial, self._start = initial, clock()
        self._postfix = ""
        self._printed: float | None = None  # the count of the last line
        self._last = self._start
        self._lock = threading.Lock()
        self._closed = False
        if self.mode == "text":
            self._line()

    # ------------------------------------------------------------------ tqdm's call shape

    def update(self, n: float = 1) -> None:
        if self.mode == "off" or self._closed:
            return
        with self._lock:
            self.n += n
            if self._widget is not None:
                self._widget.update(n)
            elif self._clock() - self._last >= self._interval:
                self._line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in items.items()), refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        if self.mode == "off":
            return
        self._postfix = str(s)
        if self._widget is not None:
            self._widget.set_postfix_str(self._postfix, refresh=refresh)

    def close(self) -> None:
        if self.mode == "off" or self._closed:
            return
        with self._lock:
            self._closed = True
            if self._widget is not None:
                self._widget.close()
            elif self._printed != self.n:
                self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    # ------------------------------------------------------------------ text lines

    def format_line(self, now: float | None = None) -> str:
        """The text line for the current count (``now`` defaults to the clock)."""
        elapsed = (self._clock() if now is None else now) - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        head = f"{self.desc}: " if self.desc else ""
        n = _count_text(self.n)
        count = f"{n}/{_count_text(self.total)} {self.unit}" if self.total else f"{n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        speed = f"{_rate_text(rate)} {self.unit}/s" if rate else f"? {self.unit}/s"
        parts = [head + count, speed, f"elapsed {_clock_text(elapsed)}"]
        if self.total:
            left = max(self.total - self.n, 0)
            parts.append(f"ETA {_clock_text(left / rate)}" if rate else ("ETA 0:00" if not left else "ETA ?"))
        line = ", ".join(parts)
        return f"{line} | {self._postfix}" if self._postfix else line

    def _line(self) -> None:
        now = self._clock()
        out = self._file if self._file is not None else sys.stderr
        print(self.format_line(now), file=out, flush=True)
        self._printed, self._last = self.n, now


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, disable: bool = False, **kwargs: Any) -> Progress:
    """A :class:`Progress` (tqdm's arguments; ``interval``, ``file``, ``clock`` and ``mode`` for tests)."""
    return Progress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **kwargs)
