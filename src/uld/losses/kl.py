"""Classic logit distillation for teacher and student that share a tokenizer (the KL baseline)."""

from __future__ import annotations

from torch import Tensor

from uld.losses._common import _check_logits, _check_mask_shape, _check_positive, _check_reduction, _reduce, _scaled_logits
from uld.losses.masks import positional_pairs

__all__ = ["kd_kl"]


def kd_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "sample",
) -> Tensor:
    """Classic logit distillation for a SHARED tokenizer: ``T^2 * KL(p_t^T || p_s^T)`` per pair.

    student_logits ``[B, Ts, V]``, teacher_logits ``[B, Tt, V]`` (same V, same token ids), masks and
    pairing as in :func:`uld_loss`. The ``T^2`` factor keeps gradient magnitudes comparable across
    temperatures (Hinton et al., 2015). Raises ``ValueError`` when the vocabularies differ.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    _check_positive("temperature", temperature)
    _check_reduction(reduction)
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vs != vt:
        raise ValueError(
            f"kd_kl needs the same vocabulary on both sides, got student V={vs} and teacher V={vt}; "
            "for different tokenizers use uld_loss (if only the embedding matrices are padded "
            "differently, slice both logits to len(tokenizer) first)"
        )
    _check_mask_shape("student_mask", student_mask, student_logits)
    _check_mask_shape("teacher_mask", teacher_mask, teacher_logits)
    s_row, s_pos, t_row, t_pos = positional_pairs(student_mask, teacher_mask)
    log_ps = _scaled_logits(student_logits, s_row, s_pos, temperature).log_softmax(-1)
    log_pt = _scaled_logits(teacher_logits.detach(), t_row, t_pos, temperature).log_softmax(-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1) * (temperature**2)
    return _reduce(kl, s_row, student_logits.shape[0], reduction)
