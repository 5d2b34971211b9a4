"""Correctness of the ULD loss family against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from uld.losses import (
    TeacherSignal,
    answer_logit_mask,
    distillation_objective,
    embedding_cost,
    kd_kl,
    levenshtein_cost,
    normalized_levenshtein,
    positional_pairs,
    teacher_signal_from_logits,
    uld_distance,
    uld_loss,
    uld_ot,
)

FAST = settings(max_examples=15, deadline=None)


def _batch(seed, b=3, ts=7, tt=6, vs=11, vt=8, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, ts, vs, generator=g, dtype=dtype) * scale).requires_grad_(True)
    t = torch.randn(b, tt, vt, generator=g, dtype=dtype) * scale
    ms = torch.rand(b, ts, generator=g) < 0.6
    mt = torch.rand(b, tt, generator=g) < 0.6
    return s, t, ms, mt


def _reference_loop(s, t, ms, mt, reduction="sample", s_temp=1.0, t_temp=1.0):
    """Plain per-sample ULD written from the paper's description, independent of uld.losses."""
    per_row, all_pairs = [], []
    for b in range(s.shape[0]):
        si = [i for i in range(s.shape[1]) if ms[b, i]]
        ti = [i for i in range(t.shape[1]) if mt[b, i]]
        n = min(len(si), len(ti))
        row = []
        for i in range(n):
            p = torch.softmax(s[b, si[i]] / s_temp, -1).sort(descending=True).values
            q = torch.softmax(t[b, ti[i]] / t_temp, -1).sort(descending=True).values
            w = max(len(p), len(q))
            row.append((F.pad(p, (0, w - len(p))) - F.pad(q, (0, w - len(q)))).abs().sum())
        all_pairs += row
        if row:
            per_row.append(torch.stack(row).mean())
    if reduction == "sample":
        return torch.stack(per_row).mean() if per_row else torch.zeros(())
    if reduction == "token":
        return torch.stack(all_pairs).mean()
    return torch.stack(all_pairs).sum()


def _single(p_logits, q_logits, **kw):
    """uld_loss on one pair of positions."""
    s = p_logits.view(1, 1, -1)
    t = q_logits.view(1, 1, -1)
    one = torch.ones(1, 1, dtype=torch.bool)
    return uld_loss(s, t, one, one, **kw)


# ---------------------------------------------------------------------------------------------
# The distance itself
# ---------------------------------------------------------------------------------------------


@FAST
@given(vs=st.integers(1, 7), vt=st.integers(1, 7), seed=st.integers(0, 10_000))
def test_equals_min_over_bijections_linear_sum_assignment(vs, vt, seed):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(vs, generator=g, dtype=torch.float64) * 2, torch.randn(vt, generator=g, dtype=torch.float64) * 2
    p, q = zs.softmax(-1).numpy(), zt.softmax(-1).numpy()
    w = max(vs, vt)
    p, q = np.pad(p, (0, w - vs)), np.pad(q, (0, w - vt))
    cost = np.abs(p[:, None] - q[None, :])
    rows, cols = linear_sum_assignment(cost)
    best = cost[rows, cols].sum()
    assert float(_single(zs, zt)) == pytest.approx(best, abs=1e-12)
    assert float(uld_distance(zs.softmax(-1), zt.softmax(-1))) == pytest.approx(best, abs=1e-12)


def test_bijection_minimum_brute_force_tiny():
    # independent of scipy: enumerate all bijections of a 4-token padded vocabulary
    zs, zt = torch.tensor([0.3, -1.0, 2.0, 0.1], dtype=torch.float64), torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    p, q = zs.softmax(-1).tolist(), zt.softmax(-1).tolist() + [0.0]
    best = min(sum(abs(p[i] - q[j]) for i, j in enumerate(perm)) for perm in itertools.permutations(range(4)))
    assert float(_single(zs, zt)) == pytest.approx(best, abs=1e-12)


@FAST
@given(seed=st.integers(0, 10_000))
def test_invariant_to_vocabulary_permutations(seed):
    s, t, ms, mt = _batch(seed)
    g = torch.Generator().manual_seed(seed + 1)
    ps, pt = torch.randperm(s.shape[-1], generator=g), torch.randperm(t.shape[-1], generator=g)
    base = uld_loss(s, t, ms, mt)
    (grad,) = torch.autograd.grad(base, s)
    base = base.detach()
    s2 = s.detach()[..., ps].requires_grad_(True)
    permuted = uld_loss(s2, t[..., pt], ms, mt)
    (grad2,) = torch.autograd.grad(permuted, s2)
    permuted = permuted.detach()
    assert float(permuted) == pytest.approx(float(base), abs=1e-12)
    torch.testing.assert_close(grad2, grad[..., ps])


