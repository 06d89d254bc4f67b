"""How every ``dfd-export`` verb ends on a known failure: one ``error:`` line and an exit code.

Its own module so the verbs that live beside their implementation (``capi``) use the same
handling as those in ``cli.py`` without importing it (``cli.py`` imports them).
"""

from __future__ import annotations

import errno
import functools
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import click

from dfd.runtime.decoder_messages import outside_decoder_captures
from dfd.runtime.errors import DfdError, note_stop_request, os_error_text, stop_request_handled, stop_requested


def printable(text: str) -> str:
    """Text for one line of the terminal: characters that would break the line or drive the
    terminal (line breaks, escape sequences, other control characters, bytes undecodable in the
    file system's encoding, all of which a file name may hold) are written as Python escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def colour() -> bool | None:
    """click's ``color`` for the lines this tool colours: off where NO_COLOR is set (no-color.org)
    or TERM is "dumb"; else click's own choice (on a terminal only)."""
    return False if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" else None


def warn(message: str) -> None:
    """One ``WARNING:`` line on stderr, whatever the file names in it hold."""
    click.secho(f"WARNING: {printable(message)}", fg="yellow", err=True, color=colour())


def echo_error(message: str) -> None:
    """The ``error:`` line(s) on stderr. A message may span lines on purpose (a checkpoint's list
    of mismatches); the file names in it may not, nor drive the terminal."""
    click.echo("\n".join(printable(line) for line in f"error: {message}".split("\n")), err=True)


def _fail(message: str, code: int = 1) -> None:
    _end_open_progress_bars()
    echo_error(message)
    sys.exit(code)


def fail_interrupted() -> None:
    """End as an interrupted run: ``error: interrupted``, exit 130."""
    _fail("interrupted", 130)


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
    _point_at_devnull(sys.stdout.fileno())
    sys.exit(128 + 13)


def require_stdout() -> None:
    """Refuse to run a verb whose results go to stdout when the process has none (started with
    ``>&-``): click writes nothing to a missing stdout, so such a run ended with status 0 and its
    results lost."""
    if sys.stdout is None:
        raise DfdError("stdout is closed, so the results cannot be written; redirect it to a file")


def steady_standard_streams() -> None:
    """Make the standard streams unable to end or spoil the run, before a verb runs.

    - A closed one (``2>&-``, ``>&-``, ``<&-``): its descriptor is pointed at /dev/null. Otherwise
      the first file the process opens takes that number: as descriptor 2, where libjpeg and
      libpng print and decoder-message capture swaps its sink in and back, degrade so started
      failed every copy ("Bad file descriptor") without a word; as descriptor 1, a report file
      passed for stdout. A closed stdout stays None to Python, so a verb whose results go there
      still refuses to run; a closed stderr becomes one that says nothing.
    - stderr's reader gone (``2>&1 >rows.jsonl | grep -m1 WARNING``): the write that finds the
      pipe closed, and every later one, goes to /dev/null. The EPIPE ended detect, verify and
      bench as if stdout's reader had gone (exit 141, no rows, no report), and failed a build.

    What was said on stderr is then gone, as whoever closed it chose; results, files and the exit
    status are not. Only the process's own stderr is replaced, not one a caller set up (tests)."""
    own_stderr = sys.stderr is not None and sys.stderr is sys.__stderr__
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            _point_at_devnull(descriptor)
            if descriptor == 2:
                sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
                own_stderr = True
    if own_stderr:  # the wrapper also keeps writes out of decoder captures, even to /dev/null
        sys.stderr = _StderrOutlivingItsReader(sys.stderr)


