"""``dfd-export``'s entry point: the console script and ``python -m dfd.export``.

Loading the command line imports click, NumPy and OpenCV: about 0.15 s before the CLI catches
any stop signal. A Ctrl-C in that time ended in Python's KeyboardInterrupt traceback. The import
is guarded here, so an interrupt during it ends as an interrupted verb does: ``error:
interrupted``, exit 130. This module imports nothing heavy itself, which keeps the unguarded
time to the interpreter's own start.
"""

from __future__ import annotations

import sys

INTERRUPTED_EXIT = 130


def main() -> None:
    """Import the command line under guard, then run it."""
    try:
        from dfd.export.cli import main as command_line
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(INTERRUPTED_EXIT)
    command_line()


def _say_interrupted() -> None:
    """The CLI's own error line, written without it: stderr may be closed (``2>&-``) or its
    reader gone, and the exit status says it all then."""
    try:
        if sys.stderr is not None:
            sys.stderr.write("error: interrupted\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
