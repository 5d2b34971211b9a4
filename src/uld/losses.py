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

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TeacherSignal",
    "answer_logit_mask",
    "answer_logit_targets",
    "distillation_objective",
    "embedding_cost",
    "fold_tail",
    "kd_kl",
    "levenshtein_cost",
    "normalized_levenshtein",
    "positional_pairs",
    "teacher_signal_from_logits",
    "uld_distance",
    "uld_loss",
    "uld_ot",
]

IGNORE_INDEX = -100
REDUCTIONS = ("sample", "token", "sum")
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


# --------------------------------------------------------------------------------------------------
# Masks and pairing
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The ULD distance on pre-computed distributions (reference-friendly form)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The chunked, recomputing autograd Function
# --------------------------------------------------------------------------------------------------


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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 for half/bfloat16/float32 inputs; float64 inputs stay float64 (gradcheck).
    return torch.promote_types(dtype, torch.float32)


def _scaled_logits(logits: Tensor, rows: Tensor, pos: Tensor, temperature: float) -> Tensor:
    z = logits[rows, pos].to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    return z


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


# --------------------------------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Optimal-transport ablation
# --------------------------------------------------------------------------------------------------

CostFn = Callable[[Tensor, Tensor], Tensor]
"""``cost(student_ids [P, k], teacher_ids [P, k]) -> [P, k, k]`` transport costs in [0, 1]."""


def normalized_levenshtein(a: Tensor, a_len: Tensor, b: Tensor, b_len: Tensor) -> Tensor:
    """Edit distance / max(len) between code-point strings, batched, in [0, 1] (0 for two empties).

    a ``[N, La]``, b ``[N, Lb]``: int code points (padding ignored); a_len, b_len ``[N]``.
    Row by row dynamic programme; the insertion chain within a row is resolved with a cumulative
    minimum (``d[j] = min_{j' <= j} x[j'] + (j - j')``), so the only Python loop is over ``La``.
    """
    n, la = a.shape
    lb = b.shape[1]
    steps = torch.arange(lb + 1, device=a.device)
    prev = steps.expand(n, lb + 1).clone()
    result = prev.gather(1, b_len.view(-1, 1)).squeeze(1).clone()  # a empty: distance = len(b)
    for i in range(1, la + 1):
        sub = prev[:, :-1] + (a[:, i - 1 : i] != b).long()
        x = torch.cat([torch.full((n, 1), i, device=a.device, dtype=prev.dtype), torch.minimum(prev[:, 1:] + 1, sub)], 1)
        cur = torch.cummin(x - steps, dim=1).values + steps
        done = a_len == i
        result = torch.where(done, cur.gather(1, b_len.view(-1, 1)).squeeze(1), result)
        prev = cur
    longest = torch.maximum(a_len, b_len).clamp(min=1)
    return result.float() / longest.float()


def _encode_strings(strings: Sequence[str]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in strings], dtype=torch.long)
    codes = torch.zeros(len(strings), max(1, int(lengths.max()) if len(strings) else 1), dtype=torch.long)
    for i, s in enumerate(strings):
        if s:
            codes[i, : len(s)] = torch.tensor([ord(ch) for ch in s], dtype=torch.long)
    return codes, lengths


def levenshtein_cost(student_strings: Sequence[str], teacher_strings: Sequence[str]) -> CostFn:
    """Cost function: normalised Levenshtein distance between decoded token strings.

    ``student_strings[i]`` is the text of student token id ``i`` (length Vs), likewise for the
    teacher. Encodes both vocabularies once; strip or normalise whitespace markers before calling
    (e.g. decode each id and ``.strip()``) so that " Paris" and "Paris" compare equal.
    """
    s_codes, s_len = _encode_strings(student_strings)
    t_codes, t_len = _encode_strings(teacher_strings)

    def cost(student_ids: Tensor, teacher_ids: Tensor) -> Tensor:
        p, k = student_ids.shape
        kt = teacher_ids.shape[1]
        si = student_ids.cpu().unsqueeze(2).expand(p, k, kt).reshape(-1)
        ti = teacher_ids.cpu().unsqueeze(1).expand(p, k, kt).reshape(-1)
        if si.numel() == 0:
            return torch.zeros(p, k, kt, device=student_ids.device)
        la, lb = int(s_len[si].max()), int(t_len[ti].max())
        d = normalized_levenshtein(s_codes[si, : max(la, 1)], s_len[si], t_codes[ti, : max(lb, 1)], t_len[ti])
        return d.view(p, k, kt).to(student_ids.device)

    return cost


def embedding_cost(
    student_strings: Sequence[str],
    teacher_strings: Sequence[str],
    embed: Callable[[list[str]], Tensor],
) -> CostFn:
    """Cost function: ``||e_i - e_j|| / 2`` between L2-normalised embeddings of token strings.

    ``embed(list[str]) -> [n, d]`` must be ONE shared embedding model for both sides (that is what
    makes the distances comparable). Only the strings that occur in a call are embedded. Unit
    normalisation bounds the cost to [0, 1], the scale of the unit cost charged to the tail bins.
    """

    def cost(student_ids: Tensor, teacher_ids: Tensor) -> Tensor:
        s_u, s_inv = student_ids.cpu().unique(return_inverse=True)
        t_u, t_inv = teacher_ids.cpu().unique(return_inverse=True)
        texts = [student_strings[i] for i in s_u.tolist()] + [teacher_strings[i] for i in t_u.tolist()]
        e = F.normalize(torch.as_tensor(embed(texts)).float(), dim=-1)
        es, et = e[: len(s_u)][s_inv], e[len(s_u) :][t_inv]  # [P, k, d]
        return (torch.cdist(es, et) / 2.0).clamp_(0.0, 1.0).to(student_ids.device)

    return cost


