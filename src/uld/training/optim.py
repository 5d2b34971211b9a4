"""Optimizer, learning-rate schedule and step counts (the paper's defaults).

AdamW with ``weight_decay`` 0.1 applied to every parameter, as the authors did. OneCycle stepped once per
OPTIMIZER step (not per micro-batch): warm-up over ``warmup_ratio`` (10%) of the steps from ``lr/2`` to
``lr``, cosine annealing down to ``lr/10`` (``OneCycleLR`` with ``div_factor=2``, ``final_div_factor=5``).
As in the authors' runs (torch's defaults), OneCycle also cycles AdamW's beta1 between 0.85 and 0.95,
opposite to the learning rate. The peak learning rate: ``training.optim.lr_preset`` when set (``paper``
1e-6, ``authors-jobs`` 2e-6), else ``training.optim.lr`` (the paper's per-task mT0 rates are ``per_task``
settings of the encoder-decoder grid).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from uld.config import TrainingConfig
from uld.errors import TrainingError

__all__ = ["LR_PRESETS", "resolve_lr", "build_optimizer", "fused_supported", "build_scheduler", "plan_steps"]

LR_PRESETS = {"paper": 1e-6, "authors-jobs": 2e-6}


def resolve_lr(tcfg: TrainingConfig) -> tuple[float, str]:
    """Peak learning rate and where it came from (``preset:<name>`` or ``config``).

    A per-task rate (the paper's mT0 rates) is a ``per_task`` setting of the experiment config, so the
    resolved config of every run says the rate it trained with.
    """
    opt = tcfg.optim
    if opt.lr_preset is not None:
        return LR_PRESETS[opt.lr_preset], f"preset:{opt.lr_preset}"
    return float(opt.lr), "config"


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (the authors applied the decay to all of them).

    ``fused`` (``training.optim.fused``) takes torch's fused kernel where it exists (plain CPU or CUDA
    tensors): the same update in one pass over the weights. On a 2-core CPU torch's per-tensor loop took
    ~3 s a step for a 135M model, fused ~0.25 s; losses agree within float rounding
    (tests/unit/test_training.py), not bit for bit, which is why it is opt-in. Sharded (DTensor) weights
    keep torch's default implementation.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=(fused and fused_supported(params)) or None)


def fused_supported(params) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating, plain tensors, on a CPU or CUDA device."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(
        not isinstance(p, DTensor) and p.is_floating_point()
        and p.device.type in ("cpu", "cuda") for p in params
    )


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
    raise TrainingError(f"'training.optim.scheduler': unknown schedule {kind!r}")


def plan_steps(batches_per_epoch: int, grad_accum: int, epochs: float, max_steps: Optional[int]) -> tuple[int, int]:
    """``(optimizer steps per epoch, total optimizer steps)``; ``max_steps`` overrides ``epochs``."""
    if batches_per_epoch <= 0:
        raise TrainingError("the training set yields no batch (no rows left after filtering?)")
    per_epoch = math.ceil(batches_per_epoch / grad_accum)
    total = int(max_steps) if max_steps is not None else math.ceil(epochs * per_epoch)
    if total <= 0:
        raise TrainingError(f"'training.epochs'/'training.max_steps' give {total} optimizer steps")
    return per_epoch, total
