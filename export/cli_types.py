"""Click parameter types shared by the ``dfd-export`` verbs."""

from __future__ import annotations

import codecs
import fcntl
import io
import math
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

import click
from click.core import ParameterSource

from dfd.runtime.atomic_files import missing_folders, remove_empty_folders, write_atomically
from dfd.runtime.errors import DfdError, dangling_link_text, os_error_text
from dfd.runtime.images import DEFAULT_MAX_PIXELS
from dfd.runtime.manifest import Manifest, engine_set_files


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities.

    Click checks a range by comparison, and NaN passes every comparison it makes, so
    ``--max-abs-dp nan`` or ``--calib-degrade nan`` would be taken as given: a verify gate that
    can never pass, a calibration share that is no share. Without bounds it is a finite float.
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


DEGRADING_MEMORY = "Degrading holds a few float copies of an image (12 bytes a pixel each)"


def max_pixels_option(larger_jpeg: str, larger_other: str, memory: str) -> Callable:
    """``--max-pixels``, the decoding limit of every verb that reads images (``decode_image``); the
    texts say what this verb does with a larger JPEG and with any other larger image, and what a
    pixel costs it. One option for every verb, so an error that says "raise --max-pixels" holds
    whichever verb printed it."""
    return click.option(
        "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
        help=f"Largest image, in pixels, decoded at full size: a larger JPEG {larger_jpeg}, any other larger "
             f"image {larger_other}. {memory}; raise it where memory allows.")


