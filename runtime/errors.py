"""The project's one exception root.

Every error a user can cause (bad image, bad engine set, bad checkpoint, bad flag combination)
derives from ``DfdError``, so the CLI and the C ABI can turn exactly those into a readable
message and treat anything else as a bug.
"""

import errno
import os
from collections.abc import Callable


class DfdError(Exception):
    """An error the user can act on; its message says what is wrong and what to do."""


def first_few(names: list[str], limit: int = 5, separator: str = ", ") -> str:
    """``names`` for a one-line message: the first ``limit``, then how many more. (Warnings that
    list files keep to one readable line however many there are.)"""
    return separator.join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def attempt_release(failures: list[BaseException], release: Callable[[], object]) -> None:
    """Call ``release``; its failure is added to ``failures`` instead of raised, so that the
    releases after it still run, and the caller raises the first once all are done. After a GPU
    kernel fault every call on the context fails: a close that stopped at the first (a
    synchronize) left all the memory, streams and events behind. An interrupt is held too, and
    raised after the releases (`raise_held`)."""
    try:
        release()
    except BaseException as exc:  # noqa: BLE001 - kept, and raised once everything else is released
        failures.append(exc)


def raise_held(failures: list[BaseException]) -> None:
    """Raise what `attempt_release` held, once every release has run: an interrupt (Ctrl-C,
    SystemExit) before any error, since a close after a GPU fault always fails first with a CUDA
    error and the user's Ctrl-C must still stop the program; otherwise the first error, since a
    later one may only follow from it."""
    if failures:
        raise next((exc for exc in failures if not isinstance(exc, Exception)), failures[0])


_stop_requested = False


def note_stop_request() -> None:
    """Record that the user asked the process to stop (Ctrl-C, SIGTERM, SIGHUP), before the
    interrupt is raised: raised inside a weakref callback or a destructor, Python only prints it
    ("Exception ignored") and the run goes on, which the record lets the CLI still report."""
    global _stop_requested
    _stop_requested = True


def stop_requested() -> bool:
    """Whether a stop was asked for and not dealt with (``stop_request_handled``)."""
    return _stop_requested


def stop_request_handled() -> None:
    """The code that caught the interrupt dealt with it on purpose (a build whose new set is in
    place finishes deleting the old one later), or a new run begins: no stop is pending."""
    global _stop_requested
    _stop_requested = False


def os_error_text(exc: OSError) -> str:
    """An OSError as a user reads it: what failed on which path, without "[Errno 17]". Creating
    a folder where a file (or a link to nothing) stands raises FileExistsError naming it, which
    "File exists" alone does not explain."""
    if isinstance(exc, FileExistsError):
        dangling = dangling_link_text(exc.filename) if exc.filename is not None else None
        return dangling or f"{exc.filename} is a file, not a folder"
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def dangling_link_text(path: str | os.PathLike) -> str | None:
    """What a link that leads nowhere is, said of ``path`` ("a link to X, which does not exist",
    or a loop); None where ``path`` is no such link. Creating a folder there fails as if a file
    stood in the way."""
    if not os.path.islink(path) or os.path.exists(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a link that leads back to itself (a loop)"
    return f"{path} is a link to {os.readlink(path)}, which does not exist"
