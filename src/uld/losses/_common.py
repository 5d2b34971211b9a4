"""What every loss shares: input checks, the float32 compute dtype, reductions over pairs."""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("sample", "token", "sum")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 for half/bfloat16/float32 inputs; float64 inputs stay float64 (gradcheck).
    return torch.promote_types(dtype, torch.float32)


def _scaled_logits(logits: Tensor, rows: Tensor, pos: Tensor, temperature: float) -> Tensor:
    z = logits[rows, pos].to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    return z


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
