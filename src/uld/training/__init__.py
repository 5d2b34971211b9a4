"""Student training for every method of :mod:`uld.methods`, on one synchronised student (accelerate).

Read in this order: :mod:`~uld.training.loop` (the run: where it trains, the session's story),
:mod:`~uld.training.objectives` (the loss of one micro-batch), :mod:`~uld.training.rows` (what is
trained on), :mod:`~uld.training.state` (exact resume without pickles), :mod:`~uld.training.optim`
(optimizer and schedule).
"""

from uld.errors import ResumeError, RowMismatchError, StateError, TrainingDiverged, TrainingError
from uld.training.loop import EVALUATION_RECORDS, TRAINING_RECORDS, train
from uld.training.objectives import LossOutput, answer_nll, build_ot_cost, compute_losses, student_answer_logits
from uld.training.optim import LR_PRESETS, build_optimizer, build_scheduler, plan_steps, resolve_lr
from uld.training.rows import (
    DistillationCollator,
    DistillationDataset,
    EncodedItem,
    EpochSampler,
    LengthBucketSampler,
    TrainRow,
    encode_rows,
    load_training_rows,
)
from uld.training.state import Checkpointer, TrainState

__all__ = [
    "train", "TRAINING_RECORDS", "EVALUATION_RECORDS",
    "TrainingError", "TrainingDiverged", "RowMismatchError", "ResumeError", "StateError",
    "LR_PRESETS", "resolve_lr", "build_optimizer", "build_scheduler", "plan_steps",
    "TrainRow", "EncodedItem", "load_training_rows", "encode_rows", "DistillationDataset", "DistillationCollator",
    "EpochSampler", "LengthBucketSampler", "LossOutput", "compute_losses", "answer_nll", "student_answer_logits", "build_ot_cost",
    "TrainState", "Checkpointer",
]