def _point_at_devnull(descriptor: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null != descriptor:  # a closed descriptor is the lowest free one unless a lower one is closed too
        os.dup2(null, descriptor)
        os.close(null)


class _StderrOutlivingItsReader(io.TextIOBase):
    """A text stream that writes to ``stream`` until its reader is gone (EPIPE, or EIO from a
    hung-up terminal), then to /dev/null through the same descriptor. No ``buffer``: click then
    writes through it whatever the encoding, where it would wrap the bytes beneath and go round it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    @property
    def encoding(self) -> str:
        return self._stream.encoding

    @property
    def errors(self) -> str | None:
        return self._stream.errors

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    # Writes wait while another thread's decode is captured (its descriptor 2 is the capture's
    # file), and so does pointing descriptor 2 at /dev/null, which that decode would undo.
    def write(self, text: str) -> int:
        with outside_decoder_captures():
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._reader_gone(exc)
                return len(text)

    def flush(self) -> None:
        with outside_decoder_captures():
            try:
                self._stream.flush()
            except OSError as exc:
                self._reader_gone(exc)

    def _reader_gone(self, exc: OSError) -> None:
        """EPIPE: the pipe's reader ended; EIO: the terminal hung up (SIGHUP's "error:
        interrupted" itself failed, exit 1 with a traceback). Anything else is raised."""
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise exc
        _point_at_devnull(2)
        try:
            self._stream.flush()  # what it still holds goes to /dev/null now
        except OSError:
            pass


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
    """Turn an interrupt, and the project's and the OS's exceptions, into one readable line and an
    exit code (130 interrupted, 141 stdout's reader gone, else 1). Stop signals are caught for the
    whole verb, whether it runs under ``main`` (which catches them from before its arguments are
    read) or on its own."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with termination_interrupts():
            try:
                result = func(*args, **kwargs)
            except KeyboardInterrupt:
                fail_interrupted()
            except SystemExit as exit_:
                if exit_.code != 130 and stop_requested():  # detect's 2, verify's 3 after a swallowed stop
                    _fail_swallowed_stop()
                raise
            except Exception as exc:
                if _raised_by_an_interrupt(exc):
                    fail_interrupted()
                _fail_for(exc)
                raise  # a bug: its traceback
            if stop_requested():
                _fail_swallowed_stop()
            return result

    return wrapper


def _fail_swallowed_stop() -> None:
    """A stop signal whose interrupt was raised where Python only prints it (a weakref callback
    during a build's export: "Exception ignored ... KeyboardInterrupt"), so the run went on."""
    _fail("interrupted, though the run went on to its end", 130)


def _raised_by_an_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised from an interrupt (``raise ... from``): onnxruntime's import,
    interrupted, raises "ImportError: initialization failed" so. An error met while handling one
    (``__context__``: a failed rename while a build puts the old set back) keeps its own message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False


def _fail_for(exc: Exception) -> None:
    """End with the line and exit code for a known failure; return for anything else."""
    if isinstance(exc, BrokenPipeError):
        _reader_went_away()
    elif isinstance(exc, DfdError):
        _fail(str(exc))
    elif isinstance(exc, OSError):  # the file system refused (full disk, permissions): not a bug
        if exc.filename is None and _raised_echoing_to_stdout(exc):
            _fail(f"cannot write the results to stdout: {exc.strerror or exc}")
        _fail(os_error_text(exc))
    elif isinstance(exc, MemoryError):  # numpy says how much it wanted
        _fail(f"out of memory{f' ({exc})' if str(exc) else ''}; this machine cannot hold what the command "
              f"was asked to do")


_stop_signals_caught = False  # within termination_interrupts


@contextmanager
def termination_interrupts() -> Iterator[None]:
    """For the duration: treat SIGTERM (kill, a cancelled CI job, docker stop) and SIGHUP (the
    terminal or ssh session closed) as Ctrl-C, and record that one of the three came
    (``note_stop_request``). A build then removes its staging folder (gigabytes at paper size),
    its lock and its temporary graphs, and a benchmark its temporary images and keeps the batch
    sizes it finished, instead of dying with them on disk or lost. A signal the process was told
    to ignore (``nohup`` ignores SIGHUP, a shell's background job SIGINT) stays ignored. Within an
    outer use, nothing changes."""
    def interrupt(signum, frame):
        note_stop_request()
        raise KeyboardInterrupt

    global _stop_signals_caught
    # signals reach the main thread only
    if threading.current_thread() is not threading.main_thread() or _stop_signals_caught:
        yield
        return
    stop_request_handled()  # a new run: nothing pending from an earlier one in this process
    _stop_signals_caught = True
    numbers = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
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
        _stop_signals_caught = False
        stop_request_handled()
