"""The losses as ``torch.nn.Module`` s, for any training loop (transformers ``Trainer``, TRL, your own).

:class:`ULDLoss` is ``CE + lam * ULD`` on one batch: the student's logits and labels, and the teacher as
logits (an online teacher with any tokenizer) or as a cached signal (:class:`uld.signal.TeacherSignalStore`,
written by ``uld generate``). :class:`KDLoss` is the same for a teacher that shares the student's
tokenizer (``CE + lam * KL``). Both read the answer positions from the labels (-100 off the answer), so
the caller only tokenizes prompt + answer as usual::

    loss_fn = ULDLoss(lam=1.5)
    signal, lengths = store.get(batch["row_ids"])
    loss = loss_fn(model(**inputs).logits, batch["labels"], signal, teacher_lengths=lengths)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uld.losses.kl import kd_kl
from uld.losses.masks import answer_logit_mask
from uld.losses.uld import TeacherSignal, distillation_objective, uld_loss

__all__ = ["LossParts", "ULDLoss", "KDLoss"]


class LossParts(NamedTuple):
    loss: Tensor  # what is back-propagated: ce + lam * distill
    ce: Tensor  # detached
    distill: Tensor  # detached


class _DistillLoss(nn.Module):
    def __init__(self, *, lam: float, encoder_decoder: bool, skip_student_eos: bool, skip_teacher_eos: bool,
                 student_eos_id: Optional[int], reduction: str):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam, self.encoder_decoder, self.reduction = lam, encoder_decoder, reduction
        self.skip_student_eos, self.skip_teacher_eos, self.student_eos_id = skip_student_eos, skip_teacher_eos, student_eos_id

    def _ce_and_mask(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        causal = not self.encoder_decoder
        lg, lb = (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)
        ce = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)
        mask = answer_logit_mask(labels, causal=causal, skip_eos=self.skip_student_eos, eos_token_id=self.student_eos_id)
        return ce, mask

    def _teacher_mask(self, teacher_labels: Optional[Tensor], teacher_lengths: Optional[Tensor], width: int, device) -> Tensor:
        if teacher_lengths is not None:
            lengths = torch.as_tensor(teacher_lengths, device=device) - int(self.skip_teacher_eos)
            return torch.arange(width, device=device)[None, :] < lengths[:, None]
        if teacher_labels is None:
            raise ValueError("give teacher_labels (teacher logits) or teacher_lengths (a cached signal)")
        # teacher logits are always causal: the teacher is a decoder that read prompt + answer
        return answer_logit_mask(teacher_labels, causal=True, skip_eos=self.skip_teacher_eos)

    def _finish(self, ce: Tensor, term: Tensor, return_parts: bool):
        total = distillation_objective(ce, term, self.lam)
        return LossParts(total, ce.detach(), term.detach()) if return_parts else total


class ULDLoss(_DistillLoss):
    """``CE + lam * ULD`` (Boizard et al., 2024) for a teacher with any tokenizer.

    ``forward(student_logits [B, Ts, Vs], labels [B, Ts], teacher, teacher_labels=None, teacher_lengths=None)``:
    ``teacher`` is logits ``[B, Tt, Vt]`` with ``teacher_labels`` ``[B, Tt]`` (-100 off the answer; the
    teacher read its own prompt + the same answer), or a :class:`uld.losses.TeacherSignal` (cached, one row
    per answer token plus EOS) with ``teacher_lengths [B]``. Positions are paired by rank within each
    row. ``top_k`` (logits only): the top-k form of the distance, a lower bound of the exact one;
    ``None``: exact. Returns the scalar loss, or ``LossParts(loss, ce, distill)`` with ``return_parts``.
    """

    def __init__(self, lam: float = 1.5, *, student_temperature: float = 1.0, teacher_temperature: float = 1.0,
                 top_k: Optional[int] = None, reduction: str = "sample", encoder_decoder: bool = False,
                 skip_student_eos: bool = True, skip_teacher_eos: bool = False, student_eos_id: Optional[int] = None,
                 chunk_size: Optional[int] = None):
        super().__init__(lam=lam, encoder_decoder=encoder_decoder, skip_student_eos=skip_student_eos,
                         skip_teacher_eos=skip_teacher_eos, student_eos_id=student_eos_id, reduction=reduction)
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.top_k, self.chunk_size = top_k, chunk_size

    def forward(self, student_logits: Tensor, labels: Tensor, teacher: Tensor | TeacherSignal, teacher_labels: Optional[Tensor] = None,
                teacher_lengths: Optional[Tensor] = None, *, return_parts: bool = False):
        ce, s_mask = self._ce_and_mask(student_logits, labels)
        cached = isinstance(teacher, TeacherSignal)
        width = (teacher.probs if cached else teacher).shape[1]
        t_mask = self._teacher_mask(teacher_labels, teacher_lengths, width, student_logits.device)
        term = uld_loss(student_logits, teacher, s_mask, t_mask, student_temperature=self.student_temperature,
                        teacher_temperature=1.0 if cached else self.teacher_temperature, top_k=None if cached else self.top_k,
                        reduction=self.reduction, chunk_size=self.chunk_size)
        return self._finish(ce, term, return_parts)


class KDLoss(_DistillLoss):
    """``CE + lam * T^2 KL(teacher || student)`` for a teacher that shares the student's tokenizer.

    ``forward(student_logits [B, Ts, V], labels [B, Ts], teacher_logits [B, Tt, V], teacher_labels [B, Tt])``.
    """

    def __init__(self, lam: float = 1.0, *, temperature: float = 1.0, reduction: str = "sample", encoder_decoder: bool = False,
                 skip_student_eos: bool = True, skip_teacher_eos: bool = False, student_eos_id: Optional[int] = None):
        super().__init__(lam=lam, encoder_decoder=encoder_decoder, skip_student_eos=skip_student_eos,
                         skip_teacher_eos=skip_teacher_eos, student_eos_id=student_eos_id, reduction=reduction)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor, teacher_labels: Tensor, *,
                return_parts: bool = False):
        ce, s_mask = self._ce_and_mask(student_logits, labels)
        t_mask = self._teacher_mask(teacher_labels, None, teacher_logits.shape[1], student_logits.device)
        term = kd_kl(student_logits, teacher_logits, s_mask, t_mask, temperature=self.temperature, reduction=self.reduction)
        return self._finish(ce, term, return_parts)
