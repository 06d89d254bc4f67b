"""How verbs end: a reader that closes stdout early ends the verb quietly, as SIGPIPE would; an
error's line and warnings cannot be split or drive the terminal by the file names they hold."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import click
import pytest
from click.testing import CliRunner

from conftest import write_grey_images
from dfd.export.cli_errors import handles_errors, termination_interrupts, warn
from dfd.runtime.errors import DfdError


def test_closed_stdout_ends_quietly_with_the_sigpipe_status(tiny_engine_set):
    """``dfd-export inspect SET | head -0``: the read end is closed before the verb writes."""
    command = [sys.executable, "-m", "dfd.export.cli", "inspect", str(tiny_engine_set)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + 13, stderr
    assert "error" not in stderr.lower() and "Traceback" not in stderr, stderr


def test_closed_stderr_loses_no_row_and_no_copy(tiny_engine_set, tmp_path):
    """Started with ``2>&-``: degrade's first file opened became descriptor 2, where decoder-message
    capture swaps its sink in and back, and every copy failed ("Bad file descriptor") without a
    word; detect's progress bar, with no stream to draw on, ended the run before its first row."""
    images = tmp_path / "images"
    write_grey_images(images)  # detect draws its progress from 16 images
    (images / "16.png").write_bytes(b"not an image")
    cli = [sys.executable, "-m", "dfd.export.cli"]

    def closed_stderr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(cli + list(args), stdout=subprocess.PIPE, text=True, timeout=300,
                              preexec_fn=lambda: os.close(2))

    degraded = closed_stderr("degrade", str(images), "--out", str(tmp_path / "copies"), "--fixed", "jpeg10")
    assert degraded.returncode == 2 and len(degraded.stdout.splitlines()) == 16, degraded.stdout
    copies = sorted((tmp_path / "copies").glob("*.png"))
    assert [copy.name for copy in copies] == [f"{index:02d}.png" for index in range(16)]
    assert all(cv2.imread(str(copy)).shape == (64, 64, 3) for copy in copies)
    detected = closed_stderr("detect", str(tiny_engine_set), str(images), "--format", "jsonl", "--no-face-detect")
    rows = [json.loads(line) for line in detected.stdout.splitlines()]
    assert detected.returncode == 2 and len(rows) == 17 and [row["error"] is None for row in rows] == [True] * 16 + [False]


def test_a_gone_reader_of_stderr_loses_no_row(tiny_engine_set, tmp_path):
    """``detect ... 2>&1 >rows.jsonl | grep -m1 WARNING``: the first write to stderr after grep
    ended raised EPIPE, which ended the run as if stdout's reader had gone (exit 141, no rows)."""
    images = tmp_path / "images"
    write_grey_images(images)
    rows = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "dfd.export.cli", "detect", str(tiny_engine_set), str(images), "--format", "jsonl",
               "--no-face-detect", "--batch-size", "1"]
    with open(rows, "w") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE)
        process.stderr.close()  # the reader is gone before the first line
        assert process.wait(timeout=300) == 0
    assert [json.loads(line)["error"] for line in rows.read_text().splitlines()] == [None] * 16


def test_a_stop_signal_before_the_work_ends_as_ctrl_c_does(tiny_engine_set, tmp_path):
    """SIGTERM while detect opened its engine set (hashing every file: 15 GB at paper size) killed
    it outright (status -15, nothing said): the signal was caught only around the scoring loop."""
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 80, np.uint8))
    script = ("import os, signal\n"
              "from dfd.runtime import detector\n"
              "def open_signalled(*args, **kwargs):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "detector.Detector.open = open_signalled\n"
              "from dfd.export.cli import main\n"
              f"main(['detect', {str(tiny_engine_set)!r}, {str(image)!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr.splitlines()[-1] == "error: interrupted", (done.returncode,
                                                                                            done.stderr)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the interrupt it swallowed
