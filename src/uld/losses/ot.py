"""ULD with a non-uniform transport cost between the top-k tokens of each side (the cost ablation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from uld.losses._common import _check_logits, _check_mask_shape, _check_reduction, _compute_dtype, _reduce, _scaled_logits
from uld.losses.masks import positional_pairs

__all__ = ["CostFn", "normalized_levenshtein", "levenshtein_cost", "embedding_cost", "uld_ot"]


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
    m = _cost_matrix(cost, s_ids, t_ids, a.shape[0], k, a.device)
    # Equal masses up to rounding: renormalise so the solvers' marginal checks hold.
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    dist = _transport(a, b, m, solver=solver, reg=reg, max_iter=max_iter)
    return _reduce((2.0 * dist).to(_compute_dtype(student_logits.dtype)), s_row, student_logits.shape[0], reduction)


def _cost_matrix(cost, s_ids: Tensor, t_ids: Tensor, n_pairs: int, k: int, device) -> Tensor:
    """``[n_pairs, k+1, k+1]``: the token-to-token cost, 1 to or from a tail bin, 0 tail to tail."""
    if cost == "uniform":
        c = 1.0 - torch.eye(k, dtype=torch.float64, device=device).expand(n_pairs, k, k)
    elif callable(cost):
        c = torch.as_tensor(cost(s_ids, t_ids)).to(device=device, dtype=torch.float64)
        if c.shape != (n_pairs, k, k):
            raise ValueError(f"cost function returned shape {tuple(c.shape)}, expected {(n_pairs, k, k)}")
    else:
        raise ValueError(f"cost must be 'uniform' or a callable (see levenshtein_cost), got {cost!r}")
    m = torch.ones(n_pairs, k + 1, k + 1, dtype=torch.float64, device=device)
    m[:, :k, :k] = c
    m[:, k, k] = 0.0
    return m


def _transport(a: Tensor, b: Tensor, m: Tensor, *, solver: str, reg: float, max_iter: int) -> Tensor:
    """Optimal transport cost per pair ``[n_pairs]`` (exact network simplex or log-domain Sinkhorn)."""
    import ot  # POT is only needed for this ablation

    if a.shape[0] == 0:
        return a.sum(-1)
    if solver == "emd":
        return torch.stack([ot.emd2(a[i].cpu(), b[i].cpu(), m[i].cpu()) for i in range(a.shape[0])]).to(a.device)
    from ot.batch import solve_batch

    return solve_batch(m, reg, a, b, max_iter=max_iter, method="log_sinkhorn", grad="autodiff").value_linear
