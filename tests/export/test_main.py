"""The console script's entry: an interrupt while the command line is still being imported ends as
an interrupted verb does, not in Python's KeyboardInterrupt traceback."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

# stands in for a Ctrl-C that lands while Python imports the CLI module (click, NumPy, OpenCV):
# the finder raises where the signal handler would, at the import of dfd.export.cli
_INTERRUPTED_IMPORT = """
import sys

class InterruptedImport:
    def find_spec(self, name, path=None, target=None):
        if name == "dfd.export.cli":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, InterruptedImport())
sys.argv = ["dfd-export", "inspect", "engines/fp32"]
from dfd.export.__main__ import main
main()
"""


def _run_entry(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)


def test_interrupt_while_the_cli_is_imported_is_an_interrupted_run():
    run = _run_entry(_INTERRUPTED_IMPORT)
    assert run.returncode == 130, run.stderr
    assert run.stderr == "error: interrupted\n"
    assert run.stdout == ""


def test_interrupt_while_the_cli_is_imported_with_stderr_closed_still_exits_130():
    """``dfd-export … 2>&-``: Python starts with no sys.stderr; the status alone says it."""
    run = subprocess.run(["/bin/sh", "-c", f'exec "{sys.executable}" -c "$0" 2>&-', _INTERRUPTED_IMPORT],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130
    assert run.stdout == ""


def test_the_console_script_runs_the_guarded_entry():
    """The guard only helps if ``dfd-export`` is installed to start there, not at the CLI module."""
    (script,) = [entry for entry in importlib.metadata.entry_points(group="console_scripts")
                 if entry.name == "dfd-export"]
    assert script.value == "dfd.export.__main__:main"


def test_python_dash_m_runs_the_command_line():
    run = subprocess.run([sys.executable, "-m", "dfd.export", "inspect", "/nonexistent/set"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines()[-1] == "error: engine set folder not found: /nonexistent/set"


def test_interrupt_while_the_cli_is_imported_with_stderr_closed_by_python_still_exits_130():
    """A closed ``sys.stderr`` object (writing raises ValueError) is as quiet as no stderr."""
    run = _run_entry("import sys; sys.stderr.close()\n" + _INTERRUPTED_IMPORT)
    assert run.returncode == 130, run.stderr
    assert run.stdout == ""
