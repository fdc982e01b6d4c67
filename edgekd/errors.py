"""User-facing errors: each names its culprit and maps to exit code 2 in the CLI."""

from __future__ import annotations


def reason(exc: BaseException) -> str:
    """An exception's kind and first line, short enough to end a one-line message."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EdgekdError(Exception):
    """Base class for errors caused by user input (recipe, data, run directory)."""

    exit_code = 2


class RecipeError(EdgekdError):
    """A recipe key is unknown, mistyped, out of range or inconsistent."""


class DataError(EdgekdError):
    """A data source is missing, unreadable or malformed; the message names the file."""


class RunDirError(EdgekdError):
    """A run directory is missing, incomplete or belongs to another recipe."""


class TrainingError(EdgekdError):
    """Training cannot go on (e.g. the loss became NaN); the stage is not recorded as done."""
