"""Distillation losses: Universal Logit Distillation (ULD) and its baselines/ablations.

ULD (Boizard et al., 2024, arXiv 2402.12030) compares a student and a teacher that do NOT share a
tokenizer. For a pair of positions it sorts both next-token distributions in decreasing order,
zero-pads the smaller vocabulary and takes the L1 distance::

    d(p_s, p_t) = sum_v | sort_desc(p_s)_v - sort_desc(p_t)_v |          (no 1/2 factor)

which is the minimum, over all bijections between the (padded) vocabularies, of the L1 distance.

Conventions shared by every loss here
-------------------------------------
* Masks are bool ``[B, T]`` and mark LOGIT positions, i.e. positions whose logits predict an answer
  token (already shifted for causal LMs; see :func:`answer_logit_mask`).
* Pairing (paper): in each row, the i-th marked student position is paired with the i-th marked
  teacher position for ``i < min(n_s, n_t)``; extra positions on the longer side are ignored. Other
  pairings (e.g. by character offsets, see ``uld.alignment``) are expressed by passing masks that
  keep only the paired positions: the pairs are order preserving, so rank pairing reproduces them.
* The teacher is a target: it never receives gradients.
* All arithmetic runs in float32 whatever the logits dtype (bf16 softmax/sort is too coarse), and
  gradients are returned in the logits' dtype.
* ``reduction``: ``"sample"`` = mean over the pairs of a row, then mean over the rows that have at
  least one pair (paper); ``"token"`` = mean over all pairs; ``"sum"`` = sum over all pairs. With no
  pair at all the loss is an exact zero that is still attached to the graph.

Memory (exact mode)
-------------------
A naive implementation keeps, for backward, the fp32 softmax AND the int64 sort permutation of every
position: 12 bytes per student logit. :class:`_PairedSortedL1` instead processes ``chunk_size``
pairs at a time and keeps only ONE BIT per student logit: the sign of ``sorted_s - sorted_t``
scattered back to vocabulary order, which is all the backward needs (see its docstring). The
softmax is recomputed in backward (cheap next to a sort). Extra memory is therefore
``chunk_size x V`` working buffers plus ``B x T x Vs / 8`` bytes.

Positions are compacted with ``nonzero`` (one host synchronisation per call for the pairing); there
is no per-row Python loop and no ``.item()``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from uld.losses._common import (
    _check_logits,
    _check_mask_shape,
    _check_positive,
    _check_reduction,
    _compute_dtype,
    _reduce,
    _scaled_logits,
)
from uld.losses.masks import positional_pairs

__all__ = ["TeacherSignal", "teacher_signal_from_logits", "fold_tail", "uld_distance", "uld_loss", "distillation_objective"]

# Working-set budget of one chunk, in vocabulary entries (rows x V): 4 MiB per fp32 buffer. Smaller
# chunks cost no measurable time (the sort dominates) and keep the peak well under the paper-style loop.
_CHUNK_ELEMENTS = 1 << 20
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


class TeacherSignal(NamedTuple):
    """Cached teacher output: the k largest next-token probabilities and the remaining mass.

    probs: ``[B, Tt, k]`` sorted in decreasing order (stored as float16 by the teacher stage,
        upcast to float32 by the losses).
    tail:  ``[B, Tt]`` = 1 - probs.sum(-1) computed before rounding, i.e. the mass of the other
        ``Vt - k`` tokens.
    """

    probs: Tensor
    tail: Tensor


def teacher_signal_from_logits(logits: Tensor, k: int, *, temperature: float = 1.0) -> TeacherSignal:
    """Top-k sorted probabilities and tail mass of ``softmax(logits / temperature)``.

    logits: ``[..., V]``. Returns probs ``[..., min(k, V)]`` and tail ``[...]`` in float32 (float64
    for float64 logits); the teacher stage casts them to float16 for storage.
    """
    _check_positive("temperature", temperature)
    z = logits.detach().to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    top = z.topk(min(k, z.shape[-1]), dim=-1, sorted=True).values
    probs = (top - lse).exp_()
    tail = (1.0 - probs.sum(-1)).clamp_(min=0.0)
    return TeacherSignal(probs, tail)


def fold_tail(probs: Tensor, tail: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` largest of sorted probabilities ``[..., k0]`` and add the rest to ``tail [...]``
    (a top-k' signal from a top-k cache, k' <= k)."""
    if k >= probs.shape[-1]:
        return probs, tail
    return probs[..., :k], tail + probs[..., k:].sum(-1)


