"""The confidence cap of docs/confidence_cap.md, checked by descent on the project's ULD distance.

One answer position, the correct token the student's top token: minimising CE + w·ULD over the student's
logits settles the student's probability of that token at max(teacher top-1, 1/(2w)) for w > 1/2, and
lets it grow to 1 (as CE alone does) for w ≤ 1/2.
"""

import pytest
import torch

from uld.losses.uld import uld_distance


def settle(w: float, p1: float, v_student: int = 64, v_teacher: int = 48, steps: int = 4000) -> float:
    gen = torch.Generator().manual_seed(0)
    rest = torch.linspace(0.0, -3.0, v_teacher - 1).exp()
    teacher = torch.cat([torch.tensor([p1]), rest / rest.sum() * (1.0 - p1)])  # top-1 p1, a decaying tail
    z = 0.1 * torch.randn(v_student, generator=gen)
    z[0] = 2.0  # token 0 is the gold token and the student's rank 1
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.02)
    for _ in range(steps):
        q = z.softmax(-1)
        loss = -q[0].log() + w * uld_distance(q, teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(z.detach().softmax(-1)[0])


@pytest.mark.parametrize("w, p1", [(1.0, 0.1), (1.5, 0.1), (2.7, 0.1), (1.5, 0.378), (2.7, 0.378), (13.5, 0.378),
                                   (1.5, 0.9)])
def test_student_confidence_settles_at_the_cap(w, p1):
    assert settle(w, p1) == pytest.approx(max(p1, 1.0 / (2.0 * w)), abs=0.01)


def test_no_cap_below_half_weight():
    assert settle(0.4, 0.378) > 0.95
