"""The one exception type for errors a user can cause.

Its message is one sentence that names the input and the fix. A library check names the Python parameter it
refused (``parameter="min_infl"``, and the message says ``min_infl``); the CLI shows the same sentence with its own
flag in the parameter's place (``--min-infl``), so each check is written once, at the API boundary.
"""

from __future__ import annotations


class RaymemError(Exception):
    """An error caused by the user's input (a file, a flag, a config, a run directory).

    Attributes:
        parameter: the API parameter the message names, if the error is about one argument (else None).
    """

    def __init__(self, message: str, *, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter

    def naming(self, flag: str) -> str:
        """The message with ``flag`` (a CLI option such as ``--min-infl``) in place of the parameter's name."""
        message = str(self)
        if not self.parameter:
            return message
        return message.replace(self.parameter, flag, 1)


class RaymemWarning(UserWarning):
    """Something a user should know that does not stop the command (a damaged trial file skipped by a read).

    The CLI prints it as one line, ``warning: <sentence>``, on stderr.
    """
