"""Student training for every method of the paper, on one synchronised student (accelerate).

Methods (``training.method``), one code path:

============  =====================================================================================
``none``      no training (the untouched student is evaluated)
``sft-gold``  cross-entropy on the dataset's reference answers (``Task.gold_answer``)
``sft-teacher`` cross-entropy on the teacher's generated answers (the paper's lambda = 0 baseline)
``uld``       ``CE + lam * ULD`` on the teacher's answers; the teacher's distributions come from the
              cached teacher signal (``training.teacher_signal=cached``: top-k probabilities + tail
              mass written by the teacher stage) or from the teacher model run alongside the student
              (``online``: exact full-vocabulary ULD when ``training.top_k`` is null); positions
              paired by rank (``training.alignment=positional``, the paper) or by the character where
              each answer token starts (``offsets``, see ``uld.alignment``)
``kd-kl``     ``CE + lam * KL(teacher || student)``: the same-tokenizer baseline (online teacher)
``uld-ot``    ``CE + lam * OT`` with a token transport cost (ablation of ULD's uniform cost)
============  =====================================================================================

Data. Teacher-answer methods read ``answers.parquet`` of the teacher-stage folder: rows with
``split == "train"`` are trained on (after ``data.train_fraction`` / ``data.fraction_mode``), rows with
``split == "val"`` pick the checkpoint. Each row becomes a student example (the task's zero-shot
student prompt + the teacher's answer, student tokenizer) and, for the online teacher, a teacher
example (the stored ``teacher_prompt`` + the same answer, teacher tokenizer). Both are built from the
same row in one dataset item and batched by one collate function, which checks that the row ids agree,
so a student row can never meet another row's teacher signal. Rows whose answer is empty after
tokenisation, or whose prompt cannot fit ``data.max_length``, are dropped and counted in
``train_summary.json``.

Optimisation (paper defaults). AdamW (``weight_decay`` 0.1, applied to every parameter as the authors
did), OneCycle learning-rate schedule stepped once per OPTIMIZER step (not per micro-batch): warm-up over
``warmup_ratio`` (10%) of the steps from ``lr/2`` to ``lr``, cosine annealing down to ``lr/10``.
In ``torch.optim.lr_scheduler.OneCycleLR`` terms: ``div_factor=2`` (start = max/2) and
``final_div_factor=5`` (end = start/5 = max/10). As in the authors' runs (torch's defaults), OneCycle
also cycles AdamW's beta1 between 0.85 and 0.95, opposite to the learning rate. Learning rate: an
explicit ``training.lr_preset`` wins (``paper`` 1e-6, ``authors-jobs`` 2e-6); otherwise a per-task
value in the student's registry entry (``ModelEntry.lr``, the paper's mT0 values); otherwise
``training.lr``. Gradient accumulation over ``grad_accum`` micro-batches (the last window of an epoch may
be shorter and is averaged over its own length), gradient clipping at ``max_grad_norm``, mixed precision
through accelerate. The loss of a micro-batch: CE is the mean over its answer tokens; the distillation
term uses ``training.reduction``.

Distribution. Run under ``accelerate launch`` for several processes: the student is wrapped by
accelerate (DDP, FSDP or DeepSpeed according to the accelerate config), each process reads a different
shard of every global batch (global batch = ``batch_size * num_processes * grad_accum``) and all ranks
hold the same weights after every step. The online teacher is a frozen, unwrapped copy per process.
The shuffling order is a function of ``(training.seed, epoch)`` only, so it does not depend on the
number of processes.

Checkpoints (under the run folder):

* ``checkpoints/state``: accelerate state (weights, optimizer, scheduler, RNG states) plus
  ``trainer.json`` (position in the data: epoch and micro-batches consumed, optimizer step, best
  validation loss so far, config hash). Written every ``save_every`` optimizer steps (default: every
  epoch) and at the end. ``resume=True`` reloads it and skips the batches already consumed in the
  interrupted epoch, so a resumed run follows exactly the same trajectory as an uninterrupted one; the
  lines of ``metrics.jsonl`` written after that checkpoint are dropped. Resuming with a different
  config (other than logging-only fields) or a different number of processes is refused unless
  ``force_resume=True``.
  Once the run has finished, only ``trainer.json`` (marked finished) is kept, so a rerun knows the
  training is done; ``training.keep_state: true`` keeps the whole state.
* ``checkpoints/last``: Hugging Face folder (safetensors + tokenizer) of the latest weights.
* ``checkpoints/best``: the selected checkpoint. Rule (``training.select``): ``best_val_loss``
  (default) keeps the weights with the lowest validation loss, i.e. the student's cross-entropy on the
  validation answers, averaged over all answer tokens of the validation rows (the same targets the
  method trains on: teacher answers, or gold answers for ``sft-gold``), evaluated every
  ``eval_every`` optimizer steps (default: each epoch) and at the end; ties keep the earlier step.
  ``last`` copies the final weights. Without validation rows ``best_val_loss`` falls back to ``last``
  (recorded in the summary).

Logging. ``metrics.jsonl`` (main process only): one line per ``log_every`` optimizer steps with
``split="train"`` (loss, ce, distill term, lr, grad_norm, tokens_per_s counted over all processes, peak
memory) and one per validation pass with ``split="val"``. Optional accelerate trackers
(``training.trackers``: ``tensorboard``, ``wandb``) receive the same numbers. A loss that is NaN or
infinite on any rank stops the run with :class:`TrainingDiverged`, after saving the current weights to
``checkpoints/diverged``; the error names the optimizer step and the row ids of the batch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from uld.config import ExperimentConfig, TrainingConfig
from uld.ids import resume_key
from uld.io import append_jsonl, atomic_write_json, atomic_write_text
from uld.store import RunFolder

log = logging.getLogger(__name__)

__all__ = [
    "train",
    "TrainingError",
    "TrainingDiverged",
    "RowMismatchError",
    "ResumeError",
    "LR_PRESETS",
    "resolve_lr",
    "build_optimizer",
    "build_scheduler",
    "plan_steps",
    "TrainRow",
    "EncodedItem",
    "LossOutput",
    "load_training_rows",
    "encode_rows",
    "DistillationDataset",
    "DistillationCollator",
    "EpochSampler",
    "compute_losses",
    "answer_nll",
    "student_answer_logits",
]

LR_PRESETS = {"paper": 1e-6, "authors-jobs": 2e-6}
DISTILL_METHODS = ("uld", "kd-kl", "uld-ot")
DISTILL_LOG_KEY = {"uld": "uld", "uld-ot": "uld", "kd-kl": "kl"}
STATE_FILE = "trainer.json"


from uld.errors import ResumeError, RowMismatchError, TrainingDiverged, TrainingError  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------


def resolve_lr(tcfg: TrainingConfig, student_entry: Any = None, task: str = "") -> tuple[float, str]:
    """Peak learning rate and where it came from (``preset:<name>``, ``registry``, ``config``).

    Precedence: ``lr_preset`` (explicit) > the student's per-task registry value (paper's mT0 rates)
    > ``training.lr``.
    """
    if tcfg.lr_preset is not None:
        return LR_PRESETS[tcfg.lr_preset], f"preset:{tcfg.lr_preset}"
    per_task = getattr(student_entry, "lr", None) or {}
    if task in per_task:
        return float(per_task[task]), "registry"
    return float(tcfg.lr), "config"


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (the authors applied the decay to all of them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, max_lr: float, warmup_ratio: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning-rate schedule over ``total_steps`` optimizer steps.

    ``onecycle``: lr/2 -> lr over the first ``warmup_ratio`` of the steps, then cosine down to lr/10
    (OneCycleLR: initial = max/div_factor, final = initial/final_div_factor). ``linear``: linear warm-up
    from 0, linear decay to 0. ``constant``: lr throughout.
    """
    total_steps = max(1, int(total_steps))
    if kind == "onecycle":
        if total_steps < 2:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        # OneCycleLR ends the warm-up at step pct * total - 1 and divides by that length, so the
        # warm-up must span more than one step; only very short runs (< 15 steps at 10%) are affected.
        pct = min(max(warmup_ratio, 1.5 / total_steps), 1.0 - 0.5 / total_steps)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct, div_factor=2.0, final_div_factor=5.0
        )
    if kind == "linear":
        warm = max(1, int(round(warmup_ratio * total_steps)))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise TrainingError(f"'training.scheduler': unknown schedule {kind!r}")