@FAST
@given(seed=st.integers(0, 10_000), top_k=st.sampled_from([None, 1, 3]))
def test_symmetric(seed, top_k):
    s, t, ms, mt = _batch(seed)
    a = uld_loss(s, t, ms, mt, top_k=top_k)
    b = uld_loss(t, s.detach(), mt, ms, top_k=top_k)
    assert float(a.detach()) == pytest.approx(float(b), abs=1e-12)


def test_zero_iff_sorted_vectors_equal():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    # same distributions, shuffled token ids, and two extra zero-probability tokens on the student
    s = torch.cat([t[..., torch.randperm(9, generator=g)], torch.full((2, 5, 2), -torch.inf, dtype=t.dtype)], -1)
    assert float(uld_loss(s, t, mask, mask)) == pytest.approx(0.0, abs=1e-12)
    # any change of the sorted values makes it strictly positive
    s2 = s.clone()
    s2[0, 0, 0] += 0.5
    assert float(uld_loss(s2, t, mask, mask)) > 1e-6


@pytest.mark.parametrize("reduction", ["sample", "token", "sum"])
@pytest.mark.parametrize("temps", [(1.0, 1.0), (2.0, 0.5)])
def test_matches_reference_loop_values_and_gradients(reduction, temps):
    for seed in range(4):
        s, t, ms, mt = _batch(seed, b=4)
        ms[0] = False  # a row without pairs must be excluded from the sample mean
        ours = uld_loss(s, t, ms, mt, reduction=reduction, student_temperature=temps[0], teacher_temperature=temps[1])
        ref = _reference_loop(s, t, ms, mt, reduction, *temps)
        assert float(ours) == pytest.approx(float(ref), abs=1e-12)
        (g1,) = torch.autograd.grad(ours, s)
        (g2,) = torch.autograd.grad(ref, s)
        torch.testing.assert_close(g1, g2)


def test_reduction_weights_rows_as_the_paper():
    # row 0: one pair, row 1: three pairs; "sample" averages the two row means, "token" the 4 pairs
    s, t, _, _ = _batch(0, b=2, ts=4, tt=4)
    ms = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    mt = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    d = [float(_single(s[0, 0], t[0, 1]))] + [float(_single(s[1, i], t[1, i])) for i in range(3)]
    assert float(uld_loss(s, t, ms, mt, reduction="sample")) == pytest.approx((d[0] + sum(d[1:]) / 3) / 2)
    assert float(uld_loss(s, t, ms, mt, reduction="token")) == pytest.approx(sum(d) / 4)
    assert float(uld_loss(s, t, ms, mt, reduction="sum")) == pytest.approx(sum(d))


def test_no_pairs_gives_attached_zero():
    s, t, ms, mt = _batch(0)
    loss = uld_loss(s, t, torch.zeros_like(ms), mt)
    assert float(loss) == 0.0
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------------------------------------
# Engineering: chunking, dtypes, gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [None, 4])
def test_chunked_equals_unchunked(top_k):
    s, t, ms, mt = _batch(3, b=4, ts=9, tt=9)
    ref = uld_loss(s, t, ms, mt, top_k=top_k, chunk_size=10_000)
    (g_ref,) = torch.autograd.grad(ref, s)
    for chunk in (1, 2, 5, None):
        out = uld_loss(s, t, ms, mt, top_k=top_k, chunk_size=chunk)
        (g,) = torch.autograd.grad(out, s)
        assert float(out) == pytest.approx(float(ref), abs=1e-13)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("top_k", [None, 5])
def test_bf16_inputs_within_tolerance(top_k):
    s, t, ms, mt = _batch(1, vs=300, vt=200, dtype=torch.float32)
    ref = uld_loss(s, t, ms, mt, top_k=top_k)
    (g_ref,) = torch.autograd.grad(ref, s)
    s16 = s.detach().bfloat16().requires_grad_(True)
    out = uld_loss(s16, t.bfloat16(), ms, mt, top_k=top_k)
    (g,) = torch.autograd.grad(out, s16)
    assert out.dtype == torch.float32 and g.dtype == torch.bfloat16
    # the value moves only by the rounding of the logits
    assert float(out) == pytest.approx(float(ref), rel=2e-2, abs=2e-3)
    # computed in fp32: identical to the fp32 loss on the rounded logits, up to bf16 rounding of the grad
    s_up = s16.detach().float().requires_grad_(True)
    up = uld_loss(s_up, t.bfloat16().float(), ms, mt, top_k=top_k)
    (g_up,) = torch.autograd.grad(up, s_up)
    assert float(out) == float(up)
    torch.testing.assert_close(g.float(), g_up, rtol=1e-2, atol=1e-5)
    # the sorted-L1 gradient is piecewise constant in the signs, which rounding can flip at near-ties:
    # compare with the fp32 gradient of the unrounded logits only in direction
    assert float(F.cosine_similarity(g.float().flatten(), g_ref.flatten(), dim=0)) > 0.95


