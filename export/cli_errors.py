"""How every ``dfd-export`` verb ends on a known failure: one ``error:`` line and an exit code.

Its own module so the verbs that live beside their implementation (``capi``) use the same
handling as those in ``cli.py`` without importing it (``cli.py`` imports them).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from dfd.runtime.errors import DfdError, os_error_text


def printable(text: str) -> str:
    """Text for one line of the terminal: characters that would break the line or drive the
    terminal (line breaks, escape sequences, other control characters, bytes undecodable in the
    file system's encoding, all of which a file name may hold) are written as Python escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def warn(message: str) -> None:
    """One ``WARNING:`` line on stderr, whatever the file names in it hold."""
    click.secho(f"WARNING: {printable(message)}", fg="yellow", err=True)


def _fail(message: str, code: int = 1) -> None:
    _end_open_progress_bars()
    # a message may span lines on purpose (a checkpoint's list of mismatches); the file names in it may not
    click.echo("\n".join(printable(line) for line in f"error: {message}".split("\n")), err=True)
    sys.exit(code)


def _end_open_progress_bars() -> None:
    """End the line of every progress bar still open, so the error begins a line of its own. A
    bar's ``with`` closes it on any exception, but a signal that lands inside tqdm's constructor,
    right after it drew the bar, comes before the ``with`` took hold: verify's interrupted run
    then printed "verify:   0%| ... error: interrupted" on one line of a log, which ``grep
    '^error:'`` misses. tqdm is looked up, never imported: a verb without bars has none open."""
    tqdm_module = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        if hasattr(bar, "last_print_t"):
            bar.close()
        else:  # stopped inside its constructor, where close() takes it for never drawn
            bar.disable = True
            if not getattr(bar, "ends_its_lines", False):  # a log's progress line ended itself
                bar.fp.write("\n")


def _reader_went_away() -> None:
    """End quietly, as a tool killed by SIGPIPE does (status 128 + 13), when whatever read stdout
    closed it (``dfd-export detect ... | head``): the reader wanted no more, so that is no error to
    report. stdout is pointed at /dev/null first, or Python's flush at exit fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(128 + 13)


def require_stdout() -> None:
    """Refuse to run a verb whose results go to stdout when the process has none (started with
    ``>&-``): click writes nothing to a missing stdout, so such a run ended with status 0 and its
    results lost."""
    if sys.stdout is None:
        raise DfdError("stdout is closed, so the results cannot be written; redirect it to a file")


def keep_descriptor_2_for_stderr() -> None:
    """Started with stderr closed (``2>&-``), point descriptor 2 at /dev/null and give Python a
    stderr there. Otherwise the first file the process opens becomes descriptor 2, where libjpeg
    and libpng print and where decoder-message capture swaps its sink in and back: degrade, so
    started, failed every copy ("Bad file descriptor") without a word, and a progress bar with no
    stream to draw on ended detect before its first row. What is said on stderr is then gone, as
    the caller chose; results, files and the exit status are not."""
    try:
        os.fstat(2)
        return
    except OSError:
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    if null != 2:  # 2 is the lowest free descriptor unless 0 or 1 is closed too
        os.dup2(null, 2)
        os.close(null)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)


def _raised_echoing_to_stdout(exc: OSError) -> bool:
    """Whether ``exc`` came from ``click.echo`` writing to stdout (``> /dev/full``, a full disk
    under ``> report.txt``). Such an error names no file, so "error: No space left on device"
    read as if the command's own work had failed. Told from the traceback, whose ``echo`` frame
    holds ``err``; a failed flush drops the buffer, so a second flush cannot tell."""
    traceback = exc.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is click.utils.echo.__code__ and not frame.f_locals.get("err"):
            return True
        traceback = traceback.tb_next
    return False


def handles_errors(func: Callable) -> Callable:
    """Turn the project's own exceptions into one readable line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            _reader_went_away()
        except DfdError as exc:
            _fail(str(exc))
        except OSError as exc:  # the file system refused (full disk, permissions): not a bug
            if exc.filename is None and _raised_echoing_to_stdout(exc):
                _fail(f"cannot write the results to stdout: {exc.strerror or exc}")
            _fail(os_error_text(exc))
        except MemoryError as exc:  # numpy says how much it wanted
            _fail(f"out of memory{f' ({exc})' if str(exc) else ''}; this machine cannot hold what the command "
                  f"was asked to do")

    return wrapper


@contextmanager
def termination_interrupts() -> Iterator[None]:
    """Treat SIGTERM (kill, a cancelled CI job, docker stop) and SIGHUP (the terminal or ssh session
    closed) as Ctrl-C for the duration: a build then removes its staging folder (gigabytes at paper
    size), its lock and its temporary graphs, and a benchmark its temporary images and keeps the
    batch sizes it finished, as on Ctrl-C, instead of dying with them on disk or lost. A signal
    the process was told to ignore (``nohup`` ignores SIGHUP) stays ignored."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    numbers = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    # None: a handler installed outside Python, which cannot be put back; the default is the closest
    previous = {number: signal.getsignal(number) or signal.SIG_DFL for number in numbers}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