def plan_steps(batches_per_epoch: int, grad_accum: int, epochs: float, max_steps: Optional[int]) -> tuple[int, int]:
    """``(optimizer steps per epoch, total optimizer steps)``; ``max_steps`` overrides ``epochs``."""
    if batches_per_epoch <= 0:
        raise TrainingError("the training set yields no batch (no rows left after filtering?)")
    per_epoch = math.ceil(batches_per_epoch / grad_accum)
    total = int(max_steps) if max_steps is not None else math.ceil(epochs * per_epoch)
    if total <= 0:
        raise TrainingError(f"'training.epochs'/'training.max_steps' give {total} optimizer steps")
    return per_epoch, total


# --------------------------------------------------------------------------------------------------
# Rows, encoding, batching
# --------------------------------------------------------------------------------------------------


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
    """The dataset-size ablation on the training rows, by the data module's rule (``split_pool``:
    the first ``ceil(f * n)`` rows, or a seeded random subset kept in order), so ``sft-gold`` and the
    teacher-answer methods cut their training sets identically."""
    if fraction >= 1.0 or not rows:
        return list(rows)
    from uld.data import split_pool

    return list(split_pool(list(rows), val_fraction=0.0, split_seed=seed, train_fraction=fraction, fraction_mode=mode).train)


def _example_from_record(rec: dict):
    from uld.data import Example

    gold = rec.get("gold")
    gold = tuple(str(g) for g in gold) if gold is not None and not isinstance(gold, str) else ((gold,) if gold else ())
    return Example(
        id=str(rec["row_id"]),
        context=str(rec.get("context") or ""),
        question=str(rec.get("question") or ""),
        answers=gold,
        title=str(rec.get("title") or ""),
    )


