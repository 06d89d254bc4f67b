"""The project's one exception root.

Every error a user can cause (bad image, bad engine set, bad checkpoint, bad flag combination)
derives from ``DfdError``, so the CLI and the C ABI can turn exactly those into a readable
message and treat anything else as a bug.
"""


class DfdError(Exception):
    """An error the user can act on; its message says what is wrong and what to do."""