def uld_distance(p_s: Tensor, p_t: Tensor) -> Tensor:
    """Exact ULD distance between distributions ``p_s [..., Vs]`` and ``p_t [..., Vt]`` -> ``[...]``.

    Sort both in decreasing order, zero-pad the shorter and sum the absolute differences. Plain
    autograd (keeps the sort permutation); meant for small inputs and tests. :func:`uld_loss` is the
    memory-bounded version on logits.
    """
    a = p_s.sort(dim=-1, descending=True).values
    b = p_t.sort(dim=-1, descending=True).values
    width = max(a.shape[-1], b.shape[-1])
    a = F.pad(a, (0, width - a.shape[-1]))
    b = F.pad(b, (0, width - b.shape[-1]))
    return (a - b).abs().sum(-1)


def _packbits(x: Tensor) -> Tensor:
    """Bool ``[c, V]`` -> uint8 ``[c, ceil(V / 8)]`` (little-endian within a byte)."""
    c, v = x.shape
    pad = (-v) % 8
    if pad:
        x = F.pad(x, (0, pad))
    shifts = _BIT_SHIFTS.to(x.device)
    return (x.view(c, -1, 8).to(torch.uint8) << shifts).sum(-1, dtype=torch.uint8)


def _unpack_signs(packed: Tensor, v: int, dtype: torch.dtype) -> Tensor:
    """uint8 ``[c, ceil(V / 8)]`` -> ``[c, V]`` of +1 (bit set) / -1 (bit clear)."""
    shifts = _BIT_SHIFTS.to(packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.view(packed.shape[0], -1)[:, :v].to(dtype).mul_(2.0).sub_(1.0)


def _teacher_rows(
    teacher: Tensor,
    tail: Tensor | None,
    rows: Tensor,
    pos: Tensor,
    temperature: float,
    k: int | None,
) -> tuple[Tensor, Tensor | None]:
    """Sorted teacher probabilities of the chunk: ``[c, Vt]`` (exact) or ``[c, k]`` plus tail ``[c]``."""
    if tail is not None:  # cached signal: already sorted probabilities
        probs = teacher[rows, pos].to(_compute_dtype(teacher.dtype))
        t_tail = tail[rows, pos].to(probs.dtype)
        if k is not None and k < probs.shape[-1]:
            probs, t_tail = fold_tail(probs, t_tail, k)
        return probs, t_tail
    z = _scaled_logits(teacher, rows, pos, temperature)
    if k is None:
        return z.softmax(-1).sort(dim=-1, descending=True).values, None
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    probs = (z.topk(min(k, z.shape[-1]), dim=-1, sorted=True).values - lse).exp_()
    return probs, (1.0 - probs.sum(-1)).clamp_(min=0.0)


class _PairedSortedL1(torch.autograd.Function):
    """Per-pair ULD distances ``[P]`` with gradients to the student logits only.

    Backward needs ``dd/dp_s[v] = sign(a_r - b_r)`` where ``r`` is the rank of token ``v`` in the
    student's sorted distribution ``a`` (``b`` = sorted teacher). Forward stores exactly that sign,
    one bit per student logit in vocabulary order, so neither the permutation (int64) nor the
    softmax (fp32) of all positions is kept; backward recomputes the softmax chunk by chunk and
    applies its Jacobian: ``dz = p * (g - <p, g>) / T``. A sign at a tie (``a_r == b_r``) is a valid
    subgradient either way; ties at zero probability have ``p_v = 0`` and contribute nothing.

    Top-k mode: ``d = sum_{r<k} |a_r - b_r| + |tail_s - tail_t|``; tokens outside the student's
    top-k get the sign of the tail difference (``tail_s`` is the sum of their probabilities).
    """

    @staticmethod
    def forward(ctx, student_logits, s_row, s_pos, t_row, t_pos, teacher, teacher_tail, s_temp, t_temp, top_k, chunk):
        vs = student_logits.shape[-1]
        n_pairs = s_row.shape[0]
        dist = torch.empty(n_pairs, dtype=_compute_dtype(student_logits.dtype), device=student_logits.device)
        saved = []
        for start in range(0, n_pairs, chunk):
            sl = slice(start, start + chunk)
            z = _scaled_logits(student_logits, s_row[sl], s_pos[sl], s_temp)
            b, t_tail = _teacher_rows(teacher, teacher_tail, t_row[sl], t_pos[sl], t_temp, top_k)
            if top_k is None:
                a, idx = z.softmax(-1).sort(dim=-1, descending=True)
                m = min(vs, b.shape[-1])
                diff = a
                diff[:, :m] -= b[:, :m]
                pos_sorted = diff > 0
                d = diff.abs_().sum(-1)
                if b.shape[-1] > vs:  # student padded with zeros: |0 - b| = b
                    d += b[:, vs:].sum(-1)
                signs = torch.empty_like(pos_sorted).scatter_(1, idx, pos_sorted)
                del a, idx, diff, pos_sorted
                saved.append(_packbits(signs))
            else:
                lse = torch.logsumexp(z, dim=-1, keepdim=True)
                vals, idx = z.topk(min(top_k, vs), dim=-1, sorted=True)
                a = (vals - lse).exp_()
                s_tail = (1.0 - a.sum(-1)).clamp_(min=0.0)
                width = max(a.shape[-1], b.shape[-1])
                diff = F.pad(a, (0, width - a.shape[-1])) - F.pad(b, (0, width - b.shape[-1]))
                tail_diff = s_tail - t_tail
                d = diff.abs().sum(-1) + tail_diff.abs()
                saved.append((idx, diff[:, : a.shape[-1]] > 0, tail_diff > 0))
            dist[sl] = d
        ctx.saved_chunks = saved
        ctx.meta = (student_logits.shape, student_logits.dtype, s_temp, top_k, chunk)
        ctx.save_for_backward(student_logits, s_row, s_pos)
        return dist

    @staticmethod
    def backward(ctx, grad_dist):
        student_logits, s_row, s_pos = ctx.saved_tensors
        shape, dtype, s_temp, top_k, chunk = ctx.meta
        vs = shape[-1]
        grad = torch.zeros(shape, dtype=dtype, device=student_logits.device)
        for i, start in enumerate(range(0, s_row.shape[0], chunk)):
            sl = slice(start, start + chunk)
            rows, pos = s_row[sl], s_pos[sl]
            p = _scaled_logits(student_logits, rows, pos, s_temp).softmax(-1)
            if top_k is None:
                g = _unpack_signs(ctx.saved_chunks[i], vs, p.dtype)
            else:
                idx, top_sign, tail_sign = ctx.saved_chunks[i]
                g = tail_sign.to(p.dtype).mul_(2.0).sub_(1.0).unsqueeze(1).expand(-1, vs).contiguous()
                g.scatter_(1, idx, top_sign.to(p.dtype).mul_(2.0).sub_(1.0))
            g -= (p * g).sum(-1, keepdim=True)
            g *= p
            g *= (grad_dist[sl].to(p.dtype) / s_temp).unsqueeze(1)
            # Each student position occurs in at most one pair, so plain assignment is enough.
            grad[rows, pos] = g.to(dtype)
        return grad, None, None, None, None, None, None, None, None, None, None


def uld_loss(
    student_logits: Tensor,
    teacher: Tensor | TeacherSignal,
    student_mask: Tensor,
    teacher_mask: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    top_k: int | None = None,
    reduction: str = "sample",
    chunk_size: int | None = None,
) -> Tensor:
    """Universal Logit Distillation loss (scalar, float32).

    student_logits: ``[B, Ts, Vs]`` (any float dtype; computed in float32).
    teacher: logits ``[B, Tt, Vt]``, or a :class:`TeacherSignal` (``probs [B, Tt, k]`` sorted
        decreasing, ``tail [B, Tt]``). Never receives gradients.
    student_mask ``[B, Ts]`` / teacher_mask ``[B, Tt]``: bool, logit positions that predict answer
        tokens. Paired positionally per row (see module docstring).

    ``top_k=None`` with teacher logits: the exact distance (full sort of both vocabularies).
    ``top_k=k``: ``sum_{r<k} |a_r - b_r| + |tail_s - tail_t|`` over the k largest probabilities of
    each side and the remaining masses. By the triangle inequality this is a LOWER bound of the
    exact distance, and the gap is at most ``2 * min(tail_s, tail_t)``. It is exact when
    ``k >= max(Vs, Vt)``.

    With a cached :class:`TeacherSignal` of width k only the top-k form is defined: ``top_k=None``
    means ``top_k = k`` (the signal width), and ``top_k < k`` folds the extra teacher entries into
    the tail. ``teacher_temperature`` must be 1 (the signal was cached at temperature 1).

    ``chunk_size``: pairs processed at a time (default: about 1M vocabulary entries per chunk).
    """
    _check_logits("student_logits", student_logits)
    _check_positive("student_temperature", student_temperature)
    _check_positive("teacher_temperature", teacher_temperature)
    _check_reduction(reduction)
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")

    if isinstance(teacher, TeacherSignal):
        t_values, t_tail = teacher.probs, teacher.tail
        if t_values.dim() != 3 or t_tail.shape != t_values.shape[:2]:
            raise ValueError(
                f"TeacherSignal needs probs [B, Tt, k] and tail [B, Tt], got {tuple(t_values.shape)} "
                f"and {tuple(t_tail.shape)}"
            )
        if teacher_temperature != 1.0:
            raise ValueError(
                "teacher_temperature must be 1.0 with a cached TeacherSignal: its probabilities were "
                "computed at temperature 1 and the tail mass cannot be re-tempered"
            )
        width = t_values.shape[-1]
        if top_k is None:
            top_k = width
        elif top_k > width:
            raise ValueError(f"top_k={top_k} exceeds the width of the cached teacher signal ({width})")
        t_values, t_tail = t_values.detach(), t_tail.detach()
    else:
        _check_logits("teacher logits", teacher)
        t_values, t_tail = teacher.detach(), None
    if t_values.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"student and teacher disagree on the batch size: {student_logits.shape[0]} vs {t_values.shape[0]}"
        )
    _check_mask_shape("student_mask", student_mask, student_logits)
    _check_mask_shape("teacher_mask", teacher_mask, t_values)

    s_row, s_pos, t_row, t_pos = positional_pairs(student_mask, teacher_mask)
    if chunk_size is None:
        width = max(student_logits.shape[-1], t_values.shape[-1])
        chunk_size = max(1, _CHUNK_ELEMENTS // width)
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dist = _PairedSortedL1.apply(
        student_logits, s_row, s_pos, t_row, t_pos, t_values, t_tail,
        float(student_temperature), float(teacher_temperature), top_k, int(chunk_size),
    )  # fmt: skip
    return _reduce(dist, s_row, student_logits.shape[0], reduction)


def distillation_objective(ce: Tensor, uld: Tensor, lam: float = 1.5) -> Tensor:
    """Total training objective ``CE + lam * ULD`` (paper: lam = 1.5; lam = 0 is plain CE)."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    return ce + lam * uld