def load_training_rows(cfg: ExperimentConfig, teacher_dir: Optional[Path]) -> tuple[list[TrainRow], list[TrainRow], dict]:
    """Training and validation rows of ``cfg.training.method`` (see the module docstring)."""
    from uld.data import get_task

    task = get_task(cfg.data.task)
    method = cfg.training.method
    info: dict[str, Any] = {}
    if method == "sft-gold":
        from uld.data import training_pool

        train_ex, val_ex = training_pool(cfg.data)

        def to_row(ex) -> TrainRow:
            return TrainRow(str(ex.id), task.student_prompt(ex), task.gold_answer(ex), context=ex.context)

        info["source"] = "gold"
        return [to_row(e) for e in train_ex], [to_row(e) for e in val_ex], info

    if teacher_dir is None:
        raise TrainingError(f"training.method={method!r} needs the teacher-stage folder (teacher_dir is None)")
    answers = Path(teacher_dir) / "answers.parquet"
    if not answers.is_file():
        raise TrainingError(f"{answers} is missing: run the teacher stage first (`uld teacher`)")
    import pandas as pd

    df = pd.read_parquet(answers)
    required = {"row_id", "split", "context", "question", "teacher_prompt", "answer"}
    missing = sorted(required - set(df.columns))
    if missing:
        raise TrainingError(f"{answers}: missing column(s) {missing}")
    if df["row_id"].astype(str).duplicated().any():
        dup = df["row_id"].astype(str)[df["row_id"].astype(str).duplicated()].iloc[0]
        raise TrainingError(f"{answers}: row_id {dup!r} appears more than once")
    rows: dict[str, list[TrainRow]] = {"train": [], "val": []}
    for rec in df.to_dict("records"):
        split = rec["split"]
        if split not in rows:
            raise TrainingError(f"{answers}: row {rec['row_id']!r} has split {split!r} (expected train or val)")
        ex = _example_from_record(rec)
        n_t = rec.get("n_answer_tokens")
        rows[split].append(
            TrainRow(
                row_id=str(rec["row_id"]),
                prompt=task.student_prompt(ex),
                answer=str(rec["answer"] if rec["answer"] is not None else ""),
                context=ex.context,
                teacher_prompt=str(rec["teacher_prompt"]),
                n_teacher_tokens=None if n_t is None or (isinstance(n_t, float) and math.isnan(n_t)) else int(n_t),
            )
        )
    n_pool = len(rows["train"])
    train_rows = _take_fraction(rows["train"], cfg.data.train_fraction, cfg.data.fraction_mode, cfg.data.split_seed)
    info.update(source=str(answers), train_pool=n_pool, train_after_fraction=len(train_rows))
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
    labels = [int(t) for t in _as_list(enc.labels) if int(t) != -100]
    if labels and eos_id is not None and labels[-1] == eos_id:
        labels = labels[:-1]
    return len(labels)


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


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
    from uld.data import PromptTooLong, encode_pair, encode_teacher_pair

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
            t = None
            if teacher_tok is not None:
                # the exact tokenization the teacher stage cached its signal on (BOS, separator)
                t = encode_teacher_pair(teacher_tok, row.teacher_prompt, row.answer)
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

    def __init__(
        self,
        student_pad_id: int,
        teacher_pad_id: Optional[int] = None,
        signal_store: Any = None,
        signal_top_k: Optional[int] = None,
    ):
        self.student_pad_id = student_pad_id
        self.teacher_pad_id = teacher_pad_id
        self.signal_store = signal_store
        self.signal_top_k = signal_top_k

    def __call__(self, items: list[EncodedItem]) -> dict[str, Any]:
        from uld.data import collate

        row_ids = [it.row_id for it in items]
        batch: dict[str, Any] = {"row_ids": row_ids}
        batch.update(collate([it.student for it in items], self.student_pad_id, "right"))
        if any(it.teacher is not None for it in items):
            if not all(it.teacher is not None for it in items):
                raise RowMismatchError(f"batch mixes rows with and without a teacher encoding: {row_ids}")
            t = collate([it.teacher for it in items], self.teacher_pad_id, "right")
            batch.update({f"teacher_{k}": v for k, v in t.items() if isinstance(v, torch.Tensor)})
        if self.signal_store is not None:
            missing = [r for r in row_ids if r not in self.signal_store]
            if missing:
                raise RowMismatchError(
                    f"rows {missing[:10]} have no cached teacher signal in {getattr(self.signal_store, 'path', '?')}: "
                    "answers.parquet and the signal come from different teacher stages"
                )
            signal, lengths = self.signal_store.get(row_ids, top_k=self.signal_top_k)
            lengths = torch.as_tensor(lengths, dtype=torch.long)
            if lengths.shape[0] != len(row_ids):
                raise RowMismatchError(f"teacher signal has {lengths.shape[0]} rows for a batch of {len(row_ids)}")
            for it, n in zip(items, lengths.tolist()):
                # one distribution per answer token plus the EOS (see uld.teacher)
                if it.n_teacher_tokens is not None and int(n) != it.n_teacher_tokens + 1:
                    raise RowMismatchError(
                        f"row {it.row_id!r}: cached teacher signal has {n} positions but answers.parquet says "
                        f"n_answer_tokens={it.n_teacher_tokens} (+1 for EOS); the signal and the answers are out of sync"
                    )
            batch["signal_probs"] = signal.probs
            batch["signal_tail"] = signal.tail
            batch["signal_lengths"] = lengths
        return batch


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


# --------------------------------------------------------------------------------------------------
# Losses of one batch
# --------------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what is back-propagated
    ce: torch.Tensor  # scalar, detached
    distill: Optional[torch.Tensor]  # scalar, detached (None for CE-only methods)
    n_tokens: int  # student tokens processed (prompt + answer, no padding)


def _student_forward(model: torch.nn.Module, batch: dict, encoder_decoder: bool) -> torch.Tensor:
    """Student logits ``[B, T, V]``: aligned with ``input_ids`` (decoder-only) or with ``labels``
    (encoder-decoder; the decoder input is the right-shifted labels)."""
    if encoder_decoder:
        inner = model.module if hasattr(model, "module") else model
        dec_in = inner.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec_in,
            decoder_attention_mask=batch.get("decoder_attention_mask"),
        )
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits


