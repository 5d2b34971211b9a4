"""Where a training run stands, and the checkpoints that let it resume exactly, with no pickle anywhere.

:class:`TrainState` is the resumable position (optimizer step, epoch, micro-batches consumed, the best
validation loss so far). :class:`Checkpointer` writes it with everything else a resumed run needs into
``checkpoints/state/``, in formats this code owns::

    model.safetensors               full (unsharded) student weights
    optimizer.safetensors + .json   optimizer tensors; parameter groups and scalars
    scheduler.json                  learning-rate schedule state
    rng-<rank>.safetensors + .json  torch / CUDA / numpy / Python random states of every process
    trainer.json                    format, TrainState, config key, world size, and the sha256 of every file

A state folder is built beside the old one and swapped in (:func:`uld.io.swap_dir`). Loading refuses a
folder that holds any file ``trainer.json`` does not list, or a listed file whose checksum differs:
nothing written by someone else is ever read, and nothing is unpickled. Under FSDP the weights and the
optimizer state are gathered in full (``torch.distributed.checkpoint.state_dict``) on save and
scattered back on load, so a sharded run resumes on the same number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from uld.errors import ResumeError, StateError, StoreWriteError, TrainingError
from uld.io import atomic_write_json, copy_dir, load_tensors, read_json, remove, save_tensors, sha256_file, swap_dir, write_error
from uld.training.parallel import full_model_state, is_sharded

__all__ = ["TrainState", "Checkpointer", "STATE_FORMAT", "STATE_FILE", "save_hf", "read_trainer_json"]

STATE_FORMAT = "uld-train-state/1"
STATE_FILE = "trainer.json"


@dataclasses.dataclass
class TrainState:
    """The resumable position of a run."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    best_val_loss: Optional[float] = None
    best_step: Optional[int] = None
    finished: bool = False

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in d:
                setattr(self, f.name, d[f.name])

    @property
    def best(self) -> float:
        return math.inf if self.best_val_loss is None else self.best_val_loss


# --------------------------------------------------------------------------------------------------
# JSON with tuples (optimizer betas, RNG states)
# --------------------------------------------------------------------------------------------------


