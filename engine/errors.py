"""The engine's errors: what the user can fix, apart from what is a bug.

Every error the engine raises on purpose derives from :class:`WorkbenchError`, and its message is written for
the person who sent the request: what was wrong and what is valid. Those are *user errors*: the UI shows the
message as it is, the server logs one line, and nothing else changes. Anything else that escapes (a
``RuntimeError`` from torch, an ``IndexError``) is a *bug*: the UI logs it with its traceback and tells the user
only that something went wrong, without internal text (paths, tensor shapes, library internals).

The user errors also derive from the built-in class a Python caller would expect (``ValueError`` for bad
values, ``RuntimeError`` for a model that cannot be loaded), so ``except ValueError`` keeps working.

>>> issubclass(UnknownChoiceError, ValueError) and issubclass(UnknownChoiceError, WorkbenchError)
True
>>> str(UnknownChoiceError("metric", "ld", ("logit_difference", "probability")))
"unknown metric 'ld'; valid: logit_difference, probability"
"""

from __future__ import annotations

from collections.abc import Iterable


class WorkbenchError(Exception):
    """Base of every error the engine raises on purpose; its message is meant for the user."""


class UserInputError(WorkbenchError, ValueError):
    """A value the user gave is wrong (an unknown latent, an empty label list, an absurd strength, ...)."""


class UnknownChoiceError(UserInputError):
    """A name that is not one of the valid choices; the message lists them."""

    def __init__(self, what: str, value: object, valid: Iterable[object]):
        self.what, self.value, self.valid = what, value, tuple(valid)
        super().__init__(f"unknown {what} {value!r}; valid: {', '.join(str(v) for v in self.valid)}")


class ModelUnavailableError(WorkbenchError, RuntimeError):
    """The model cannot be loaded here (not cached and not fetchable); the message says how to provide it."""


class SAEFormatError(UserInputError):
    """A file or directory that is not an SAE the engine can read, or one that does not fit the model; the
    message says what was found."""


class PathNotAllowedError(UserInputError):
    """A local path outside every directory the operator allowed."""


USER_ERRORS: tuple[type[BaseException], ...] = (WorkbenchError, ValueError, KeyError, FileNotFoundError)
"""What counts as the user's mistake at the UI boundary: the engine's own errors, and the built-in ones that
parsing the user's values raises."""