def test_a_stop_signal_swallowed_where_it_was_raised_still_ends_in_130(tiny_engine_set, tmp_path, monkeypatch):
    """A signal landing in a weakref callback (torch's, during a build's export) raised there,
    where Python only prints "Exception ignored": the build went on and exited 0."""
    import weakref

    from dfd.export.cli import main
    from dfd.runtime.detector import Detector

    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64, 3), 80, np.uint8))
    (tmp_path / "b.png").write_bytes(b"")  # a failed image: detect would exit 2
    scored = Detector.detections

    def signalled_in_a_callback(self, *args, **kwargs):
        class Dropped:
            pass

        dropped = Dropped()
        weakref.finalize(dropped, lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1)))
        del dropped  # the callback runs here; the interrupt raised in it is printed, not raised
        return scored(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "detections", signalled_in_a_callback)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--format", "jsonl"])
    assert result.exit_code == 130, result.output
    assert len(result.stdout.splitlines()) == 2  # the rows, whole
    assert result.stderr.splitlines()[-1] == "error: interrupted, though the run went on to its end"


def test_an_interrupt_turned_into_another_error_is_an_interrupt(capsys):
    """onnxruntime's import, interrupted, raises "ImportError: initialization failed" from the
    KeyboardInterrupt: a traceback and exit 1."""

    @handles_errors
    def imports():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    with pytest.raises(SystemExit) as ended:
        imports()
    assert ended.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_an_interrupt_while_the_arguments_are_read_is_an_interrupt(tiny_engine_set, monkeypatch):
    """click turns it into Abort, which printed "Aborted!" and exited 1, a usage error's status."""
    from dfd.export import cli_types
    from dfd.export.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_types.GivenPath, "convert", interrupted)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), "x.png"])
    assert result.exit_code == 130 and result.stderr.endswith("error: interrupted\n"), result.output


def test_names_in_inspect_and_doctor_errors_do_not_drive_the_terminal(tmp_path):
    """inspect's "not an engine set" error and doctor's engine line wrote a folder's name raw: an
    escape sequence in it turned the terminal red (doctor's line also broke at a line break)."""
    from dfd.export.cli import main

    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "no\x1b[31mdir")])
    assert inspected.exit_code == 3
    assert inspected.stderr == f"error: engine set folder not found: {tmp_path}/no\\x1b[31mdir\n"
    doctored = CliRunner().invoke(main, ["doctor", str(tmp_path / "no\x1b[31m\ndir")])
    assert "\x1b" not in doctored.output and f"{tmp_path}/no\\x1b[31m\\ndir: " in doctored.output


