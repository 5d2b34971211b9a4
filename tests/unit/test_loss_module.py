"""The drop-in losses (uld.ULDLoss, uld.KDLoss) compute exactly the trainer's objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import uld
from uld.losses import KDLoss, TeacherSignal, ULDLoss, answer_logit_mask, kd_kl, teacher_signal_from_logits, uld_loss


def _batch(seed: int = 0, vs: int = 37, vt: int = 53, b: int = 3, ts: int = 9, tt: int = 11):
    g = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(b, ts, vs, generator=g, requires_grad=True)
    t_logits = torch.randn(b, tt, vt, generator=g)
    labels = torch.full((b, ts), -100)
    t_labels = torch.full((b, tt), -100)
    for i, (n_s, n_t) in enumerate([(3, 4), (5, 5), (2, 6)]):
        labels[i, ts - n_s - 1 : ts - 1] = torch.randint(0, vs, (n_s,), generator=g)
        t_labels[i, tt - n_t :] = torch.randint(0, vt, (n_t,), generator=g)
    return s_logits, labels, t_logits, t_labels


def _ce(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_uld_loss_module_is_ce_plus_lambda_uld_with_teacher_logits():
    s, labels, t, t_labels = _batch()
    got = ULDLoss(lam=1.5, skip_student_eos=False)(s, labels, t, teacher_labels=t_labels, return_parts=True)
    want_term = uld_loss(s, t, answer_logit_mask(labels), answer_logit_mask(t_labels))
    assert float(got.distill) == pytest.approx(float(want_term), rel=1e-6)
    assert float(got.loss) == pytest.approx(float(_ce(s, labels) + 1.5 * want_term), rel=1e-6)
    got.loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_cached_signal_gives_the_top_k_loss():
    s, labels, t, t_labels = _batch(1)
    mask = answer_logit_mask(t_labels)
    k = 8
    # a cache row per teacher answer position, as the teacher stage writes it
    probs, tail = teacher_signal_from_logits(t[mask], k)
    lengths = mask.sum(1)
    signal = TeacherSignal(torch.zeros(3, int(lengths.max()), k), torch.zeros(3, int(lengths.max())))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    for i in range(3):
        signal.probs[i, : lengths[i]] = probs[offsets[i] : offsets[i + 1]]
        signal.tail[i, : lengths[i]] = tail[offsets[i] : offsets[i + 1]]
    cached = ULDLoss(lam=1.0)(s, labels, signal, teacher_lengths=lengths)
    online = ULDLoss(lam=1.0, top_k=k)(s, labels, t, teacher_labels=t_labels)
    assert float(cached) == pytest.approx(float(online), rel=1e-5)


def test_skipping_the_teacher_eos_drops_its_last_position():
    s, labels, t, t_labels = _batch(2)
    got = ULDLoss(lam=1.0, skip_teacher_eos=True)(s, labels, t, teacher_labels=t_labels, return_parts=True)
    want = uld_loss(s, t, answer_logit_mask(labels, skip_eos=True), answer_logit_mask(t_labels, skip_eos=True))
    assert float(got.distill) == pytest.approx(float(want), rel=1e-6)


def test_kd_loss_module_is_ce_plus_lambda_kl():
    s, labels, _, _ = _batch(3, vs=41, vt=41)
    t = torch.randn(3, 9, 41)
    got = KDLoss(lam=0.7, temperature=2.0, skip_student_eos=False)(s, labels, t, teacher_labels=labels, return_parts=True)
    want = kd_kl(s, t, answer_logit_mask(labels), answer_logit_mask(labels), temperature=2.0)
    assert float(got.loss) == pytest.approx(float(_ce(s, labels) + 0.7 * want), rel=1e-6)


def test_the_module_reproduces_the_trainers_loss(tmp_path):
    """uld.ULDLoss on a batch = uld.training.compute_losses on the same batch (no trainer needed)."""
    from types import SimpleNamespace

    from uld.config import DistillConfig, TrainingConfig
    from uld.training import compute_losses

    s, labels, t, t_labels = _batch(4)
    model = SimpleNamespace()
    logits_holder = {"l": s}

    class Fake(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, **kw):
            return SimpleNamespace(logits=logits_holder["l"])

    mask = answer_logit_mask(t_labels)
    lengths = mask.sum(1)
    probs, tail = teacher_signal_from_logits(t[mask], 16)
    signal = TeacherSignal(torch.zeros(3, int(lengths.max()), 16), torch.zeros(3, int(lengths.max())))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    for i in range(3):
        signal.probs[i, : lengths[i]] = probs[offsets[i] : offsets[i + 1]]
        signal.tail[i, : lengths[i]] = tail[offsets[i] : offsets[i + 1]]
    batch = {"input_ids": torch.zeros_like(labels), "attention_mask": torch.ones_like(labels), "labels": labels,
             "signal_probs": signal.probs, "signal_tail": signal.tail, "signal_lengths": lengths}
    tcfg = TrainingConfig(method="uld", lam=1.5, distill=DistillConfig(skip_student_eos=False))
    trainer = compute_losses(Fake(), batch, tcfg, encoder_decoder=False)
    module = ULDLoss(lam=1.5, skip_student_eos=False)(s, labels, signal, teacher_lengths=lengths)
    assert float(module) == pytest.approx(float(trainer.loss), rel=1e-6)


def test_public_names_are_exported_lazily():
    assert uld.ULDLoss is ULDLoss and uld.KDLoss is KDLoss
    from uld.signal import TeacherSignalStore

    assert uld.TeacherSignalStore is TeacherSignalStore
    with pytest.raises(AttributeError):
        uld.nope  # noqa: B018
