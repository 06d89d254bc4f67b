"""How verbs end: a reader that closes stdout early ends the verb quietly, as SIGPIPE would."""

from __future__ import annotations

import subprocess
import sys


def test_closed_stdout_ends_quietly_with_the_sigpipe_status(tiny_engine_set):
    """``dfd-export inspect SET | head -0``: the read end is closed before the verb writes."""
    command = [sys.executable, "-m", "dfd.export.cli", "inspect", str(tiny_engine_set)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + 13, stderr
    assert "error" not in stderr.lower() and "Traceback" not in stderr, stderr