@pytest.mark.parametrize("environment", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colour_where_asked_or_where_the_terminal_has_none(environment, monkeypatch):
    @click.command()
    @handles_errors
    def verb():
        warn("a warning")

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert "\x1b[" in CliRunner().invoke(verb, [], color=True).stderr  # a terminal that shows colour
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert CliRunner().invoke(verb, [], color=True).stderr == "WARNING: a warning\n"


def test_usage_errors_end_in_an_error_line_as_every_failure_does():
    """click's "Error: No such option" was the one failure ``grep '^error:'`` missed."""
    from dfd.export.cli import main

    result = CliRunner().invoke(main, ["detect", "--bogus"])
    assert result.exit_code == 1
    assert result.stderr == ("Usage: main detect [OPTIONS] ENGINE_DIR IMAGES...\nTry 'main detect --help' for help.\n\n"
                             "error: No such option '--bogus'.\n")
    bare = CliRunner().invoke(main, [])  # no verb: the help, as before
    assert bare.exit_code == 1 and "Typical flow:" in bare.output and "error" not in bare.output


def test_a_verb_run_on_its_own_catches_stop_signals_too(tmp_path, photographs):
    """A verb invoked as a click command of its own, not through ``main``: SIGTERM killed it (143),
    leaving degrade's hidden partial copy behind."""
    cv2.imwrite(str(tmp_path / "a.png"), photographs["coffee"])
    out = tmp_path / "out"
    script = ("import os, signal\n"
              "import dfd.runtime.atomic_files as atomic\n"
              "def fsync(handle):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "atomic.os.fsync = fsync\n"
              "from dfd.export.degrade_cli import degrade\n"
              f"degrade.main([{str(tmp_path / 'a.png')!r}, '--out', {str(out)!r}, '--fixed', 'blur3'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr.splitlines()[-1] == "error: interrupted", done.stderr
    assert not out.exists()


def test_an_error_met_while_handling_an_interrupt_keeps_its_message(capsys):
    """Only an error raised *from* an interrupt is one: a failed rename while a build put the old
    set back would have read "interrupted", hiding where the old set was left."""

    @handles_errors
    def cleanup_fails():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise DfdError("could not put the old set back; it is in .set.replaced")

    with pytest.raises(SystemExit) as ended:
        cleanup_fails()
    assert ended.value.code == 1
    assert capsys.readouterr().err == "error: could not put the old set back; it is in .set.replaced\n"


@pytest.mark.parametrize("number", [errno.EPIPE, errno.EIO])
def test_stderr_outlives_a_gone_reader_or_a_hung_up_terminal(number, monkeypatch):
    """EIO: SIGHUP after the terminal closed, whose "error: interrupted" itself failed (exit 1,
    a traceback)."""
    from dfd.export import cli_errors

    class Gone(io.StringIO):
        def write(self, text):
            raise OSError(number, os.strerror(number))

    pointed = []
    monkeypatch.setattr(cli_errors, "_point_at_devnull", pointed.append)
    stream = cli_errors._StderrOutlivingItsReader(Gone())
    assert stream.write("error: interrupted\n") == len("error: interrupted\n") and pointed == [2]
    other = cli_errors._StderrOutlivingItsReader(type("Full", (io.StringIO,), {
        "write": lambda self, text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))})())
    with pytest.raises(OSError):
        other.write("x")


_WRITE_DURING_ANOTHER_THREADS_DECODE = """
import json, os, sys, threading
from dfd.export.cli_errors import steady_standard_streams
from dfd.runtime.decoder_messages import capturing_decoder_messages, decoder_messages
steady_standard_streams()
inside, written = threading.Event(), threading.Event()

def progress_bar_redraw():
    inside.wait()
    sys.stderr.write("detect: 3/32 (9%)\\n")
    written.set()

with capturing_decoder_messages():
    thread = threading.Thread(target=progress_bar_redraw)
    thread.start()
    with decoder_messages() as said:
        os.write(2, b"Corrupt JPEG data\\n")
        inside.set()
        written.wait(1)  # held back until the capture ends; without the hold it would be in it
    thread.join()
print(json.dumps(said))
"""


