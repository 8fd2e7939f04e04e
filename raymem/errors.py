"""The one exception type for errors a user can cause.

Its message is one sentence that names the input and the fix; the CLI prints it and exits
non-zero. Anything else that escapes is a bug in raymem.
"""


class RaymemError(Exception):
    """An error caused by the user's input (a file, a flag, a config, a run directory)."""
