"""Progress on a terminal (tqdm's bar, rows never begun on its line) and in a log (whole lines)."""

from __future__ import annotations

import io
import os
import sys

import pytest
from tqdm import tqdm

from dfd.runtime.progress import LoggedProgress, bars_paused_for, progress_bar
from terminal_screen import terminal_screen


class Terminal(io.StringIO):
    """A stream that says it is a terminal; ``screen`` is what it shows."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        return terminal_screen(self.getvalue())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logged(total: int, desc: str = "detect", unit: str = "img") -> tuple[LoggedProgress, Clock]:
    """A log's progress whose clock the test moves, started at 1000 s."""
    clock = Clock()
    bar = progress_bar(total=total, desc=desc, unit=unit)
    assert isinstance(bar, LoggedProgress)
    bar._time = clock
    bar.start_t = bar.last_print_t = bar._last_line_t = clock.now
    return bar, clock


def test_a_log_gets_whole_lines_at_start_every_interval_and_at_the_end(monkeypatch, capsys):
    bar, clock = logged(total=100)
    for step in range(99):
        clock.now += 0.5  # 2 images a second: a line every 30 s is every 60 images
        bar.update(1)
    bar.close()
    bar.close()  # closed twice (an error's close after the with's): one last line
    stderr = capsys.readouterr().err
    assert "\r" not in stderr
    assert stderr.splitlines() == [
        "detect: 0/100 (0%)",
        "detect: 60/100 (60%), 00:30 elapsed, 2 img/s, about 00:20 left",
        "detect: 99/100 (99%), 00:49 elapsed, 2 img/s, about 00:00 left",
    ]


def test_a_log_line_writes_large_counts_whole(capsys):
    """Formatted with :g, 1234567 of 2000000 read "1.23457e+06/2e+06"."""
    bar, clock = logged(total=2_000_000)
    clock.now += 60
    bar.update(1_234_567)
    bar.close()
    assert capsys.readouterr().err.splitlines()[-1].startswith("detect: 1234567/2000000 (62%), 01:00 elapsed")


def test_a_log_line_says_seconds_per_item_when_items_are_slow(monkeypatch, capsys):
    bar, clock = logged(total=3, desc="build", unit="stream")
    clock.now += 95.0
    bar.update(1)
    bar.close()
    assert capsys.readouterr().err.splitlines()[-1] == "build: 1/3 (33%), 01:35 elapsed, 95 s/stream, about 03:10 left"


def test_a_log_gets_a_line_for_each_stage_and_none_for_lines_printed_between(monkeypatch, capsys):
    """Redrawn after every line printed around it (degrade's per-image lines), a log's progress
    repeated itself; tqdm's clearing wrote carriage returns and spaces into the log."""
    bar, clock = logged(total=2, desc="build", unit="stream")
    bar.set_description("build global: load")
    for name in ("one", "two"):
        clock.now += 1
        bar.update(1)  # within the interval: no line
        with bar.external_write_mode(file=sys.stderr):
            sys.stderr.write(f"a line about {name}\n")
    bar.set_description("build fusion: export ONNX")
    bar.close()  # the count did not move since: nothing to add
    assert capsys.readouterr().err.splitlines() == [
        "build: 0/2 (0%)", "build global: load: 0/2 (0%)", "a line about one", "a line about two",
        "build fusion: export ONNX: 2/2 (100%), 00:02 elapsed, 1 stream/s"]


def test_a_disabled_log_writes_nothing(capsys):
    bar = progress_bar(total=5, desc="calibration set", unit="img", disable=True)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdm_bar_and_a_row_printed_there_starts_its_own_line(monkeypatch):
    """detect's rows on a terminal began on the bar's line, after its text."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", terminal)
    bar = progress_bar(total=4, desc="detect", unit="img")
    assert type(bar) is tqdm
    for index in range(2):
        with bars_paused_for(sys.stdout):
            sys.stdout.write(f"row {index}\n")
        bar.update(1)
    bar.close()
    screen = terminal.screen()
    assert screen[:2] == ["row 0", "row 1"] and screen[2].startswith("detect:  50%|") and screen[3:] == [""], screen

    glued = Terminal()  # without the pause: the test can tell
    monkeypatch.setattr(sys, "stderr", glued)
    monkeypatch.setattr(sys, "stdout", glued)
    with tqdm(total=4, desc="detect", file=sys.stderr):
        sys.stdout.write("row 0\n")
    assert glued.screen()[0].endswith("?it/s]row 0"), glued.screen()


@pytest.mark.parametrize("bar_on", ["terminal", "log"])
def test_bars_are_left_alone_for_a_row_that_goes_elsewhere(monkeypatch, bar_on):
    """Rows to a file under a terminal's bar, or to a terminal beside a log's progress: nothing
    is cleared or drawn again per row."""
    monkeypatch.setattr(sys, "stderr", Terminal() if bar_on == "terminal" else io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO() if bar_on == "terminal" else Terminal())
    with progress_bar(total=4, desc="detect", unit="img") as bar:
        assert isinstance(bar, LoggedProgress) == (bar_on == "log")
        drawn = sys.stderr.getvalue()
        with bars_paused_for(sys.stdout):
            sys.stdout.write("row 0\n")
        assert drawn and sys.stderr.getvalue() == drawn


def test_no_stderr_no_bar(monkeypatch):
    """A process without stderr (``2>&-``, pythonw): Python's stderr is None, and the first draw raised."""
    monkeypatch.setattr(sys, "stderr", None)
    with progress_bar(total=4, desc="calibration set", unit="img") as bar:
        assert bar.disable
        bar.update(4)


def test_a_terminal_bar_beside_a_piped_stdout_is_whole_lines(monkeypatch):
    """``detect ... | tee rows.csv``: tee prints the rows to the terminal the bar is on, at moments
    this process cannot clear the bar for; they began on its line, between half-drawn bars."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb"), os.fdopen(write_end, "w") as pipe:
        monkeypatch.setattr(sys, "stderr", Terminal())
        monkeypatch.setattr(sys, "stdout", pipe)
        with progress_bar(total=4, desc="detect", unit="img") as bar:
            assert isinstance(bar, LoggedProgress)
        monkeypatch.setattr(sys, "stdout", Terminal())
        with progress_bar(total=4, desc="detect", unit="img") as bar:
            assert type(bar) is tqdm


def test_a_terminal_bar_leaves_room_for_the_interrupts_echo(monkeypatch):
    """A bar as wide as the terminal made the ``^C`` the terminal echoes wrap to a line of its own."""
    terminal = Terminal()
    terminal.fileno = lambda: 2
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((60, 20)))
    with progress_bar(total=4, desc="detect", unit="img") as bar:
        bar.update(2)
    assert max(len(line) for line in terminal.screen()) == 58