@pytest.mark.parametrize("stderr", ["open", "closed"])
def test_a_line_written_while_another_thread_decodes_stays_out_of_its_notes(stderr):
    """Images are prepared on several threads: detect's progress bar, redrawn while a worker
    decoded, became a note of that image (with stderr closed too: it goes to /dev/null)."""
    shell = f'exec "{sys.executable}" -c "$0"' + (" 2>&-" if stderr == "closed" else "")
    run = subprocess.run(["/bin/sh", "-c", shell, _WRITE_DURING_ANOTHER_THREADS_DECODE],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["Corrupt JPEG data"]
    assert run.stderr == ("detect: 3/32 (9%)\n" if stderr == "open" else "")


def test_running_out_of_memory_is_one_line_not_a_traceback():
    @click.command()
    @handles_errors
    def allocates():
        raise MemoryError("Unable to allocate 6.93 TiB for an array with shape (10000000, 3, 252, 252)")

    result = CliRunner().invoke(allocates, [])
    assert result.exit_code == 1
    assert result.output == ("error: out of memory (Unable to allocate 6.93 TiB for an array with shape "
                             "(10000000, 3, 252, 252)); this machine cannot hold what the command was asked to do\n")


def test_a_verb_whose_results_go_to_stdout_refuses_to_run_without_one(tiny_engine_set, tmp_path, photographs):
    """``dfd-export inspect SET >&-`` (or doctor) printed nothing and exited 0: click writes nothing
    to a missing stdout. degrade wrote its copies without the lines saying which file became which."""
    cv2.imwrite(str(tmp_path / "a.png"), photographs["coffee"])
    degrade = ["degrade", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--fixed", "blur3"]
    for verb in (["inspect", str(tiny_engine_set)], ["doctor"], degrade):
        run = subprocess.run([sys.executable, "-m", "dfd.export.cli", *verb], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=300)
        assert run.returncode == 1, (verb, run.stderr)
        assert run.stderr.splitlines()[-1] == "error: stdout is closed, so the results cannot be written; redirect it to a file"
    assert not (tmp_path / "out").exists()


def test_verify_with_a_report_file_runs_without_stdout(tiny_engine_set, tmp_path, photographs):
    """``verify SET --json report.json >&-`` (a cron job) was refused though the report keeps the
    results; its summary now goes to stderr. The report file does not take stdout's descriptor."""
    cv2.imwrite(str(tmp_path / "a.png"), photographs["coffee"])
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "dfd.export.cli", "verify", str(tiny_engine_set), "--images",
                          str(tmp_path), "--json", str(report)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: os.close(1), timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(report.read_text())["passed"] and "vote agreement 100.00%" in run.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_stdout_that_refuses_writes_is_named_and_the_report_files_are_kept(tiny_engine_set, tmp_path):
    """``> /dev/full`` (a full disk under ``> report.txt``) said only "error: No space left on
    device", as if the verb's own work had failed; verify and bench printed their summary before
    writing --json/--plot, so the failed print lost the report of the whole run."""
    cli = [sys.executable, "-m", "dfd.export.cli"]
    reports = {"verify": tmp_path / "v.json", "bench": tmp_path / "b.json", "plot": tmp_path / "b.png"}
    verbs = [["inspect", str(tiny_engine_set)], ["doctor", "--json"],
             ["verify", str(tiny_engine_set), "--json", str(reports["verify"])],
             ["bench", str(tiny_engine_set), "--batch-sizes", "1", "--warmup", "0", "--iterations", "1",
              "--json", str(reports["bench"]), "--plot", str(reports["plot"])]]
    with open("/dev/full", "w") as full:
        for verb in verbs:
            run = subprocess.run(cli + verb, stdout=full, stderr=subprocess.PIPE, text=True, timeout=600)
            assert run.returncode == 1, (verb, run.stderr)
            assert run.stderr.splitlines()[-1] == "error: cannot write the results to stdout: No space left on device"
    assert json.loads(reports["verify"].read_text())["passed"]
    assert json.loads(reports["bench"].read_text())["runs"]["runtime"]["batches"]["1"]
    assert reports["plot"].read_bytes()[:4] == b"\x89PNG"

    @click.command()
    @handles_errors
    def writes_elsewhere():  # an error that names no file, from anything but stdout, stays as it was
        raise OSError(28, "No space left on device")

    assert CliRunner().invoke(writes_elsewhere, []).output == "error: No space left on device\n"


def test_names_the_locale_cannot_encode_are_escaped_or_written_as_utf8(tiny_engine_set, photographs, tmp_path):
    """Under an ASCII (or latin-1) stdout an "ü" in a file name ended detect's table and csv with a
    UnicodeEncodeError traceback, losing the rows after it. The table shows an escape; csv and
    jsonl are data, read back as UTF-8 (--skip-scored, --face-boxes), and written so."""
    cv2.imwrite(str(tmp_path / "m\u00fcller.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    rows = {}
    for fmt in ("table", "csv", "jsonl"):
        run = subprocess.run([sys.executable, "-m", "dfd.export.cli", "detect", str(tiny_engine_set), "m\u00fcller.png",
                              "--no-face-detect", "--format", fmt], capture_output=True, cwd=tmp_path, timeout=300,
                             env={**os.environ, "PYTHONIOENCODING": "ascii"})
        assert run.returncode == 0, run.stderr.decode()
        rows[fmt] = run.stdout.decode("utf-8").splitlines()[1 if fmt != "jsonl" else 0]
    assert rows["table"].startswith("m\\xfcller.png  score ")
    assert rows["csv"].startswith("m\u00fcller.png,") and '"image": "m\\u00fcller.png"' in rows["jsonl"]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_termination_signals_interrupt_as_ctrl_c_unless_ignored(name):
    """SIGHUP (an ssh session or terminal closed) killed a build outright, leaving its staging
    folder, lock and INT8 work folder (gigabytes at paper size); under nohup it stays ignored."""
    number = getattr(signal, name)
    before = signal.getsignal(number)  # SIG_IGN when the tests themselves run under nohup
    try:
        signal.signal(number, signal.SIG_DFL)
        with pytest.raises(KeyboardInterrupt):
            with termination_interrupts():
                os.kill(os.getpid(), number)
                time.sleep(5)  # the handler runs at the next bytecode; this is never waited out
        assert signal.getsignal(number) == signal.SIG_DFL
        signal.signal(number, signal.SIG_IGN)
        with termination_interrupts():
            os.kill(os.getpid(), number)
        assert signal.getsignal(number) == signal.SIG_IGN
    finally:
        signal.signal(number, before)


def _terminated_when(command: list[str], ready, timeout: float = 300) -> tuple[int, str]:
    """Run ``command``, send SIGTERM once ``ready(stderr so far)`` holds; its status and stderr."""
    import selectors

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    stderr, deadline = b"", time.monotonic() + timeout
    while not ready(stderr.decode(errors="replace")) and time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.05):
            stderr += os.read(process.stderr.fileno(), 65536)
    assert process.poll() is None, f"it ended before it was ready: {stderr.decode(errors='replace')}"
    assert ready(stderr.decode(errors="replace")), "it was not ready before the deadline"
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=120)[1]
    return process.returncode, (stderr + rest).decode(errors="replace")


def test_sigterm_ends_detect_and_verify_as_ctrl_c_does(tiny_engine_set, photographs, tmp_path):
    """detect and verify died of SIGTERM (``timeout``, a service manager) with status 143 and no
    word, while build, degrade and bench stop as on Ctrl-C; detect keeps every row whole."""
    images = tmp_path / "images"
    images.mkdir()
    for index in range(200):
        cv2.imwrite(str(images / f"{index:03d}.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    rows = tmp_path / "rows.jsonl"
    cli = [sys.executable, "-m", "dfd.export.cli"]
    detect = cli + ["detect", str(tiny_engine_set), str(images), "--format", "jsonl", "--batch-size", "1",
                    "--no-face-detect"]
    with open(rows, "w") as stdout:
        process = subprocess.Popen(detect, stdout=stdout, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while process.poll() is None and rows.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "detect ended before its first row"
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130 and stderr.splitlines()[-1] == "error: interrupted", stderr
    scored = [json.loads(line) for line in rows.read_text().splitlines()]  # every row whole
    assert 0 < len(scored) < 200 and all(row["error"] is None for row in scored)
    status, stderr = _terminated_when(cli + ["verify", str(tiny_engine_set), "--images", str(images)],
                                      lambda text: "verify:" in text)
    assert status == 130 and stderr.splitlines()[-1] == "error: interrupted", stderr


def test_an_interrupted_detect_ends_its_progress_bar_before_the_error(tiny_engine_set, tmp_path, monkeypatch):
    """The bar was left open when a run stopped, so "error: interrupted" was glued to its last
    line in a log file (stderr not a terminal), where `grep '^error:'` missed it."""
    from click.testing import CliRunner

    from dfd.export.cli import main
    from dfd.runtime.detector import Detector

    write_grey_images(tmp_path, side=256)  # the bar is drawn from 16 images
    score = Detector._score

    def interrupted_on_the_second_batch(self, prepared):
        if prepared[0].detection.image.endswith("08.png"):
            raise KeyboardInterrupt
        return score(self, prepared)

    monkeypatch.setattr(Detector, "_score", interrupted_on_the_second_batch)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--batch-size", "8",
                                       "--format", "jsonl"])
    assert result.exit_code == 130, result.output
    assert re.search(r"\ndetect: 8/16 \(50%\)[^\r\n]*\nerror: interrupted\n$", result.output), result.output


def _interrupted_in_its_constructor(bar_class: type, **kwargs) -> None:
    """Run a verb whose progress bar (of ``bar_class``) is interrupted right after its
    constructor's first drawing, before the ``with`` that closes it took hold; it exits 130."""

    class SignalledOnceDrawn(bar_class):
        def refresh(self, *args, **kwargs):  # the constructor's first drawing
            super().refresh(*args, **kwargs)
            raise KeyboardInterrupt

    @handles_errors
    def interrupted_in_the_constructor():
        with SignalledOnceDrawn(total=200, desc="verify", unit="img", **kwargs):
            pytest.fail("the constructor was not interrupted")

    with pytest.raises(SystemExit) as ended:
        interrupted_in_the_constructor()
    assert ended.value.code == 130


def test_a_bar_interrupted_before_its_with_took_hold_is_ended_before_the_error(capsys):
    """SIGTERM right after tqdm's constructor drew the bar (verify's, the instant "verify:" showed)
    came before the ``with`` that closes it: the error was glued to the bar's line in a log."""
    from tqdm import tqdm

    _interrupted_in_its_constructor(tqdm, file=sys.stderr)
    stderr = capsys.readouterr().err
    assert re.search(r"\rverify:   0%\|[^\r\n]*\| 0/200 \[[^\r\n]*\]\nerror: interrupted\n$", stderr), repr(stderr)


def test_a_log_progress_interrupted_in_its_constructor_adds_no_blank_line(capsys):
    """A log's progress line ends itself: the line break added for a bar cut short in its
    constructor would leave an empty line before the error."""
    from dfd.runtime.progress import LoggedProgress

    _interrupted_in_its_constructor(LoggedProgress)
    assert capsys.readouterr().err == "verify: 0/200 (0%)\nerror: interrupted\n"


def test_a_failed_build_ends_its_progress_bar_before_the_error(reference_ensemble, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from conftest import LORA_ALPHA, LORA_R
    from dfd.export import build as build_module
    from dfd.export.build import BuildError
    from dfd.export.cli import main

    def fails(*args, **kwargs):
        raise BuildError("the disk is on fire")

    monkeypatch.setattr(build_module, "export_stream_onnx", fails)
    result = CliRunner().invoke(main, ["build", "--weights-dir", str(reference_ensemble.weights_dir), "--models-dir",
                                       str(reference_ensemble.models_dir), "--out", str(tmp_path / "set"),
                                       "--lora-r", str(LORA_R), "--lora-alpha", str(LORA_ALPHA),
                                       "--streams", "global"])
    assert result.exit_code == 1, result.output
    assert re.search(r"\nbuild global: export ONNX [^\r\n]*: 0/1 \(0%\)\nerror: the disk is on fire", result.output), \
        result.output


def test_errors_and_warnings_escape_what_a_file_name_may_hold():
    """A warning is always one line. An error keeps the line breaks it was written with (a
    checkpoint's list of mismatches), so a name's own line break breaks it too, and escapes every
    other control character and undecodable byte (surrogate): no escape sequence reaches the terminal."""

    @click.command()
    @click.argument("what")
    @handles_errors
    def verb(what):
        name = "bad\x1b[31m\nname\udcff.png"
        if what == "warn":
            warn(f"left out {name}")
        else:
            raise DfdError(f"cannot use {name}:\n  first reason\n  second reason")

    warned = CliRunner().invoke(verb, ["warn"])
    assert warned.exit_code == 0 and warned.stderr == "WARNING: left out bad\\x1b[31m\\nname\\udcff.png\n"
    failed = CliRunner().invoke(verb, ["fail"])
    assert failed.exit_code == 1
    assert failed.stderr == "error: cannot use bad\\x1b[31m\nname\\udcff.png:\n  first reason\n  second reason\n"
