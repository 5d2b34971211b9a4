"""Training rows: what each method trains on, tokenized for the student (and the online teacher), batched.

Teacher-answer methods read the stage's ``answers.parquet`` (:mod:`uld.answers`): rows with
``split == "train"`` are trained on (after ``data.train_fraction`` / ``data.fraction_mode``), rows with
``split == "val"`` pick the checkpoint. Each row becomes a student example (the task's zero-shot
student prompt + the teacher's answer, student tokenizer) and, for an online teacher, a teacher
example (the stored ``teacher_prompt`` + the same answer, teacher tokenizer). Both come from the same
row in one dataset item and are batched by one collate function, which checks that the row ids agree,
so a student row can never meet another row's teacher signal. Rows whose answer is empty after
tokenisation, or whose prompt cannot fit ``data.max_length``, are dropped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from uld.answers import read_answers
from uld.config import ExperimentConfig
from uld.data import Example, PromptTooLong, collate, encode_pair, encode_teacher_pair, get_task, split_pool, training_pool
from uld.errors import RowMismatchError, TrainingError
from uld.methods import get_method

__all__ = [
    "TrainRow",
    "EncodedItem",
    "load_training_rows",
    "encode_rows",
    "DistillationDataset",
    "DistillationCollator",
    "EpochSampler",
    "LengthBucketSampler",
    "BUCKET_WINDOW",
    "padding_stats",
    "item_length",
]


@dataclass(frozen=True)
class TrainRow:
    """One training/validation item: what the student sees and what the teacher saw."""

    row_id: str
    prompt: str  # student prompt (zero-shot, the task's format)
    answer: str  # target text (teacher answer, or the gold answer for sft-gold)
    context: str = ""  # the part of ``prompt`` that may be shortened to fit data.max_length
    teacher_prompt: str = ""  # the teacher's rendered prompt (teacher-answer methods)
    n_teacher_tokens: Optional[int] = None  # teacher answer length recorded by the teacher stage


def _take_fraction(rows: list, fraction: float, mode: str, seed: int) -> list:
    """The dataset-size ablation on the training rows, by the data module's rule (``split_pool``), so
    ``sft-gold`` and the teacher-answer methods cut their training sets identically."""
    if fraction >= 1.0 or not rows:
        return list(rows)
    return list(split_pool(list(rows), val_fraction=0.0, split_seed=seed, train_fraction=fraction, fraction_mode=mode).train)


def _example_from_record(rec: dict) -> Example:
    gold = rec.get("gold")
    gold = tuple(str(g) for g in gold) if gold is not None and not isinstance(gold, str) else ((gold,) if gold else ())
    return Example(id=str(rec["row_id"]), context=str(rec.get("context") or ""), question=str(rec.get("question") or ""),
                   answers=gold, title=str(rec.get("title") or ""))


def load_training_rows(cfg: ExperimentConfig, teacher_dir: Optional[Path]) -> tuple[list[TrainRow], list[TrainRow], dict]:
    """Training and validation rows of ``cfg.training.method`` (see the module docstring)."""
    task = get_task(cfg.data.task)
    method = get_method(cfg.training.method)
    info: dict[str, Any] = {}
    if method.target == "gold":
        train_ex, val_ex = training_pool(cfg.data)

        def to_row(ex: Example) -> TrainRow:
            return TrainRow(str(ex.id), task.student_prompt(ex), task.gold_answer(ex), context=ex.context)

        info["source"] = "gold"
        return [to_row(e) for e in train_ex], [to_row(e) for e in val_ex], info

    if teacher_dir is None:
        raise TrainingError(f"training.method={method.name!r} needs the teacher-stage folder (teacher_dir is None)")
    df = read_answers(teacher_dir)
    rows: dict[str, list[TrainRow]] = {"train": [], "val": []}
    for rec in df.to_dict("records"):
        ex = _example_from_record(rec)
        n_t = rec.get("n_answer_tokens")
        rows[rec["split"]].append(TrainRow(
            row_id=str(rec["row_id"]), prompt=task.student_prompt(ex),
            answer=str(rec["answer"] if rec["answer"] is not None else ""), context=ex.context,
            teacher_prompt=str(rec["teacher_prompt"]),
            n_teacher_tokens=None if n_t is None or (isinstance(n_t, float) and math.isnan(n_t)) else int(n_t),
        ))  # fmt: skip
    n_pool = len(rows["train"])
    train_rows = _take_fraction(rows["train"], cfg.data.train_fraction, cfg.data.fraction_mode, cfg.data.split_seed)
    info.update(source=str(Path(teacher_dir) / "answers.parquet"), train_pool=n_pool, train_after_fraction=len(train_rows))
    return train_rows, rows["val"], info


@dataclass
class EncodedItem:
    """One dataset item: the student encoding and (online teacher) the teacher encoding of one row."""

    row_id: str
    student: Any  # uld.data.Encoded
    teacher: Any = None  # uld.data.Encoded or None
    n_teacher_tokens: Optional[int] = None


def _n_answer_tokens(enc: Any, eos_id: Optional[int]) -> int:
    """Answer tokens of an encoding, not counting the EOS that ``encode_pair`` appends."""
    labels = [int(t) for t in list(enc.labels) if int(t) != -100]
    if labels and eos_id is not None and labels[-1] == eos_id:
        labels = labels[:-1]
    return len(labels)


def encode_rows(
    rows: Sequence[TrainRow],
    student_tok: Any,
    *,
    student_encoder_decoder: bool,
    max_length: int,
    teacher_tok: Any = None,
) -> tuple[list[EncodedItem], dict[str, Any]]:
    """Tokenise rows for the student (and the teacher when ``teacher_tok`` is given).

    Returns the kept items and counts: ``dropped_empty_answer`` (no answer token left after
    tokenisation), ``dropped_prompt_too_long``, ``truncated_context``. A row is kept only when both
    sides encode, so the two sides always hold the same rows in the same order.
    """
    items: list[EncodedItem] = []
    counts = {"rows": len(rows), "dropped_empty_answer": 0, "dropped_prompt_too_long": 0, "truncated_context": 0}
    dropped_ids: dict[str, list[str]] = {"empty_answer": [], "prompt_too_long": []}
    for row in rows:
        if not row.answer.strip():
            counts["dropped_empty_answer"] += 1
            dropped_ids["empty_answer"].append(row.row_id)
            continue
        try:
            s = encode_pair(
                student_tok, row.prompt, row.answer, encoder_decoder=student_encoder_decoder, max_length=max_length,
                context=row.context if row.context and row.context in row.prompt else None,
            )
            # the exact tokenization the teacher stage cached its signal on (BOS, separator)
            t = encode_teacher_pair(teacher_tok, row.teacher_prompt, row.answer) if teacher_tok is not None else None
        except PromptTooLong:
            counts["dropped_prompt_too_long"] += 1
            dropped_ids["prompt_too_long"].append(row.row_id)
            continue
        empty = _n_answer_tokens(s, student_tok.eos_token_id) == 0
        if t is not None:
            empty = empty or _n_answer_tokens(t, teacher_tok.eos_token_id) == 0
        if empty:
            counts["dropped_empty_answer"] += 1
            dropped_ids["empty_answer"].append(row.row_id)
            continue
        counts["truncated_context"] += int(bool(getattr(s, "truncated", False)))
        items.append(EncodedItem(row.row_id, s, t, row.n_teacher_tokens))
    counts["kept"] = len(items)
    counts["dropped_row_ids"] = {k: v[:50] for k, v in dropped_ids.items()}
    return items, counts


class DistillationDataset(Dataset):
    """Map-style dataset of :class:`EncodedItem` (index -> item; the row id travels with it)."""

    def __init__(self, items: list[EncodedItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EncodedItem:
        return self.items[i]


class DistillationCollator:
    """Batch items: student tensors, teacher tensors or cached teacher signal, and the row ids.

    Output keys: ``row_ids`` (list[str]); ``input_ids``, ``attention_mask``, ``labels`` (student,
    right-padded, labels -100 off the answer); ``teacher_input_ids``, ``teacher_attention_mask``,
    ``teacher_labels`` (online teacher); ``signal_probs`` ``[B, T, k]``, ``signal_tail`` ``[B, T]``,
    ``signal_lengths`` ``[B]`` (cached signal).
    """

    def __init__(self, student_pad_id: int, teacher_pad_id: Optional[int] = None, signal_store: Any = None,
                 signal_top_k: Optional[int] = None):
        self.student_pad_id = student_pad_id
        self.teacher_pad_id = teacher_pad_id
        self.signal_store = signal_store
        self.signal_top_k = signal_top_k

    def __call__(self, items: list[EncodedItem]) -> dict[str, Any]:
        row_ids = [it.row_id for it in items]
        batch: dict[str, Any] = {"row_ids": row_ids}
        batch.update(collate([it.student for it in items], self.student_pad_id, "right"))
        if any(it.teacher is not None for it in items):
            if not all(it.teacher is not None for it in items):
                raise RowMismatchError(f"batch mixes rows with and without a teacher encoding: {row_ids}")
            t = collate([it.teacher for it in items], self.teacher_pad_id, "right")
            batch.update({f"teacher_{k}": v for k, v in t.items() if isinstance(v, torch.Tensor)})
        if self.signal_store is not None:
            batch.update(self._signal(items, row_ids))
        return batch

    def _signal(self, items: list[EncodedItem], row_ids: list[str]) -> dict[str, Any]:
        missing = [r for r in row_ids if r not in self.signal_store]
        if missing:
            raise RowMismatchError(
                f"rows {missing[:10]} have no cached teacher signal in {getattr(self.signal_store, 'path', '?')}: "
                "answers.parquet and the signal come from different teacher stages"
            )
        signal, lengths = self.signal_store.get(row_ids, top_k=self.signal_top_k)
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        for it, n in zip(items, lengths.tolist()):
            # one distribution per answer token plus the EOS (see uld.signal)
            if it.n_teacher_tokens is not None and int(n) != it.n_teacher_tokens + 1:
                raise RowMismatchError(
                    f"row {it.row_id!r}: cached teacher signal has {n} positions but answers.parquet says "
                    f"n_answer_tokens={it.n_teacher_tokens} (+1 for EOS); the signal and the answers are out of sync"
                )
        return {"signal_probs": signal.probs, "signal_tail": signal.tail, "signal_lengths": lengths}


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch (``set_epoch``): the same order for any number of processes."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


# batches sorted together: wide enough that neighbours in a window have similar lengths, narrow enough
# that which rows meet still varies from epoch to epoch
BUCKET_WINDOW = 50


class LengthBucketSampler(EpochSampler):
    """``training.batching: length``: the epoch's seeded permutation, each window of ``BUCKET_WINDOW``
    batches sorted by length (longest first), then the full batches in a seeded random order and the
    short last batch last. Every epoch holds every row once; a batch pads little.

    ``lengths[i]``: the padded size row ``i`` costs (student tokens, plus the teacher's for an online teacher).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        super().__init__(len(lengths), seed, shuffle=True)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths, self.batch_size = [int(n) for n in lengths], int(batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        window = self.batch_size * BUCKET_WINDOW
        order: list[int] = []
        for w in range(0, self.n, window):
            order += sorted(perm[w : w + window], key=lambda i: -self.lengths[i])
        n_full = self.n // self.batch_size
        batches = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(n_full)]
        shuffled = [i for b in torch.randperm(n_full, generator=g).tolist() for i in batches[b]]
        return iter(shuffled + order[n_full * self.batch_size :])


def item_length(item: EncodedItem) -> int:
    """Tokens an item puts through the models: its student sequence (and teacher sequence, online)."""
    n = len(item.student.input_ids)
    return n + (len(item.teacher.input_ids) if item.teacher is not None else 0)


def padding_stats(items: Sequence[EncodedItem], order: Sequence[int], batch_size: int) -> dict[str, int]:
    """Student tokens of right-padded batches of ``batch_size`` consecutive ``order`` items:
    ``{"tokens": real, "padded": real + pads}``."""
    real = padded = 0
    for b in range(0, len(order), batch_size):
        lens = [len(items[i].student.input_ids) for i in order[b : b + batch_size]]
        real, padded = real + sum(lens), padded + max(lens) * len(lens)
    return {"tokens": real, "padded": padded}
