"""The exceptions that mean "bad input", as opposed to a bug.

The command line prints a :class:`UserError` as one line (``brainlm CMD: error: ...``) and
exits with status 2; every other exception keeps its traceback, so real bugs stay visible.
Each subclass also derives from the built-in exception a Python caller would expect
(``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.

Messages name the file and the command-line flag involved (``--coords``, ``--overwrite``),
because that is what the user can change.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "InputError",
    "MissingInputError",
    "OutputExistsError",
    "OutputLockedError",
    "CorruptFileError",
    "HubUnavailableError",
]


class UserError(ValueError):
    """Bad input: a value, a file or a combination of flags that cannot be used."""

    def one_line(self) -> str:
        """The message on one line (multi-line details joined with ``; ``)."""
        return "; ".join(part.strip() for part in str(self).splitlines() if part.strip())


class InputError(UserError):
    """A bad input file; the message starts with the file name."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder given as input does not exist or holds nothing usable."""


class OutputExistsError(UserError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""


class OutputLockedError(UserError):
    """Another process is writing the same output folder."""


class CorruptFileError(UserError):
    """A stored file does not match its manifest (size or SHA-256), or cannot be parsed."""


class HubUnavailableError(MissingInputError):
    """A Hugging Face Hub id that is not a local folder, not in the local hub cache, and cannot be fetched."""
