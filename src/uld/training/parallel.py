"""Sharded data parallelism where accelerate does not provide it: FSDP2 on CPU processes (gloo).

accelerate runs FSDP only on accelerators; on a CPU launch it silently falls back to plain data
parallelism. When the launch config asks for FSDP (``ACCELERATE_USE_FSDP``, FSDP version 2) and the
processes are CPU processes, :func:`shard` applies torch's ``fully_shard`` itself: each transformer
block (the model's ``_no_split_modules``), then the whole model, over a 1-D mesh of all processes.
Gradients are reduce-scattered and averaged like DDP's, so the training is the same computation with
parameters, gradients and optimizer state split across processes. Checkpoints gather full state dicts
(:mod:`uld.training.state`), so they are ordinary Hugging Face folders and resume on any sharding.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from uld.errors import TrainingError

log = logging.getLogger(__name__)

__all__ = ["cpu_fsdp_requested", "shard", "is_sharded", "full_model_state"]


def cpu_fsdp_requested(accelerator: Any) -> bool:
    """The launch asks for FSDP but accelerate left these CPU processes unsharded."""
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type == DistributedType.MULTI_CPU:
        if os.environ.get("FSDP_VERSION", "2") != "2":
            raise TrainingError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate config")
        return True
    return False


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over all processes (CPU, gloo): every transformer block, then the root."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    block_types = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    log.info("FSDP2 on %d CPU processes: %d %s blocks and the root sharded", dist.get_world_size(), len(blocks),
             "/".join(sorted(block_types)) or "(no)")
    return model


def is_sharded(accelerator: Any, model: torch.nn.Module) -> bool:
    """Whether the model's parameters are split across processes (accelerate's FSDP or :func:`shard`)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: torch.nn.Module) -> dict:
    """The full (unsharded) state dict on the main process, on CPU; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