class Verb(click.Command):
    """A ``dfd-export`` verb whose options cannot take another of its options as their value.

    ``verify SET --json --strict`` wrote its report to a file named ``--strict`` and ran without
    ``--strict``: a release gate weakened without a word (``build --out --force`` built into a
    folder named ``--force``). Click takes the next word as an option's value whatever it is."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        options = [param for param in self.get_params(ctx) if isinstance(param, click.Option)]
        names = {name for option in options for name in (*option.opts, *option.secondary_opts)}
        for param in options:
            if param.is_flag or param.count:
                continue
            value = ctx.params.get(param.name)
            given = value if isinstance(value, (tuple, list)) else (value,)
            swallowed = [str(v) for v in given if v is not None and str(v) in names]
            if swallowed:
                raise click.UsageError(f"{param.opts[-1]} took {swallowed[0]!r}, another option, as its value: give "
                                       f"{param.opts[-1]} a value (a file or folder really named {swallowed[0]}: "
                                       f"./{swallowed[0]})", ctx)
        return rest


class GivenPath(click.Path):
    """``click.Path`` refusing an empty (or blank) value, which ``Path("")`` reads as the current
    folder: ``--calib-cache "$CACHE"`` with CACHE unset wrote a 0.5 GB cache there, ``inspect
    "$SET"`` said ". is not an engine set", ``--weights-dir "$W"`` looked for checkpoints in the
    current folder. Every path option and argument of the CLI is one."""

    def __init__(self, **kwargs) -> None:
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value, param, ctx):
        self.refuse_empty(value, param, ctx)
        return super().convert(value, param, ctx)

    def refuse_empty(self, value, param, ctx) -> None:
        if isinstance(value, str) and not value.strip():
            wanted = ("a file" if not self.dir_okay else "a folder, '.' for the current one" if not self.file_okay
                      else "a path, '.' for the current folder")
            self.fail(f"is empty (an unset shell variable?); give {wanted}", param, ctx)


class OutputFolder(GivenPath):
    """A folder to write into (a path that may not be a file or a broken link).
    With ``outside_engine_sets``, also a folder in an engine set: files there are strangers to
    the set, which a later ``build --force`` of it refuses to replace."""

    def __init__(self, outside_engine_sets: bool = False) -> None:
        super().__init__(file_okay=False)
        self.outside_engine_sets = outside_engine_sets

    def convert(self, value, param, ctx):
        self.refuse_empty(value, param, ctx)
        if os.path.isfile(value):
            self.fail(f"{value} is a file, not a folder; choose another", param, ctx)
        dangling = dangling_link_text(value)
        if dangling:
            self.fail(f"{dangling}; choose another, or make the link lead to a folder", param, ctx)
        path = super().convert(value, param, ctx)
        if self.outside_engine_sets:
            folder = Path(os.path.abspath(path))
            engine_set = next((f for f in (folder, *folder.parents) if engine_set_files(f) is not None), None)
            if engine_set is not None:
                self.fail(f"{value} is {'' if engine_set == folder else 'inside '}the engine set {engine_set}, whose "
                          f"folder holds its own files only (a later build --force there would refuse the "
                          f"strangers); write beside it", param, ctx)
        return path


def prepare_output_file(path: Path | None, option: str, engine_dir: Path | None = None,
                        inputs: Sequence[Path] = ()) -> None:
    """Check an output file can be written before the run: a bad path then fails at once instead
    of after minutes (hours at paper size) of measurement. The check creates its folder and opens
    the file for appending (which changes nothing; the file and the folders are removed again if
    they were not there, and made again by ``write_output_file``): a permission test such as
    ``os.access`` says yes to root for any path. Never an
    output: a file of the engine set being measured (its manifest.json, a graph), anything else
    inside its folder (a later ``build --force`` there would refuse the stranger), or one of
    ``inputs``, the files the run reads (checkpoints, images). A device or pipe (``/dev/stdout``,
    ``>(jq .)``) is not opened: a pipe without a reader would block here, and it is written to
    as a stream (``write_output_file``)."""
    if path is None:
        return
    if str(path) == "-":
        raise click.BadParameter("'-' would be a file named '-'; give /dev/stdout to write to stdout (the summary "
                                 "then goes to stderr)", param_hint=option)
    existed = os.path.exists(path)  # False, not an error, for a name too long to look up
    if engine_dir is not None and existed:
        if any(same_file(path, engine_dir / name) for name in engine_set_files(engine_dir) or ()):
            raise click.BadParameter(f"{path} is a file of the engine set {engine_dir}; writing there would "
                                     f"destroy the set", param_hint=option)
    if engine_dir is not None and engine_dir.resolve() in path.resolve().parents:
        raise click.BadParameter(f"{path} is inside the engine set's folder {engine_dir}; write reports "
                                 f"beside it, not in it", param_hint=option)
    if existed and any(same_file(path, source) for source in inputs):
        raise click.BadParameter(f"{path} is a file this run reads (a checkpoint or an image); writing there "
                                 f"would destroy it", param_hint=option)
    if existed and path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=option)
    if existed and not path.is_file():
        return
    # checked where the report goes (write_output_file): for a link to a file not made yet, the file
    # it names, so that the trial file removed below is that file and never the user's link
    target = Path(os.path.realpath(path))
    created = missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create the folder for {path}: {os_error_text(exc)}",
                                 param_hint=option) from exc
    try:
        with open(target, "ab"):
            pass
        if not existed:
            target.unlink()
    except OSError as exc:
        # the name once, not twice
        reason = exc.strerror if exc.filename in (str(path), str(target)) else os_error_text(exc)
        raise click.BadParameter(f"cannot write {path}: {reason}", param_hint=option) from exc
    finally:
        # made again when the report is written: a run that fails before leaves no empty folders
        remove_empty_folders(created)


def files_a_run_reads(images_dir: Path | None, manifest: Manifest | None = None,
                      weights_dir: Path | None = None) -> list[Path]:
    """The files a run reads, which its reports must never overwrite: the images of
    ``images_dir`` (none where the folder cannot be scanned: the run itself says why) and, given
    the manifest of a run that rebuilds the fp32 reference (verify, bench --compare torch), the
    checkpoints it is rebuilt from. Call it after ``verify_files`` (the digest)."""
    from dfd.calibration.sources import ImageSourceError, scan_image_folder

    from .recorded_build import read_recorded_build

    files: list[Path] = []
    if images_dir is not None:
        try:
            files += scan_image_folder(images_dir).images
        except ImageSourceError:
            pass
    if manifest is not None:
        files += read_recorded_build(manifest).checkpoint_files(weights_dir)
    return files


def is_stdout(path: Path | None) -> bool:
    """Whether ``path`` is the file stdout writes to (``/dev/stdout``, ``/proc/self/fd/1``, or the
    file stdout is redirected to): a verb's text summary then goes to stderr, or ``--json
    /dev/stdout | jq`` read JSON followed by text."""
    if path is None:
        return False
    try:
        return os.path.samestat(os.stat(path), os.fstat(1))
    except OSError:
        return False


def write_output_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a report (``verify --json``, ``bench --json/--plot``) with ``write`` and put it in
    place only once it is whole: a full disk or an interrupt leaves the earlier file as it was, not
    a truncated one; the error names the file. A link is followed, so the file it names is
    replaced and the link kept; a device or pipe (``/dev/stdout``, ``/dev/null``, ``>(jq .)``) is
    written to as a stream: renaming a file over it replaced /dev/null for every program on the
    machine (as root), or sent nothing to the pipe's reader."""
    try:
        if path.exists() and not path.is_file():
            with open(path, "wb") as stream:
                write(stream)
        else:
            target = Path(os.path.realpath(path))
            target.parent.mkdir(parents=True, exist_ok=True)  # prepare_output_file removed what it made
            write_atomically(target, write)
    except OSError as exc:
        raise DfdError(f"cannot write {path}: {os_error_text(exc)}") from exc


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file or folder (False where either cannot be found)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def regular_file_output(stream: TextIO) -> tuple[int, os.stat_result, bool] | None:
    """(descriptor, its status, whether it appends) when ``stream`` writes to a regular file (a
    shell's ``>`` or ``>>``); None for a pipe, a terminal or a test's buffer."""
    try:
        fd = stream.fileno()
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        return fd, status, bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


