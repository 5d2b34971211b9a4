"""The teacher-answers file of a teacher stage (``answers.parquet``): its columns and its checked reader.

The teacher stage writes it (:mod:`uld.teacher`); training reads it (:mod:`uld.training`). One row per
kept training-pool item:

=====================  =========================================================================
``row_id``             the pool item's id (unique)
``split``              ``train`` or ``val`` (the seeded hold-out that picks checkpoints)
``context``            passage / story section / abstract / dialogue
``question``           "" for DialogSum
``title``              passage title (shown to the teacher when the paper did)
``gold``               the dataset's references (list)
``teacher_prompt``     the rendered prompt the teacher answered (its signal is cached on these tokens)
``answer``             the kept answer (greedy, first line)
``n_answer_tokens``    teacher tokens of the answer, without the EOS (the signal has one more row)
``shot_ids``           ids of the few-shot examples in the prompt
``generation``         the raw generated text before the first-line cut
``n_prompt_tokens``    teacher tokens of the prompt
``n_generated_tokens`` tokens the teacher generated, EOS included
=====================  =========================================================================
"""

from __future__ import annotations

from pathlib import Path

from uld.errors import SignalError, TrainingError
from uld.io import read_parquet

__all__ = ["ANSWER_COLUMNS", "REQUIRED_COLUMNS", "ANSWERS_FILE", "read_answers", "check_signal_matches"]

ANSWERS_FILE = "answers.parquet"
ANSWER_COLUMNS = [
    "row_id", "split", "context", "question", "title", "gold", "teacher_prompt", "answer",
    "n_answer_tokens", "shot_ids", "generation", "n_prompt_tokens", "n_generated_tokens",
]
REQUIRED_COLUMNS = ("row_id", "split", "context", "question", "teacher_prompt", "answer")


def read_answers(stage: str | Path):
    """The stage's answers as a DataFrame, checked: required columns, unique row ids, known splits."""
    path = Path(stage) / ANSWERS_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing: run the teacher stage first (`uld generate`)")
    df = read_parquet(path)
    missing = sorted(set(REQUIRED_COLUMNS) - set(df.columns))
    if missing:
        raise TrainingError(f"{path}: missing column(s) {missing}")
    ids = df["row_id"].astype(str)
    if ids.duplicated().any():
        raise TrainingError(f"{path}: row_id {ids[ids.duplicated()].iloc[0]!r} appears more than once")
    bad = df.loc[~df["split"].isin(["train", "val"])]
    if len(bad):
        raise TrainingError(f"{path}: row {bad['row_id'].iloc[0]!r} has split {bad['split'].iloc[0]!r} (expected train or val)")
    return df


def check_signal_matches(df, store, stage: str | Path) -> None:
    """Every answer has a cached signal of ``n_answer_tokens + 1`` positions (its tokens and the EOS),
    and the cache holds no other row: the signal and the answers come from one stage."""
    path = Path(stage) / ANSWERS_FILE
    ids = [str(r) for r in df["row_id"]]
    missing = [r for r in ids if r not in store]
    if missing:
        raise SignalError(f"{store.path}: no cached signal for {len(missing)} rows of {path} (e.g. {missing[:3]}): "
                          "the answers and the signal come from different teacher stages")
    extra = set(store.row_ids()) - set(ids)
    if extra:
        raise SignalError(f"{store.path}: signal for {len(extra)} rows that {path} does not have (e.g. {sorted(extra)[:3]})")
    store.verify()
    if "n_answer_tokens" not in df.columns:
        return
    for rid, n in zip(ids, df["n_answer_tokens"]):
        if n == n and store.length(rid) != int(n) + 1:
            raise SignalError(f"{store.path}: row {rid!r} has {store.length(rid)} cached positions but {path} says "
                              f"n_answer_tokens={int(n)} (+1 for the EOS): the signal and the answers are out of sync")