def _shifted(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each logit with the token it predicts: ``logits[:, t]`` -> ``labels[:, t+1]`` when causal."""
    if causal:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the answer tokens and their counts.

    logits ``[B, T, V]``, labels ``[B, T]`` (-100 off the answer). Returns ``(nll [B], n [B])`` in float32.
    """
    lg, lb = _shifted(logits, labels, causal)
    nll = F.cross_entropy(lg.float().transpose(1, 2), lb, ignore_index=-100, reduction="none")  # [B, T']
    valid = lb != -100
    return (nll * valid).sum(dim=1), valid.sum(dim=1).float()


def student_answer_logits(
    model: torch.nn.Module, batch: dict, encoder_decoder: bool, *, answer_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Student logits with the labels they are scored against: ``(logits [B, T', V], labels [B, T'], causal)``.

    ``answer_only=False``: the full logits, ``labels = batch["labels"]``, ``causal`` for decoder-only
    models. ``answer_only=True`` (decoder-only): only the positions that predict an answer token are
    projected onto the vocabulary (``logits_to_keep``), packed per row in order and right-padded, with
    their targets as labels (-100 on padding) and ``causal=False``: the same losses at a fraction of the
    cost of a large output layer. Encoder-decoder logits already cover the answer only.
    """
    labels = batch["labels"]
    if encoder_decoder or not answer_only:
        return _student_forward(model, batch, encoder_decoder), labels, not encoder_decoder
    from uld.losses import answer_logit_targets

    targets = answer_logit_targets(labels, causal=True)  # [B, T]: token predicted at each position
    keep = targets != -100
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that ignores a mask-valued logits_to_keep returns every position
        logits = logits[keep]
    counts = keep.sum(dim=1).tolist()
    packed = torch.nn.utils.rnn.pad_sequence(list(torch.split(logits, counts)), batch_first=True)
    packed_targets = torch.nn.utils.rnn.pad_sequence(
        list(torch.split(targets[keep], counts)), batch_first=True, padding_value=-100
    )
    return packed, packed_targets, False


def _teacher_answer_logits(teacher: torch.nn.Module, batch: dict, *, skip_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Online teacher logits from the first answer-predicting column on: ``([B, T - f, Vt], mask [B, T - f])``.

    The prompt columns are never compared, so they are not projected onto the vocabulary either
    (``logits_to_keep``): with a 256k-token teacher that projection dominates the teacher's cost.
    """
    from uld.losses import answer_logit_mask

    mask = answer_logit_mask(batch["teacher_labels"], causal=True, skip_eos=skip_eos)
    cols = mask.any(dim=0).nonzero()
    first = int(cols[0]) if len(cols) else mask.shape[1] - 1
    keep = mask.shape[1] - first
    kwargs = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
    with torch.no_grad():
        if "logits_to_keep" in inspect.signature(teacher.forward).parameters:
            logits = teacher(**kwargs, logits_to_keep=keep).logits
        else:
            logits = teacher(**kwargs).logits[:, first:]
    return logits, mask[:, first:]


def _align(tcfg: TrainingConfig, batch: dict, student_mask: torch.Tensor, teacher_mask: torch.Tensor):
    """``offsets`` alignment: keep only the answer positions whose tokens start at the same character
    on both sides (``uld.alignment.offset_masks``); ``positional`` (paper): the masks unchanged."""
    if tcfg.alignment == "positional":
        return student_mask, teacher_mask
    from uld.alignment import offset_masks

    if "teacher_answer_char_starts" not in batch:
        raise TrainingError("training.alignment=offsets needs the teacher-side encoding of each row")
    return offset_masks(student_mask, teacher_mask, batch["answer_char_starts"], batch["teacher_answer_char_starts"])


def compute_losses(
    model: torch.nn.Module,
    batch: dict,
    tcfg: TrainingConfig,
    *,
    encoder_decoder: bool,
    teacher: Optional[torch.nn.Module] = None,
    student_eos_id: Optional[int] = None,
    ot_cost: Any = "uniform",
) -> LossOutput:
    """Loss of one micro-batch for ``tcfg.method``.

    CE: mean negative log-likelihood over the batch's student answer tokens (the EOS included: the
    student must learn to stop). Distillation term (uld, kd-kl, uld-ot): between the student's
    distributions at its answer positions (``answer_logit_mask``; the position predicting the EOS
    skipped when ``skip_student_eos``) and the teacher's at the teacher's answer positions (EOS
    included, as cached by the teacher stage), paired by rank; from the online teacher's logits or the
    cached signal. Total: ``distillation_objective(ce, term, lam)``.
    """
    labels = batch["labels"]
    n_tokens = int(batch["attention_mask"].sum().item())
    if encoder_decoder:
        n_tokens += int((labels != -100).sum().item())
    logits, labels, causal = student_answer_logits(model, batch, encoder_decoder, answer_only=tcfg.logits == "answer")
    nll, n = answer_nll(logits, labels, causal=causal)
    ce = nll.sum() / n.sum().clamp_min(1.0)
    method = tcfg.method
    if method not in DISTILL_METHODS:
        return LossOutput(ce, ce.detach(), None, n_tokens)

    from uld import losses

    student_mask = losses.answer_logit_mask(
        labels, causal=causal, skip_eos=tcfg.skip_student_eos, eos_token_id=student_eos_id
    )
    if method == "uld" and "signal_probs" in batch:
        probs, lengths = batch["signal_probs"], batch["signal_lengths"]
        # one cached distribution per answer token, then the one predicting the teacher's EOS (last)
        lengths = lengths - 1 if tcfg.skip_teacher_eos else lengths
        teacher_mask = torch.arange(probs.shape[1], device=probs.device)[None, :] < lengths[:, None]
        student_mask, teacher_mask = _align(tcfg, batch, student_mask, teacher_mask)
        term = losses.uld_loss(
            logits, losses.TeacherSignal(probs=probs, tail=batch["signal_tail"]), student_mask, teacher_mask,
            # the cache already holds the teacher at generation.signal_temperature (config.validate checks
            # it equals training.teacher_temperature)
            student_temperature=tcfg.student_temperature, teacher_temperature=1.0,
            top_k=None, reduction=tcfg.reduction, chunk_size=tcfg.loss_chunk_size,
        )  # fmt: skip
    else:
        if teacher is None:
            raise TrainingError(f"training.method={method!r} with the online teacher: no teacher model was loaded")
        t_logits, teacher_mask = _teacher_answer_logits(teacher, batch, skip_eos=tcfg.skip_teacher_eos)
        student_mask, teacher_mask = _align(tcfg, batch, student_mask, teacher_mask)
        if method == "uld":
            term = losses.uld_loss(
                logits, t_logits, student_mask, teacher_mask,
                student_temperature=tcfg.student_temperature, teacher_temperature=tcfg.teacher_temperature,
                top_k=tcfg.top_k, reduction=tcfg.reduction, chunk_size=tcfg.loss_chunk_size,
            )  # fmt: skip
        elif method == "kd-kl":
            term = losses.kd_kl(
                logits, t_logits, student_mask, teacher_mask,
                temperature=tcfg.student_temperature, reduction=tcfg.reduction,
            )  # fmt: skip
        else:  # uld-ot
            term = losses.uld_ot(
                logits, t_logits, student_mask, teacher_mask, cost=ot_cost, top_k=tcfg.ot_top_k,
                solver=tcfg.ot_solver, student_temperature=tcfg.student_temperature,
                teacher_temperature=tcfg.teacher_temperature, reduction=tcfg.reduction,
            )  # fmt: skip
    total = losses.distillation_objective(ce, term, tcfg.lam)
    return LossOutput(total, ce.detach(), term.detach(), n_tokens)


# --------------------------------------------------------------------------------------------------
# Checkpoint helpers
# --------------------------------------------------------------------------------------------------


def _swap_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (old one removed only after the new one is there)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _prune_state(state_dir: Path) -> None:
    """Delete everything in a finished run's ``checkpoints/state`` except its ``trainer.json``."""
    if not (state_dir / STATE_FILE).is_file():
        return
    for p in state_dir.iterdir():
        if p.name == STATE_FILE:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _save_hf(accelerator: Any, model: torch.nn.Module, tokenizer: Any, dest: Path, extra: dict) -> None:
    """Hugging Face folder (safetensors + tokenizer + ``checkpoint.json``), written atomically."""
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP/DeepSpeed: every rank calls it
    tmp = dest.with_name(f".{dest.name}.tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "checkpoint.json", extra)
        _swap_dir(tmp, dest)
    accelerator.wait_for_everyone()


def _copy_hf(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    _swap_dir(tmp, dest)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: peak resident set size of this process (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to optimizer step ``step`` (those after it will be recomputed)."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------


def _step_losses(model, batch, tcfg, **kwargs) -> LossOutput:
    """One micro-batch forward (a seam for tests that simulate a crash mid-run)."""
    return compute_losses(model, batch, tcfg, **kwargs)


def _load_teacher_side(cfg: ExperimentConfig, teacher_dir: Optional[Path], device: torch.device):
    """(teacher tokenizer, teacher model, signal store) for the method."""
    from uld.models import load_model, load_tokenizer, resolve_model

    tcfg = cfg.training
    if tcfg.method not in DISTILL_METHODS:
        return None, None, None
    if tcfg.method == "uld" and tcfg.teacher_signal == "cached":
        from uld.teacher import TeacherSignalStore

        signal_dir = Path(teacher_dir) / "signal" if teacher_dir is not None else None
        if signal_dir is None or not signal_dir.exists():
            raise TrainingError(
                f"training.teacher_signal=cached but {signal_dir} does not exist: run the teacher stage with "
                "generation.store_signal=true, or use training.teacher_signal=online"
            )
        store = TeacherSignalStore(signal_dir)
        if tcfg.top_k is not None and tcfg.top_k > store.k:
            raise TrainingError(f"'training.top_k'={tcfg.top_k} exceeds the cached signal's top-k ({store.k}) in {signal_dir}")
        _check_signal_settings(cfg, Path(teacher_dir))
        # offsets alignment needs where each teacher token starts in the answer: its tokenizer suffices
        tok = load_tokenizer(resolve_model(cfg.teacher), padding_side="right") if tcfg.alignment == "offsets" else None
        return tok, None, store
    resolved = resolve_model(cfg.teacher)
    tok = load_tokenizer(resolved, padding_side="right")
    model = load_model(resolved)  # the registry's dtype (bf16 for the paper's teachers)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return tok, model, None


def _check_signal_settings(cfg: ExperimentConfig, teacher_dir: Path) -> None:
    """The cached signal must be the one the config asks for: its temperature (``generation.json``)."""
    meta_path = teacher_dir / "generation.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    cached_t = float((meta.get("signal") or {}).get("temperature", 1.0))
    if cached_t != cfg.training.teacher_temperature:
        raise TrainingError(
            f"{meta_path}: the teacher signal was cached at temperature {cached_t}, but "
            f"training.teacher_temperature={cfg.training.teacher_temperature}"
        )


def _vocab_strings(tok: Any, size: int) -> list[str]:
    """Text of every token id below ``size`` (ids beyond the tokenizer: ""), whitespace stripped."""
    n = len(tok)
    return [tok.decode([i]).strip() if i < n else "" for i in range(size)]


def _ot_cost(cfg: ExperimentConfig, s_tok: Any, t_tok: Any, s_vocab: int, t_vocab: int) -> Any:
    kind = cfg.training.ot_cost
    if kind == "uniform":
        return "uniform"
    if kind == "levenshtein":
        from uld.losses import levenshtein_cost

        return levenshtein_cost(_vocab_strings(s_tok, s_vocab), _vocab_strings(t_tok, t_vocab))
    raise TrainingError(
        "'training.ot_cost'=embedding is not wired into the trainer (it needs a shared token-embedding model); "
        "use uniform or levenshtein"
    )


def _check_same_vocab(student_tok: Any, teacher_tok: Any) -> None:
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise TrainingError(
            "training.method=kd-kl needs the teacher and the student to share one tokenizer; these two differ "
            "(use uld for cross-tokenizer distillation)"
        )


def train(
    cfg: ExperimentConfig,
    run: RunFolder,
    teacher_dir: Optional[Path],
    *,
    resume: bool = False,
    force_resume: bool = False,
) -> dict:
    """Train the student of ``cfg`` into ``run`` and return the summary (also ``train_summary.json``).

    Every process of an ``accelerate launch`` calls this. ``resume=True`` continues from
    ``checkpoints/state`` when it exists (a finished run returns its summary); ``resume=False`` starts
    from scratch and replaces earlier metrics and checkpoints of the folder.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from uld.models import load_model, load_tokenizer, resolve_model

    from uld.models import bind_run_models

    cfg = bind_run_models(cfg)
    tcfg = cfg.training
    if tcfg.method == "none":
        summary = {"method": "none", "trained": False}
        if _is_main():
            run.write_json("train_summary.json", summary)
        return summary
    if tcfg.method == "kd-kl" and tcfg.student_temperature != tcfg.teacher_temperature:
        raise TrainingError("kd-kl uses one temperature: set training.student_temperature == training.teacher_temperature")

    ckpt_dir = run.file("checkpoints")
    state_dir, last_dir, best_dir = ckpt_dir / "state", ckpt_dir / "last", ckpt_dir / "best"
    metrics_path = run.file("metrics.jsonl")

    accelerator = Accelerator(
        mixed_precision=tcfg.mixed_precision,
        log_with=list(tcfg.trackers) or None,
        project_dir=str(run.path),
    )
    main = accelerator.is_main_process
    world = accelerator.num_processes

    saved: Optional[dict] = None
    if resume and (state_dir / STATE_FILE).is_file():
        saved = json.loads((state_dir / STATE_FILE).read_text())
        problems = []
        if saved.get("config_hash") != resume_key(cfg):
            problems.append("the config differs from the one the state was saved with")
        if saved.get("num_processes") != world:
            problems.append(f"it was saved with {saved.get('num_processes')} processes, this run has {world}")
        if problems and not force_resume:
            raise ResumeError(
                f"refusing to resume {state_dir}: " + "; ".join(problems) + " (pass force_resume=True / --force-resume "
                "to continue anyway, or resume=False to start over)"
            )
        if not problems and saved.get("finished") and run.exists("train_summary.json"):
            log.info("training of %s already finished; nothing to resume", run.id)
            return run.read_json("train_summary.json")
    elif main:
        # a fresh start: nothing from an earlier attempt may leak into this run's records
        for p in (metrics_path, run.file("train_summary.json")):
            if p.exists():
                p.unlink()
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
    accelerator.wait_for_everyone()

    set_seed(tcfg.seed)

    # ---- models and data -------------------------------------------------------------------------
    s_resolved = resolve_model(cfg.student)
    enc_dec = s_resolved.is_encoder_decoder
    s_tok = load_tokenizer(s_resolved, padding_side="right")
    model = load_model(s_resolved)
    model.train()
    t_tok, teacher, store = _load_teacher_side(cfg, teacher_dir, accelerator.device)
    if tcfg.method == "kd-kl":
        _check_same_vocab(s_tok, t_tok)
    loss_kw: dict[str, Any] = {"encoder_decoder": enc_dec, "teacher": teacher, "student_eos_id": s_tok.eos_token_id}
    if tcfg.method == "uld-ot":
        loss_kw["ot_cost"] = _ot_cost(
            cfg, s_tok, t_tok, model.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0]
        )

    train_rows, val_rows, data_info = load_training_rows(cfg, teacher_dir)
    # the teacher side is never truncated: the teacher stage only kept rows that fit its context
    enc_kw = dict(student_encoder_decoder=enc_dec, max_length=cfg.data.max_length, teacher_tok=t_tok)
    train_items, train_counts = encode_rows(train_rows, s_tok, **enc_kw)
    val_items, val_counts = encode_rows(val_rows, s_tok, **enc_kw)
    if not train_items:
        raise TrainingError(f"no training rows left ({train_counts}); check the teacher answers and data.max_length")
    collator = DistillationCollator(s_tok.pad_token_id, t_tok.pad_token_id if t_tok is not None else None, store, tcfg.top_k)
    sampler = EpochSampler(len(train_items), tcfg.seed)
    # Own generators: creating a DataLoader iterator draws a seed, and drawing it from the global RNG
    # would shift the dropout masks of a resumed run (which creates one more iterator).
    train_dl = DataLoader(
        DistillationDataset(train_items), batch_size=tcfg.batch_size, sampler=sampler, collate_fn=collator,
        num_workers=tcfg.num_workers, generator=torch.Generator().manual_seed(tcfg.seed),
    )
    val_dl = DataLoader(
        DistillationDataset(val_items), batch_size=tcfg.batch_size, shuffle=False, collate_fn=collator,
        num_workers=tcfg.num_workers, generator=torch.Generator().manual_seed(tcfg.seed + 1),
    ) if val_items else None

    lr, lr_source = resolve_lr(tcfg, s_resolved.entry, cfg.data.task)
    optimizer = build_optimizer(model, lr, tcfg.weight_decay)
    if val_dl is not None:
        model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    else:
        model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    batches_per_epoch = len(train_dl)
    steps_per_epoch, total_steps = plan_steps(batches_per_epoch, tcfg.grad_accum, tcfg.epochs, tcfg.max_steps)
    # Not passed through prepare(): accelerate would step it once per process; we step it once per
    # optimizer step ourselves and only register it so that save_state/load_state carry it.
    scheduler = build_scheduler(optimizer, tcfg.scheduler, total_steps, lr, tcfg.warmup_ratio)
    accelerator.register_for_checkpointing(scheduler)

    select = tcfg.select
    if select == "best_val_loss" and val_dl is None:
        log.warning("no validation rows: checkpoint selection falls back to the last weights")
        select = "last"

    # ---- position ----------------------------------------------------------------------------------
    global_step, epoch, batch_in_epoch = 0, 0, 0
    best_loss, best_step = math.inf, None
    if saved is not None:
        accelerator.load_state(str(state_dir))
        global_step, epoch, batch_in_epoch = saved["global_step"], saved["epoch"], saved["batch_in_epoch"]
        best_loss = saved["best_val_loss"] if saved.get("best_val_loss") is not None else math.inf
        best_step = saved.get("best_step")
        if main:
            _truncate_metrics(metrics_path, global_step)
        log.info("resuming %s at optimizer step %d (epoch %d, micro-batch %d)", run.id, global_step, epoch, batch_in_epoch)
    accelerator.wait_for_everyone()

    if tcfg.trackers:
        from uld.config import to_dict

        flat = {}
        for section, vals in to_dict(cfg).items():
            if isinstance(vals, dict):
                flat.update({f"{section}.{k}": v for k, v in vals.items() if isinstance(v, (int, float, str, bool))})
        accelerator.init_trackers(run.id, config=flat)

    def position(epoch_: int, batch_: int) -> dict:
        return {"global_step": global_step, "epoch": epoch_, "batch_in_epoch": batch_}

    def save_state(epoch_: int, batch_: int, finished: bool = False) -> None:
        tmp = ckpt_dir / ".state.tmp"
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            atomic_write_json(tmp / STATE_FILE, {
                **position(epoch_, batch_),
                "best_val_loss": None if math.isinf(best_loss) else best_loss,
                "best_step": best_step,
                "config_hash": resume_key(cfg),
                "num_processes": world,
                "total_steps": total_steps,
                "finished": finished,
            })
            _swap_dir(tmp, state_dir)
        accelerator.wait_for_everyone()

    def evaluate() -> float:
        model.eval()
        nll_sum, tok_sum = 0.0, 0.0
        with torch.no_grad():
            for vb in val_dl:
                with accelerator.autocast():
                    logits, labels, causal = student_answer_logits(model, vb, enc_dec, answer_only=tcfg.logits == "answer")
                nll, n = answer_nll(logits, labels, causal=causal)
                # gather_for_metrics drops the samples accelerate repeats to even out the last batch
                nll, n = accelerator.gather_for_metrics((nll, n))
                nll_sum += float(nll.sum())
                tok_sum += float(n.sum())
        model.train()
        return nll_sum / max(tok_sum, 1.0)

    def log_record(rec: dict) -> None:
        if main:
            append_jsonl(metrics_path, rec)
        if tcfg.trackers:
            accelerator.log({f"{rec['split']}/{k}": v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=rec["step"])

    def do_eval_and_select(epoch_: int, batch_: int) -> None:
        nonlocal best_loss, best_step
        val_loss = evaluate()
        improved = val_loss < best_loss
        if improved:
            best_loss, best_step = val_loss, global_step
        log_record({"step": global_step, "epoch": round(epoch_ + batch_ / batches_per_epoch, 4), "split": "val",
                    "loss": val_loss, "ce": val_loss, "best": improved})
        if improved and select == "best_val_loss":
            _save_hf(accelerator, model, s_tok, best_dir, {"step": global_step, "val_loss": val_loss, "rule": select})

    # ---- loop --------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=global_step, disable=not main, desc=f"train {tcfg.method}", dynamic_ncols=True)
    window: dict[str, float] = {"loss": 0.0, "ce": 0.0, "distill": 0.0, "n": 0, "tokens": 0}
    t_window = time.perf_counter()
    grad_norm: Optional[float] = None
    started = time.perf_counter()
    n_epochs = math.ceil(total_steps / steps_per_epoch) + 1
    done = global_step >= total_steps

    while not done and epoch < n_epochs:
        train_dl.set_epoch(epoch)
        skip = batch_in_epoch
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        for i, batch in enumerate(loader, start=skip):
            # accumulation window of micro-batch i: windows restart at each epoch, the last may be short
            w_start = (i // tcfg.grad_accum) * tcfg.grad_accum
            w_len = min(tcfg.grad_accum, batches_per_epoch - w_start)
            sync = i == w_start + w_len - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx:
                with accelerator.autocast():
                    out = _step_losses(model, batch, tcfg, **loss_kw)
                bad = torch.tensor(0.0 if bool(torch.isfinite(out.loss.detach())) else 1.0, device=accelerator.device)
                if float(accelerator.reduce(bad, "sum")) > 0:
                    ids = [r for rs in _gather_objects(accelerator, batch["row_ids"]) for r in rs]
                    diverged = ckpt_dir / "diverged"
                    optimizer.zero_grad(set_to_none=True)
                    _save_hf(accelerator, model, s_tok, diverged, {"step": global_step, "row_ids": ids})
                    bar.close()
                    raise TrainingDiverged(global_step, ids, diverged, float(out.loss.detach()))
                accelerator.backward(out.loss / w_len)
            window["loss"] += float(out.loss.detach())
            window["ce"] += float(out.ce)
            window["distill"] += float(out.distill) if out.distill is not None else 0.0
            window["n"] += 1
            window["tokens"] += out.n_tokens
            if not sync:
                continue

            lr_used = scheduler.get_last_lr()[0]  # the rate this optimizer step applies
            if tcfg.max_grad_norm is not None:
                gn = accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                grad_norm = float(gn) if gn is not None else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            bar.update(1)
            pos_epoch, pos_batch = (epoch, i + 1) if i + 1 < batches_per_epoch else (epoch + 1, 0)

            if global_step % tcfg.log_every == 0 or global_step == total_steps:
                stats = accelerator.reduce(
                    torch.tensor([window["loss"], window["ce"], window["distill"], window["n"], window["tokens"]],
                                 dtype=torch.float64, device=accelerator.device), "sum")
                loss_m, ce_m, dist_m, n_m, tok = stats.tolist()
                elapsed = time.perf_counter() - t_window
                rec = {
                    "step": global_step,
                    "epoch": round(epoch + (i + 1) / batches_per_epoch, 4),
                    "split": "train",
                    "loss": loss_m / n_m,
                    "ce": ce_m / n_m,
                    # the distillation term under its loss's name: "uld" (uld, uld-ot) or "kl" (kd-kl)
                    DISTILL_LOG_KEY.get(tcfg.method, "uld"): dist_m / n_m if tcfg.method in DISTILL_METHODS else None,
                    "lr": lr_used,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tok / elapsed if elapsed > 0 else None,
                    "max_memory_mb": round(_peak_memory_mb(accelerator.device), 1),
                }
                log_record(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                window = {"loss": 0.0, "ce": 0.0, "distill": 0.0, "n": 0, "tokens": 0}
                t_window = time.perf_counter()

            finished = global_step >= total_steps
            end_of_epoch = i + 1 == batches_per_epoch
            if val_dl is not None and (
                finished or (tcfg.eval_every and global_step % tcfg.eval_every == 0) or (not tcfg.eval_every and end_of_epoch)
            ):
                do_eval_and_select(pos_epoch, pos_batch)
            if finished or (tcfg.save_every and global_step % tcfg.save_every == 0) or (not tcfg.save_every and end_of_epoch):
                _save_hf(accelerator, model, s_tok, last_dir, {"step": global_step})
                save_state(pos_epoch, pos_batch, finished=finished)
            if finished:
                done = True
                break
        epoch += 1
        batch_in_epoch = 0
    bar.close()

    # ---- selection and summary ---------------------------------------------------------------------
    if main:
        if select == "last" or not best_dir.exists():
            _copy_hf(last_dir, best_dir)
            if select == "best_val_loss":
                log.warning("no validation pass improved on infinity; checkpoints/best is the last checkpoint")
        if not tcfg.keep_last and select != "last":
            shutil.rmtree(last_dir, ignore_errors=True)
        if not tcfg.keep_state:
            _prune_state(state_dir)
    accelerator.wait_for_everyone()
    summary = {
        "method": tcfg.method,
        "trained": True,
        "steps": global_step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": tcfg.epochs,
        "num_processes": world,
        "global_batch": tcfg.batch_size * world * tcfg.grad_accum,
        "lr": lr,
        "lr_source": lr_source,
        "select": select,
        "best_step": best_step if select == "best_val_loss" else global_step,
        "best_val_loss": None if math.isinf(best_loss) else best_loss,
        "train_rows": train_counts,
        "val_rows": val_counts,
        "data": data_info,
        "teacher_dir": str(teacher_dir) if teacher_dir is not None else None,
        "wall_s": round(time.perf_counter() - started, 2),
        "resumed": saved is not None,
    }
    if main:
        run.write_json("train_summary.json", summary)
    if tcfg.trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return summary


def _gather_objects(accelerator: Any, obj: Any) -> list:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
