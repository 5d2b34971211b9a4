"""The process group of an ``accelerate launch`` (or of a plain single process), as the stages need it.

Every stage runs in every process of a launch. They share one process group: accelerate's
``PartialState``, created on first use from the launcher's environment, is the same object the trainer's
``Accelerator`` then uses, so every rank sees the real world size. This module gives the stages what
they coordinate with: rank, world size, a barrier, broadcasting a result of the main process (a lock
taken or refused, an error) to the others, and gathering objects.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, TypeVar

__all__ = ["Dist", "accelerator", "dist", "on_main"]

T = TypeVar("T")


class Dist:
    """Rank, world size and collectives of the current launch (trivial for one process)."""

    def __init__(self) -> None:
        from accelerate import PartialState

        # Created with cpu=False on a machine without an accelerator, PartialState ignores the launcher's
        # processes and makes every rank a world of one: the CPU has to be asked for explicitly, as the
        # Accelerator does when it reads ACCELERATE_USE_CPU.
        self.state = PartialState(cpu=_use_cpu())

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def device(self):
        return self.state.device

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


def _use_cpu() -> bool:
    import torch

    flag = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    # several processes and no CUDA device: they can only be a CPU (gloo) group
    return flag or (launched() and not torch.cuda.is_available())


def dist() -> Dist:
    """The launch's :class:`Dist` (``PartialState`` is shared process-wide, so this is cheap)."""
    return Dist()


def accelerator(mixed_precision: str = "no", **kwargs):
    """An ``Accelerator`` for one training run of this process.

    accelerate keeps one ``AcceleratorState`` per process and refuses an ``Accelerator`` whose precision
    differs from the first one's. A process that trains several runs in turn (a table script, a grid with
    bf16 and fp32 cells) needs each run's own precision, so the previous run's state is dropped first; the
    process group itself (``PartialState``) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, **kwargs)


def on_main(fn: Callable[[], T], d: Optional[Dist] = None) -> T:
    """Run ``fn`` on the main process only and hand its result to every rank; an exception it raises is
    raised on every rank, so all processes of a launch stop together with the same one-line error."""
    d = d or dist()
    result: Any = None
    error: Optional[BaseException] = None
    if d.is_main:
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, on every rank
            error = exc
    if d.world > 1:
        result, error = d.broadcast((result, error if error is None or _picklable(error) else RuntimeError(str(error))))
    if error is not None:
        raise error
    return result


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.dumps(exc)
    except Exception:
        return False
    return True


def launched() -> bool:
    """Whether this process was started by ``accelerate launch`` / torchrun with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
