"""Progress of long runs (build, calibration, detect, verify, bench): tqdm's bar, redrawn in place,
where stderr is a terminal, and whole lines where it is a log file, a pipe or a CI console.

A redrawn bar in a log is one line that never ends: tqdm rewrote it up to ten times a second,
each draw behind a carriage return, so an hour's run left megabytes on a single line that
``tail``, ``grep`` and log collectors read as one, and a line printed after it (an ``error:``)
began inside it.
"""

from __future__ import annotations

import os
import stat
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO

from tqdm import tqdm

# How often a log gets a line while the count moves: often enough to see a run is alive, rare
# enough that a day's run stays a few thousand lines
LOG_INTERVAL_S = 30.0


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _is_pipe(stream: TextIO | None) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # none, closed, or not a descriptor (a test's)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _bar_width() -> int | None:
    """Two columns short of the terminal's width: a full-width bar made the ``^C`` echoed on
    an interrupt wrap to a line of its own, and the bar stayed on screen above it."""
    try:
        return max(os.get_terminal_size(sys.stderr.fileno()).columns - 2, 10)
    except (AttributeError, OSError, ValueError):
        return None


def stderr_is_terminal() -> bool:
    """Whether progress drawn on stderr is seen in place (a redrawn bar) or kept (a log)."""
    return _is_terminal(sys.stderr)


def bars_paused_for(stream: TextIO) -> AbstractContextManager[Any]:
    """Around a line written to ``stream``: where that is the terminal the bars are drawn on, they
    are taken off it for the line and drawn again under it (detect's rows on a terminal began on
    the bar's line, after its text); anywhere else, nothing."""
    if _is_terminal(stream) and stderr_is_terminal():
        return tqdm.external_write_mode(file=stream)
    return nullcontext()


def progress_bar(*, total: int, desc: str, unit: str, leave: bool = True, disable: bool = False) -> tqdm:
    """A progress bar on stderr, moved on with ``update``: tqdm's on a terminal (``leave``: kept
    on screen when it ends), a ``LoggedProgress`` elsewhere, none where stderr is closed (``2>&-``
    leaves Python no stream: the first draw raised, and detect lost every row).

    With stdout a pipe (``detect ... | tee rows.csv``) the reader may print to the same terminal,
    at moments this process cannot know to clear the bar for: its rows began on the bar's line
    and left half-drawn bars between them. Whole lines, as in a log, then, which never mix."""
    if sys.stderr is None:
        disable = True
    if stderr_is_terminal() and not _is_pipe(sys.stdout):
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, disable=disable,
                    ncols=_bar_width())
    return LoggedProgress(total=total, desc=desc, unit=unit, disable=disable)


def _rate_text(done: float, elapsed: float, unit: str) -> str:
    rate = done / elapsed
    if rate < 1:
        return f"{1 / rate:.3g} s/{unit}"
    return f"{rate:.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


class LoggedProgress(tqdm):
    """Progress as whole lines: one when the run starts, one each time its stage changes
    (``set_description``), one at most every ``LOG_INTERVAL_S`` while the count moves, and one
    when it ends, e.g. ``detect: 1200/10000 (12%), 06:40 elapsed, 3 img/s, about 48:53 left``.
    Nothing is ever taken back: tqdm's clearing (around lines other code prints, at the close) is
    a no-op, and its redraws after such a line write nothing new unless the interval has passed."""

    # a line ends itself: an error after an interrupted constructor needs no line break before it
    ends_its_lines = True

    def __init__(self, *, total: int, desc: str, unit: str, disable: bool = False) -> None:
        self._last_line: tuple[float, str] | None = None  # (count, description) of the last line
        self._last_line_t = 0.0
        # miniters=1: tqdm's own monitor thread then never forces a draw
        super().__init__(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable,
                         leave=False, mininterval=LOG_INTERVAL_S, miniters=1)

    def line(self) -> str:
        """The line for the count now (without its line break)."""
        now = self._time()
        # tqdm sets start_t after drawing the first line
        done, total, elapsed = self.n, self.total, now - getattr(self, "start_t", now)
        text = f"{self.desc.removesuffix(': ')}: {done:.0f}/{total:.0f}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        if done and elapsed > 0:
            text += f", {self.format_interval(elapsed)} elapsed, {_rate_text(done, elapsed, self.unit)}"
            if done < total:
                text += f", about {self.format_interval(elapsed * (total - done) / done)} left"
        return text

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar: a line written stays written
            return False
        now = self._time()
        state = (self.n, self.desc)
        first_or_new_stage = self._last_line is None or state[1] != self._last_line[1]
        moved = self._last_line is not None and state[0] != self._last_line[0]
        if first_or_new_stage or (moved and now - self._last_line_t >= LOG_INTERVAL_S):
            self._write_line(state, now)
        return True

    def clear(self, nolock: bool = False) -> None:
        """A log's lines are never cleared."""

    def close(self) -> None:
        """The last count gets its line (an interrupted run's too, so the error after it begins a
        line of its own), then tqdm closes the bar without clearing anything."""
        if not self.disable and self._last_line is not None and self._last_line[0] != self.n:
            self._write_line((self.n, self.desc), self._time())
        super().close()

    def _write_line(self, state: tuple[float, str], now: float) -> None:
        self.fp.write(self.line() + "\n")
        self.fp.flush()
        self._last_line, self._last_line_t = state, now
