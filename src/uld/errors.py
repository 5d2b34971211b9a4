"""Every error a user can act on, in one place.

Each is a :class:`UldError`: the command line prints it as one line naming the file, field or row at
fault (``uld -v`` shows the traceback) and exits with status 2. Anything else is a bug and keeps its
traceback. Modules re-export the errors they raise, so ``uld.training.TrainingError`` and
``uld.errors.TrainingError`` are the same class.

Dependency rule: this module imports nothing.
"""

from __future__ import annotations

__all__ = [
    "UldError",
    "ConfigError",
    "DataError",
    "PromptTooLong",
    "ChatTemplateError",
    "MetricInputError",
    "ResultsError",
    "StoreWriteError",
    "RunLocked",
    "SignalError",
    "StateError",
    "TrainingError",
    "RowMismatchError",
    "ResumeError",
    "TrainingDiverged",
    "TeacherStageError",
    "EvaluationError",
    "ModelLoadError",
]


class UldError(Exception):
    """A problem the user can fix; the message names what is wrong and where."""


class ConfigError(UldError, ValueError):
    """A configuration problem; the message names the key (dotted path) and the source file."""


class DataError(UldError, ValueError):
    """A data problem. The message names task, split, row id and field, so the row can be found."""

    def __init__(self, message: str, *, task: str = "", split: str = "", row: str = "", field: str = ""):
        self.task, self.split, self.row, self.field = task, split, row, field
        where = ", ".join(
            f"{k} {v!r}" for k, v in (("task", task), ("split", split), ("row", row), ("field", field)) if v
        )
        super().__init__(f"{where}: {message}" if where else message)


class PromptTooLong(UldError, ValueError):
    """The item cannot fit in ``max_length`` tokens even with its context removed."""

    def __init__(self, message: str, *, n_tokens: int, max_length: int):
        super().__init__(message)
        self.n_tokens, self.max_length = n_tokens, max_length


class ChatTemplateError(UldError, ValueError):
    """No usable chat template, an unknown template name, or messages in an unsupported order."""


class MetricInputError(UldError, ValueError):
    """Bad metric input; the message names the row and field."""


class ResultsError(UldError, ValueError):
    """A malformed or inconsistent record; the message names the file (and row or field)."""


class StoreWriteError(UldError, OSError):
    """A record could not be written (read-only store, full disk, ...); names the file. Nothing was changed."""


class RunLocked(UldError, RuntimeError):
    """Another process is computing this run or teacher stage; the message names the holder."""


class SignalError(UldError, ValueError):
    """A cached teacher signal that disagrees with its index, its answers or the config; names the file."""


class StateError(UldError, ValueError):
    """A training state folder that was not written by this code or was altered; names the file."""


class TrainingError(UldError, RuntimeError):
    """A training run cannot start or continue; the message says why and what to change."""


class RowMismatchError(TrainingError):
    """Student and teacher sides of a batch do not come from the same rows."""


class ResumeError(TrainingError):
    """The saved training state does not match this run (config or world size)."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite. ``step``: optimizer steps done; ``row_ids``: the batch."""

    def __init__(self, step: int, row_ids: list, checkpoint, value: float):
        self.step, self.row_ids, self.checkpoint, self.value = step, row_ids, checkpoint, value
        super().__init__(
            f"loss is {value} at optimizer step {step} (batch rows: {row_ids}); "
            f"weights before this batch saved to {checkpoint}"
        )


class TeacherStageError(UldError, RuntimeError):
    """The teacher stage cannot go on: names the stage folder, chunk file or row at fault."""


class EvaluationError(UldError, ValueError):
    """An evaluation cannot run as asked (missing checkpoint, tokenizer, ...); the message says how to fix it."""


class ModelLoadError(UldError, ValueError):
    """Weights that do not fit the model (missing, unexpected or misshapen tensors); names the folder."""
