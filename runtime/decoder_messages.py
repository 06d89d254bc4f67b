"""What the image libraries inside OpenCV write to the process's stderr while decoding, captured
so that it can be attached to the image it is about.

libjpeg ("Corrupt JPEG data: premature end of data segment") and libpng ("libpng error: IDAT:
invalid distance too far back") print their warnings and errors straight to file descriptor 2,
past OpenCV's log level and past Python. Left there they are unattributed lines in a service's
log and break into the CLI's progress bar; yet they are often the only sign that an image that
did decode is damaged (a JPEG corrupt in the middle decodes, with grey or smeared blocks).

``decoder_messages`` points descriptor 2 at an unlinked temporary file for the length of one
decode and returns what was written there. That is process-wide state: it is switched on
(``capturing_decoder_messages``) only by entry points that own their process and its stderr, the
CLI; decodes are then serialised by a lock, and the CLI's own writes to stderr wait for it
(``outside_decoder_captures``): images are prepared on several threads, and a progress bar
redrawn by one while another decodes landed in that image's notes. A line a library writes
straight to descriptor 2 from another thread during a decode still lands there (ONNX Runtime's
warnings; OpenCV's own log is silenced). The Python API and the C library leave the host's
stderr alone, where the lines stay as the libraries print them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_MAX_CAPTURED_BYTES = 1 << 16  # a file corrupt throughout makes libjpeg warn per damaged block
_lock = threading.RLock()  # reentrant: a decoding thread that writes to stderr itself takes it again
_enabled = False
_sink: int | None = None  # descriptor of an unlinked temporary file, made at the first capture


@contextmanager
def capturing_decoder_messages() -> Iterator[None]:
    """Within the block, ``decoder_messages`` captures what decoders print, for the whole process;
    afterwards it is as it was (a CLI command run in-process, as tests run it, leaves nothing
    switched on). Only for programs that own their stderr: while a decode runs, anything another
    thread writes to descriptor 2 lands in the capture, unless it waits in
    ``outside_decoder_captures`` (the CLI's stderr does; ``detect``'s preparation threads only
    decode, and take turns)."""
    global _enabled
    before, _enabled = _enabled, True
    try:
        yield
    finally:
        _enabled = before


def decoder_messages_captured() -> bool:
    """Whether ``decoder_messages`` captures now: a decode that makes libjpeg warn about bytes it
    put there itself (a probe) may run only then, or the warning reaches the host's stderr."""
    return _enabled


@contextmanager
def outside_decoder_captures() -> Iterator[None]:
    """Hold a write to stderr (from Python) until no decode is being captured, so it reaches
    stderr instead of an image's notes."""
    if not _enabled:
        yield
        return
    with _lock:
        yield


@contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """A list that, once the block has run, holds the lines written to descriptor 2 during it
    (empty, and nothing redirected, outside ``capturing_decoder_messages``)."""
    said: list[str] = []
    if not _enabled:
        yield said
        return
    with _lock:
        sink = _sink_descriptor()
        os.ftruncate(sink, 0)
        os.lseek(sink, 0, os.SEEK_SET)
        try:
            sys.stderr.flush()  # Python's own pending output belongs before the capture
        except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
            pass
        saved = os.dup(2)
        try:
            os.dup2(sink, 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        os.lseek(sink, 0, os.SEEK_SET)
        text = os.read(sink, _MAX_CAPTURED_BYTES).decode("utf-8", errors="replace")
    said.extend(line.strip() for line in text.splitlines() if line.strip())


def _sink_descriptor() -> int:
    global _sink
    if _sink is None:
        handle = tempfile.TemporaryFile()
        _sink = os.dup(handle.fileno())  # the descriptor outlives the file object; the file has no name
        handle.close()
    return _sink
