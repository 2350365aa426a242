"""User-facing errors: one line that says where (file, line or sentence) and what is wrong.

The CLI prints ``Error: <message>`` for these and exits with status 1, never a traceback.
"""

from __future__ import annotations


class StructkdError(Exception):
    """A problem the user can fix (bad input, bad params, corrupt cache); message is one line."""


class InputError(StructkdError):
    """Bad input data, located at ``where`` (``path:line``, ``path``, or ``path: sentence N``)."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Rebuild from (where, problem): errors travel back from dask workers pickled."""
        return (type(self), (self.where, self.problem))


class ConfigError(StructkdError):
    """Bad ``params.yaml`` content or command-line settings."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name if empty): what a one-line error
    that wraps a library's exception quotes of it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