@pytest.mark.parametrize("top_k", [None, 1, 3, 11])
@pytest.mark.parametrize("vocab", [(11, 8), (6, 9)])
def test_gradcheck_float64(top_k, vocab):
    s, t, ms, mt = _batch(5, b=2, ts=4, tt=5, vs=vocab[0], vt=vocab[1])
    assert torch.autograd.gradcheck(
        lambda x: uld_loss(x, t, ms, mt, top_k=top_k, chunk_size=3, student_temperature=1.5), (s,)
    )


def test_teacher_gets_no_gradient():
    s, t, ms, mt = _batch(0)
    t.requires_grad_(True)
    uld_loss(s, t, ms, mt).backward()
    assert t.grad is None and s.grad is not None


# ---------------------------------------------------------------------------------------------
# Top-k mode and the cached teacher signal
# ---------------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), scale=st.sampled_from([0.5, 2.0, 6.0]))
def test_topk_is_lower_bound_within_documented_gap(seed, k, scale):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(13, generator=g, dtype=torch.float64) * scale, torch.randn(9, generator=g, dtype=torch.float64) * scale
    exact = float(_single(zs, zt))
    approx = float(_single(zs, zt, top_k=k))
    tail_s = 1.0 - float(zs.softmax(-1).topk(min(k, 13)).values.sum())
    tail_t = 1.0 - float(zt.softmax(-1).topk(min(k, 9)).values.sum())
    assert approx <= exact + 1e-12
    assert exact - approx <= 2 * min(tail_s, tail_t) + 1e-12


def test_topk_covering_both_vocabularies_is_exact():
    s, t, ms, mt = _batch(2)
    assert float(uld_loss(s, t, ms, mt, top_k=11)) == pytest.approx(float(uld_loss(s, t, ms, mt)), abs=1e-12)


def test_teacher_signal_equals_topk_on_logits():
    s, t, ms, mt = _batch(4, vs=40, vt=30)
    sig = teacher_signal_from_logits(t, 6)
    assert sig.probs.shape == (*t.shape[:2], 6)
    for k in (6, 3):
        want = uld_loss(s, t, ms, mt, top_k=k)
        got = uld_loss(s, sig, ms, mt, top_k=k)
        assert float(got) == pytest.approx(float(want), abs=1e-12)
    # top_k=None means the signal width
    assert float(uld_loss(s, sig, ms, mt)) == pytest.approx(float(uld_loss(s, t, ms, mt, top_k=6)), abs=1e-12)
    # float16 storage (as cached by the teacher stage) stays close and is upcast
    half = TeacherSignal(sig.probs.half(), sig.tail.half())
    assert float(uld_loss(s, half, ms, mt)) == pytest.approx(float(uld_loss(s, sig, ms, mt)), abs=5e-3)


def test_teacher_signal_errors():
    s, t, ms, mt = _batch(4)
    sig = teacher_signal_from_logits(t, 4)
    with pytest.raises(ValueError, match="exceeds the width"):
        uld_loss(s, sig, ms, mt, top_k=5)
    with pytest.raises(ValueError, match="teacher_temperature"):
        uld_loss(s, sig, ms, mt, teacher_temperature=2.0)


def test_input_validation_messages():
    s, t, ms, mt = _batch(0)
    with pytest.raises(ValueError, match="student_mask must be a bool"):
        uld_loss(s, t, ms.long(), mt)
    with pytest.raises(ValueError, match="teacher_mask has shape"):
        uld_loss(s, t, ms, mt[:, :3])
    with pytest.raises(ValueError, match="batch size"):
        uld_loss(s, t[:2], ms, mt[:2])
    with pytest.raises(ValueError, match="reduction"):
        uld_loss(s, t, ms, mt, reduction="mean")


# ---------------------------------------------------------------------------------------------
# Masks and pairing
# ---------------------------------------------------------------------------------------------