class RowOutput:
    """Rows written to a text stream (``detect``'s stdout), each flushed, so a killed run keeps its
    rows, and each whole or absent: when a row cannot be written (a full disk, a file size limit)
    and the stream is a regular file, the file is cut back to the rows before it. A half-written
    CSV row with its score column complete read as a scored image to whatever parsed it later."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.rows = 0
        self._fd: int | None = None
        self._end = 0
        # appending (>>) to a file that already holds rows: its header is there already
        self.continues_file = False
        found = regular_file_output(stream)  # else nothing to cut back
        if found is not None:
            fd, _, appending = found
            try:
                stream.flush()
                # appending (>>), writes land at the end whatever the offset, which is 0 until the
                # first write: a cut back to it would erase the file's earlier contents
                self._fd, self._end = fd, os.fstat(fd).st_size if appending else os.lseek(fd, 0, os.SEEK_CUR)
                self.continues_file = appending and self._end > 0
            except (OSError, ValueError):
                pass
        # one encoder for the whole output, as the stream's own: a BOM (utf-8-sig, utf-16) once, at
        # the start of the file only
        encoding, errors = getattr(stream, "encoding", None), getattr(stream, "errors", None)
        self._encoder = codecs.getincrementalencoder(encoding or "utf-8")(errors or "strict")
        if self._end:
            self._encoder.setstate(0)

    def writes_to(self, path: Path) -> bool:
        """Whether the rows go to the file ``path`` (stdout redirected to it)."""
        if self._fd is None:
            return False
        try:
            return os.path.samestat(os.fstat(self._fd), os.stat(path))
        except OSError:
            return False

    def cut_to(self, size: int) -> None:
        """Before any row: cut the file back to its first ``size`` bytes (a killed run's cut-short
        last row, which the rows appended after it would otherwise continue)."""
        if self._fd is None or size >= self._end:
            return
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise DfdError(f"cannot cut the cut-short last row off the file stdout appends to: "
                           f"{os_error_text(exc)}") from exc
        self._end = size
        self.continues_file = size > 0

    def appended_file_ends(self, limit: int = 64 * 1024) -> tuple[bytes, bytes] | None:
        """(its first line, its last byte) when the rows are appended to a file holding some, read
        through /proc/self/fd (the shell opened it for writing only); None where that cannot be
        read (another system, a file the process may write but not read)."""
        if self._fd is None or not self.continues_file:
            return None
        try:
            reader = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            head = os.pread(reader, limit, 0)
            last = os.pread(reader, 1, self._end - 1)
        except OSError:
            return None
        finally:
            os.close(reader)
        return head.split(b"\n", 1)[0], last

    def write(self, text: str, counts: bool = True) -> None:
        """Write ``text`` (one row and its line end) and flush; ``counts``: a result row, not the header."""
        try:
            if self._fd is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                # straight to the file: Python's buffer takes a short write (the disk filled mid-row)
                # for progress and raises nothing, where the next os.write says why
                pending = memoryview(self._encoder.encode(text))
                while pending:
                    pending = pending[os.write(self._fd, pending):]
                self._end = os.lseek(self._fd, 0, os.SEEK_CUR)
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout has no name to give
            kept = self._cut_back()
            raise DfdError(f"cannot write the results to stdout: {os_error_text(exc)}"
                           + (f"; the file keeps the {self.rows} whole row(s) written before" if kept else "")) from exc
        if counts:
            self.rows += 1

    def _cut_back(self) -> bool:
        """Truncate the file to the last whole row, and send what is still buffered nowhere (the
        interpreter's flush at exit would write it after the cut). Whether the file was cut."""
        if self._fd is None:
            return False
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            return False
        finally:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
        return True


def engine_dir_argument(func: Callable) -> Callable:
    """ENGINE_DIR, the first argument of every verb that reads an engine set."""
    return click.argument("engine_dir", type=GivenPath())(func)


def flags_given(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """Which of these options the user typed (not defaults), as spelled on the command line."""
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