def _tag(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return {"__tuple__": [_tag(v) for v in obj]}
    if isinstance(obj, list):
        return [_tag(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _tag(v) for k, v in obj.items()}
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    raise StateError(f"cannot store a {type(obj).__name__} in a training state: {obj!r}")


def _untag(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_untag(v) for v in obj["__tuple__"])
        return {k: _untag(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_untag(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Flattening the pieces into (tensors, json)
# --------------------------------------------------------------------------------------------------


def _optimizer_parts(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for fqn, st in osd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{fqn}/{name}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(fqn), {})[name] = value
    return tensors, {"param_groups": _tag(osd["param_groups"]), "scalars": _tag(scalars)}


def _optimizer_from_parts(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        fqn, name = key.rsplit("/", 1)
        state.setdefault(fqn, {})[name] = value
    for fqn, st in _untag(meta["scalars"]).items():
        state.setdefault(fqn, {}).update(st)
    return {"state": state, "param_groups": _untag(meta["param_groups"])}


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": _tag(random.getstate())}
    return tensors, meta


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_untag(meta["python"]))


def _dedupe(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights share storage; safetensors stores each name's own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def read_trainer_json(state_dir: Path) -> Optional[dict]:
    path = Path(state_dir) / STATE_FILE
    return read_json(path) if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores the resumable state of one training run (see the module docstring).

    Every process of the launch calls :meth:`save` and :meth:`load` (the full-state gathers are
    collective under FSDP); the main process writes the shared files, each process its own RNG file.
    """

    def __init__(self, state_dir: Path, accelerator: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, *, config_key: str, total_steps: int):
        self.dir = Path(state_dir)
        self.acc, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.config_key, self.total_steps = config_key, total_steps

    @property
    def _world(self) -> int:
        return self.acc.num_processes

    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, state: TrainState, *, summary: Optional[dict] = None) -> None:
        acc = self.acc
        tmp = self.dir.with_name(f".{self.dir.name}.tmp")
        if acc.is_main_process:
            remove(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        msd, osd = self._full_state()
        rng_t, rng_m = _rng_parts()
        rng_m["weights_sha256"] = self._check_synchronised()
        save_tensors(rng_t, tmp / f"rng-{acc.process_index}.safetensors")
        atomic_write_json(tmp / f"rng-{acc.process_index}.json", rng_m)
        if acc.is_main_process:
            save_tensors(_dedupe(msd), tmp / "model.safetensors")
            opt_t, opt_m = _optimizer_parts(osd)
            save_tensors(opt_t, tmp / "optimizer.safetensors")
            atomic_write_json(tmp / "optimizer.json", opt_m)
            atomic_write_json(tmp / "scheduler.json", _tag(self.scheduler.state_dict()))
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            atomic_write_json(tmp / STATE_FILE, {
                "format": STATE_FORMAT, "position": state.state_dict(), "config_hash": self.config_key,
                "num_processes": self._world, "total_steps": self.total_steps, "finished": state.finished,
                "files": files, "summary": summary,
            })  # fmt: skip
            swap_dir(tmp, self.dir)
        acc.wait_for_everyone()

    def _check_synchronised(self) -> Optional[str]:
        """This process's weight digest; under data parallelism every rank must hold the same weights
        (a rank that drifted is an error, not a silently averaged run). Sharded models hold different
        parts by design and are not compared."""
        if is_sharded(self.acc, self.model):
            return None
        sd = self.acc.unwrap_model(self.model).state_dict()
        h = hashlib.sha256()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().float().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        if self._world > 1:
            from accelerate.utils import gather_object

            digests = gather_object([digest])
            if len(set(digests)) != 1:
                raise TrainingError(f"the {self._world} processes hold different weights at this checkpoint "
                                    f"({', '.join(d[:12] for d in digests)}): the data-parallel run is not synchronised")
        return digest

    def check(self, *, force: bool = False) -> Optional[dict]:
        """The saved ``trainer.json`` if it may be resumed by this run; raises :class:`ResumeError` when it
        belongs to another config or world size (unless ``force``), :class:`StateError` when altered."""
        manifest = read_trainer_json(self.dir)
        if manifest is None:
            return None
        where = self.dir / STATE_FILE
        if manifest.get("format") != STATE_FORMAT:
            raise StateError(f"{where}: not a training state this code wrote (format {manifest.get('format')!r}); "
                             "refusing to load it (delete the folder, or rerun with --no-resume)")
        problems = []
        if manifest.get("config_hash") != self.config_key:
            problems.append("the config differs from the one the state was saved with")
        if manifest.get("num_processes") != self._world:
            problems.append(f"it was saved with {manifest.get('num_processes')} processes, this run has {self._world}")
        if problems and not force:
            raise ResumeError(f"refusing to resume {self.dir}: " + "; ".join(problems) +
                              " (pass --force-resume to continue anyway, or --no-resume to start over)")
        return manifest

    def _verify(self, manifest: dict) -> None:
        listed = manifest.get("files") or {}
        present = {p.name for p in self.dir.iterdir()} - {STATE_FILE}
        for name in sorted(present - set(listed)):
            raise StateError(f"{self.dir / name}: not written by this training run (not in {STATE_FILE}); refusing to resume")
        for name, digest in listed.items():
            path = self.dir / name
            if not path.is_file():
                raise StateError(f"{path} is missing from the training state; cannot resume (rerun with --no-resume)")
            if sha256_file(path) != digest:
                raise StateError(f"{path} was altered after it was saved (sha256 differs); refusing to resume")

    def load(self, manifest: dict) -> TrainState:
        """Restore weights, optimizer, schedule and RNG states; returns the saved position."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        self._verify(manifest)
        rank = self.acc.process_index
        msd, _ = load_tensors(self.dir / "model.safetensors")
        opt_t, _ = load_tensors(self.dir / "optimizer.safetensors")
        osd = _optimizer_from_parts(opt_t, read_json(self.dir / "optimizer.json"))
        set_state_dict(self.model, self.optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(_untag(read_json(self.dir / "scheduler.json")))
        rng_file = self.dir / f"rng-{rank}.safetensors"
        if rng_file.is_file():
            _set_rng(load_tensors(rng_file)[0], read_json(self.dir / f"rng-{rank}.json"))
        state = TrainState()
        state.load_state_dict(manifest["position"])
        return state

    @staticmethod
    def prune_dir(state_dir: Path) -> None:
        """Keep only ``trainer.json`` of a finished run's state (the rest only serves to resume)."""
        state_dir = Path(state_dir)
        manifest = read_trainer_json(state_dir)
        if manifest is None or manifest.get("pruned"):
            return
        for p in state_dir.iterdir():
            if p.name != STATE_FILE:
                remove(p)
        manifest["files"] = {}
        manifest["pruned"] = True
        atomic_write_json(state_dir / STATE_FILE, manifest)


def save_hf(accelerator: Any, model: torch.nn.Module, tokenizer: Any, dest: Path, extra: dict, card: Optional[str] = None) -> None:
    """A Hugging Face folder (safetensors + tokenizer + ``checkpoint.json`` + ``README.md`` model card),
    built beside ``dest`` and swapped in. Every process calls it (gathering weights is collective)."""
    state_dict = full_model_state(model)  # collective when sharded: every process calls it
    tmp = dest.with_name(f".{dest.name}.tmp")
    if accelerator.is_main_process:
        remove(tmp)
        try:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "checkpoint.json", extra)
            if card is not None:
                (tmp / "README.md").write_text(card)
        except Exception as exc:
            remove(tmp)  # a full disk gets its space back
            raise _save_error(dest, exc) from None
        swap_dir(tmp, dest)
    accelerator.wait_for_everyone()


def _save_error(dest: Path, exc: Exception) -> Exception:
    """A failed checkpoint write as one line naming the checkpoint; safetensors reports the OS error
    in its message only ("File too large (os error 27)"), so the errno is read from there too."""
    if isinstance(exc, StoreWriteError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    found = re.search(r"os error (\d+)", str(exc))
    code = code or (int(found.group(1)) if found else None)
    if code is None:
        return exc
    return write_error(dest, OSError(code, os.strerror(code)))


def copy_hf(src: Path, dest: Path) -> None:
    copy_dir(src, dest)