def test_answer_logit_mask_causal_and_seq2seq():
    labels = torch.tensor([[-100, -100, 5, 6, 2, -100], [-100, 7, 8, 9, 10, 2]])
    causal = answer_logit_mask(labels)
    assert causal.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert answer_logit_mask(labels, causal=False).tolist() == (labels != -100).tolist()
    # skip_eos drops the position that predicts the last supervised token
    assert answer_logit_mask(labels, skip_eos=True).tolist() == [[0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    # ... and with eos_token_id, only where that token is the EOS (row 0 ends with 6, truncated)
    labels2 = torch.tensor([[-100, 5, 6, -100], [-100, 7, 2, -100]])
    assert answer_logit_mask(labels2, skip_eos=True, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert answer_logit_mask(labels2, causal=False, skip_eos=True).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]


def test_positional_pairs_rank_and_truncation():
    ms = torch.tensor([[0, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    mt = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    s_row, s_pos, t_row, t_pos = positional_pairs(ms, mt)
    assert s_row.tolist() == t_row.tolist() == [0, 0, 1]
    assert s_pos.tolist() == [1, 2, 0]
    assert t_pos.tolist() == [0, 2, 2]


# ---------------------------------------------------------------------------------------------
# Other losses
# ---------------------------------------------------------------------------------------------


def test_distillation_objective():
    ce, uld = torch.tensor(2.0), torch.tensor(0.4)
    assert float(distillation_objective(ce, uld)) == pytest.approx(2.6)
    assert float(distillation_objective(ce, uld, lam=0.0)) == 2.0
    with pytest.raises(ValueError):
        distillation_objective(ce, uld, lam=-1)


def test_kd_kl_matches_kl_div_and_refuses_other_vocab():
    s, t, ms, _ = _batch(7, vs=10, vt=10, ts=7, tt=7)
    mt = ms.clone()
    temp = 2.0
    got = kd_kl(s, t, ms, mt, temperature=temp, reduction="token")
    rows = ms.nonzero(as_tuple=True)
    want = F.kl_div(
        (s[rows] / temp).log_softmax(-1), (t[rows] / temp).log_softmax(-1), log_target=True, reduction="batchmean"
    ) * temp**2
    assert float(got) == pytest.approx(float(want), abs=1e-12)
    assert float(kd_kl(t.clone().requires_grad_(), t, ms, mt)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same vocabulary.*V=10.*V=9"):
        kd_kl(s, t[..., :9], ms, mt)


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@FAST
@given(pairs=st.lists(st.tuples(st.text("abcé ", max_size=6), st.text("abcé ", max_size=6)), min_size=1, max_size=8))
def test_normalized_levenshtein_matches_textbook_dp(pairs):
    def enc(xs):
        w = max(1, max(len(x) for x in xs))
        codes = torch.tensor([[ord(c) for c in x] + [0] * (w - len(x)) for x in xs])
        return codes, torch.tensor([len(x) for x in xs])

    a, la = enc([p[0] for p in pairs])
    b, lb = enc([p[1] for p in pairs])
    got = normalized_levenshtein(a, la, b, lb)
    want = [_levenshtein(x, y) / max(len(x), len(y), 1) for x, y in pairs]
    assert got.tolist() == pytest.approx(want)


@pytest.mark.parametrize("solver,tol", [("emd", 1e-9), ("sinkhorn", 2e-3)])
def test_uld_ot_uniform_cost_reproduces_uld(solver, tol):
    s, t, ms, mt = _batch(8, vs=12, vt=9)
    for k in (1, 4):
        want = uld_loss(s, t, ms, mt, top_k=k)
        got = uld_ot(s, t, ms, mt, cost="uniform", top_k=k, solver=solver, reg=0.02)
        assert float(got) == pytest.approx(float(want), abs=tol)
        if solver == "emd":
            (g1,) = torch.autograd.grad(got, s)
            (g2,) = torch.autograd.grad(want, s)
            torch.testing.assert_close(g1, g2, atol=1e-8, rtol=1e-6)


def test_uld_ot_string_costs():
    s, t, ms, mt = _batch(9, vs=6, vt=6)
    words = ["the", "Paris", "dog", "cat", "in", "of"]
    # identical vocabularies with identical strings: Levenshtein cost is 0 exactly on the diagonal,
    # so a teacher equal to the student costs nothing, like the uniform cost
    same = uld_ot(s, s.detach(), ms, ms, cost=levenshtein_cost(words, words), top_k=4)
    assert float(same) == pytest.approx(0.0, abs=1e-9)
    lev = uld_ot(s, t, ms, mt, cost=levenshtein_cost(words, words[::-1]), top_k=4)
    lev.backward()
    assert float(lev) > 0 and float(s.grad.abs().sum()) > 0
    # a toy embedder: strings of equal length share an embedding, so their cost is 0
    emb = embedding_cost(words, words, lambda xs: torch.stack([torch.tensor([len(x), 1.0]) for x in xs]))
    c = emb(torch.tensor([[1, 2]]), torch.tensor([[1, 0]]))
    assert c.shape == (1, 2, 2)
    assert float(c[0, 0, 0]) == 0.0 and float(c[0, 1, 1]) == 0.0  # Paris/Paris, dog/the
    assert float(c[0, 0, 1]) > 0.0
    with pytest.raises(ValueError, match="solver"):
        uld_ot(s, t, ms, mt, solver="lp")
