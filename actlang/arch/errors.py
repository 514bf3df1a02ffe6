"""Errors the runtime raises for user mistakes.

Every mistake a user can make with their inputs — a model directory that does not exist, a
truncated checkpoint, a pickle checkpoint, two models with different architectures, a budget
larger than what can be selected, an unknown architecture — raises :class:`RuntimeUserError`
with a one-line ``message`` and, where there is something to do about it, a ``hint``.
The CLI renders it without a traceback; a notebook shows ``str(err)``.

Bugs in actlang itself stay ordinary exceptions (``AssertionError``, ``KeyError``, ...).
"""

from __future__ import annotations

__all__ = ["GlobalChannelWarning", "RuntimeUserError", "SelectionWarning",
           "UnmeasuredChannelWarning", "write_refused"]


class RuntimeUserError(Exception):
    """A problem with the user's inputs, explained.

    Attributes:
        message: what is wrong, naming the file, tensor or setting involved.
        hint: what to do about it (or ``None``).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


def write_refused(error: OSError) -> RuntimeUserError:
    """A write the machine refused (full disk, read-only or unusable directory, a file where
    a directory should be), naming the path; atomic writes left nothing behind."""
    path = f" {error.filename}" if error.filename else ""
    return RuntimeUserError(
        f"cannot write{path}: {error.strerror or error}",
        hint="check that the output and cache directories are writable and have free space "
             "(the cache: $ACTLANG_CACHE_DIR or --cache-dir)")


class SelectionWarning(UserWarning):
    """Something about a rule's candidates the user should know; the planner shows each
    one located at its rule (W501)."""


class GlobalChannelWarning(SelectionWarning):
    """Warned when a selection may move channels that are global to the model.

    Residual-stream dimensions (embedding columns, norm elements) and Qwen3/Gemma3
    ``q_norm``/``k_norm`` elements (shared by every head) are read by every layer, so moving
    them changes the whole model, not one module. They are excluded by default and move only
    when a selection names them explicitly.
    """


class UnmeasuredChannelWarning(SelectionWarning):
    """Warned when an activation score leaves out candidates it cannot measure: modules with
    no token-wise output (a mixture-of-experts router), which only weight scores rank."""
