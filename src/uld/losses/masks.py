"""Which logit positions are compared, and how student and teacher positions are paired.

Masks are bool ``[B, T]`` and mark LOGIT positions, i.e. positions whose logits predict an answer token
(already shifted for causal LMs). Pairing (paper): in each row, the i-th marked student position is
paired with the i-th marked teacher position for ``i < min(n_s, n_t)``; extra positions on the longer
side are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from uld.losses._common import _check_mask

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "answer_logit_targets", "answer_logit_mask", "positional_pairs"]


def answer_logit_targets(labels: Tensor, causal: bool = True) -> Tensor:
    """Token each logit position must predict, ``IGNORE_INDEX`` where none.

    labels: ``[B, T]`` long, -100 on prompt/padding. Causal LMs: logits at ``t`` predict
    ``labels[:, t + 1]`` (the last position predicts nothing). Encoder-decoder models: logits at
    ``t`` predict ``labels[:, t]`` (the decoder input is already shifted).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be [B, T], got shape {tuple(labels.shape)}")
    if not causal:
        return labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def answer_logit_mask(
    labels: Tensor,
    causal: bool = True,
    skip_eos: bool = False,
    eos_token_id: int | None = None,
) -> Tensor:
    """Bool ``[B, T]`` marking the logit positions that predict a supervised (answer) token.

    Causal LMs: position ``t`` is marked iff ``labels[:, t + 1] != -100`` (never the last position).
    Encoder-decoder (``causal=False``): iff ``labels[:, t] != -100``.

    ``skip_eos`` drops, in each row, the position that predicts the LAST supervised token (the
    paper skips the student's EOS). With ``eos_token_id`` given, it is dropped only where that last
    token really is ``eos_token_id``, so rows whose answer was truncated keep their last token.
    """
    targets = answer_logit_targets(labels, causal)
    mask = targets != IGNORE_INDEX
    if skip_eos:
        # The last marked position of a row is the one whose count of marked positions to its
        # right (inclusive) is 1.
        from_right = mask.flip(1).cumsum(1).flip(1)
        last = mask & (from_right == 1)
        if eos_token_id is not None:
            last &= targets == eos_token_id
        mask = mask & ~last
    return mask


def positional_pairs(student_mask: Tensor, teacher_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair the i-th marked student position with the i-th marked teacher position of each row.

    student_mask ``[B, Ts]``, teacher_mask ``[B, Tt]`` (bool). Returns long tensors
    ``(s_row, s_pos, t_row, t_pos)`` of equal length ``P = sum_b min(n_s[b], n_t[b])``, ordered by
    row then rank, with ``s_row == t_row``. Vectorised; ``nonzero`` is the only host sync.
    """
    _check_mask("student_mask", student_mask)
    _check_mask("teacher_mask", teacher_mask)
    if student_mask.shape[0] != teacher_mask.shape[0]:
        raise ValueError(
            f"student_mask and teacher_mask disagree on the batch size: "
            f"{student_mask.shape[0]} vs {teacher_mask.shape[0]}"
        )
    n = torch.minimum(student_mask.sum(1), teacher_mask.sum(1)).unsqueeze(1)
    keep_s = student_mask & (student_mask.cumsum(1) <= n)
    keep_t = teacher_mask & (teacher_mask.cumsum(1) <= n)
    # nonzero walks rows in order, and each row keeps exactly n[b] positions on both sides, so the
    # k-th student hit and the k-th teacher hit are partners.
    s_row, s_pos = keep_s.nonzero(as_tuple=True)
    t_row, t_pos = keep_t.nonzero(as_tuple=True)
    return s_row, s_pos, t_row, t_pos