def uld_ot(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    *,
    cost: str | CostFn = "uniform",
    top_k: int = 16,
    solver: str = "emd",
    reg: float = 0.05,
    max_iter: int = 1000,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    reduction: str = "sample",
) -> Tensor:
    """ULD with a non-uniform transport cost between the top-k tokens of each side (ablation).

    Per pair: ``a = [top-k student probs, tail_s]``, ``b = [top-k teacher probs, tail_t]`` (k+1
    bins, both of mass 1) and cost ``M = [[C, 1], [1, 0]]``: ``C [k, k]`` between the top-k tokens
    (``cost(student_ids, teacher_ids)``, values in [0, 1]); moving mass to or from a tail costs 1;
    tail to tail costs 0. The distance is ``2 * OT(a, b; M)``.

    ``cost="uniform"`` is ``C = 1 - I`` between RANKS (the r-th student token costs 0 to the r-th
    teacher token, 1 to any other). For that cost ``2 * OT = sum_r |a_r - b_r| + |tail_s - tail_t|``
    (OT with a 0/1 cost is the total variation), i.e. exactly ``uld_loss(..., top_k=k)``; the
    Levenshtein/embedding costs replace "same rank" by "similar string".

    Token identities matter here, so the teacher must be given as logits ``[B, Tt, Vt]``.
    ``solver="emd"``: exact network simplex (``ot.emd2``, one problem per pair, on CPU in float64);
    ``"sinkhorn"``: entropic OT with regularisation ``reg`` (``ot.batch.solve_batch``, log-domain,
    all pairs at once); the transport cost ``<T, M>`` is returned. Differentiable w.r.t. the student
    logits through the transported masses (the cost matrix is constant).
    """
    import ot  # POT is only needed for this ablation

    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    _check_reduction(reduction)
    if solver not in ("emd", "sinkhorn"):
        raise ValueError(f"solver must be 'emd' or 'sinkhorn', got {solver!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    _check_mask_shape("student_mask", student_mask, student_logits)
    _check_mask_shape("teacher_mask", teacher_mask, teacher_logits)
    s_row, s_pos, t_row, t_pos = positional_pairs(student_mask, teacher_mask)
    k = min(top_k, student_logits.shape[-1], teacher_logits.shape[-1])

    def top(logits: Tensor, rows: Tensor, pos: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        z = _scaled_logits(logits, rows, pos, temperature)
        vals, ids = z.topk(k, dim=-1, sorted=True)
        probs = (vals - torch.logsumexp(z, dim=-1, keepdim=True)).exp()
        tail = (1.0 - probs.sum(-1, keepdim=True)).clamp(min=0.0)
        return torch.cat([probs, tail], dim=-1).double(), ids

    a, s_ids = top(student_logits, s_row, s_pos, student_temperature)
    with torch.no_grad():
        b, t_ids = top(teacher_logits.detach(), t_row, t_pos, teacher_temperature)
    n_pairs = a.shape[0]
    if cost == "uniform":
        c = 1.0 - torch.eye(k, dtype=torch.float64, device=a.device).expand(n_pairs, k, k)
    elif callable(cost):
        c = torch.as_tensor(cost(s_ids, t_ids)).to(device=a.device, dtype=torch.float64)
        if c.shape != (n_pairs, k, k):
            raise ValueError(f"cost function returned shape {tuple(c.shape)}, expected {(n_pairs, k, k)}")
    else:
        raise ValueError(f"cost must be 'uniform' or a callable (see levenshtein_cost), got {cost!r}")
    m = torch.ones(n_pairs, k + 1, k + 1, dtype=torch.float64, device=a.device)
    m[:, :k, :k] = c
    m[:, k, k] = 0.0
    # Equal masses up to rounding: renormalise so the solvers' marginal checks hold.
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    if n_pairs == 0:
        dist = a.sum(-1)
    elif solver == "emd":
        dist = torch.stack([ot.emd2(a[i].cpu(), b[i].cpu(), m[i].cpu()) for i in range(n_pairs)]).to(a.device)
    else:
        from ot.batch import solve_batch

        res = solve_batch(m, reg, a, b, max_iter=max_iter, method="log_sinkhorn", grad="autodiff")
        dist = res.value_linear
    return _reduce((2.0 * dist).to(_compute_dtype(student_logits.dtype)), s_row, student_logits.shape[0], reduction)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _reduce(dist: Tensor, row: Tensor, batch_size: int, reduction: str) -> Tensor:
    """Reduce per-pair values ``[P]`` (pair ``i`` belongs to row ``row[i]``) to a scalar."""
    if reduction == "sum":
        return dist.sum()
    if reduction == "token":
        return dist.sum() / max(dist.shape[0], 1)
    sums = torch.zeros(batch_size, dtype=dist.dtype, device=dist.device).index_add(0, row, dist)
    counts = torch.bincount(row, minlength=batch_size).to(dist.dtype)
    per_row = sums / counts.clamp(min=1.0)
    return per_row.sum() / (counts > 0).sum().clamp(min=1).to(dist.dtype)


def _check_logits(name: str, x: object) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor [B, T, V], got {shape}")


def _check_mask(name: str, mask: Tensor) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        desc = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor [B, T], got {desc}")


def _check_mask_shape(name: str, mask: Tensor, values: Tensor) -> None:
    _check_mask(name, mask)
    if tuple(mask.shape) != tuple(values.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but its logits are {tuple(values.shape)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
