"""How verbs end: a reader that closes stdout early ends the verb quietly, as SIGPIPE would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dfd.export.cli_errors import termination_interrupts


def test_closed_stdout_ends_quietly_with_the_sigpipe_status(tiny_engine_set):
    """``dfd-export inspect SET | head -0``: the read end is closed before the verb writes."""
    command = [sys.executable, "-m", "dfd.export.cli", "inspect", str(tiny_engine_set)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + 13, stderr
    assert "error" not in stderr.lower() and "Traceback" not in stderr, stderr


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
