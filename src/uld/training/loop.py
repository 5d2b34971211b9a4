"""The training run: one synchronised student on accelerate, resumable exactly, one writer, nothing lost.

:func:`train` decides where the run trains and then tells the story of a :class:`_Session`: load the
models and rows, restore the saved position if there is one, run the optimizer steps (validating,
selecting and checkpointing on the way), finalize. Every process of an ``accelerate launch`` calls it:
the student is wrapped by accelerate (DDP, FSDP or DeepSpeed according to the accelerate config), each
process reads a different shard of every global batch (global batch = ``batch_size * num_processes *
grad_accum``) and all ranks hold the same weights after every step; the shuffling order is a function of
``(training.seed, epoch)`` only. The online teacher is a frozen, unwrapped copy per process.

Records (in the run folder, or in its staging folder until they are committed):

* ``metrics.jsonl`` (main process only): one line per ``log_every`` optimizer steps with
  ``split="train"`` (loss, ce, the distillation term under the method's ``log_key``, lr, grad_norm,
  tokens_per_s over all processes, peak memory) and one per validation pass with ``split="val"``.
* ``checkpoints/state``: the resumable state (:mod:`uld.training.state`), written every ``save_every``
  optimizer steps (default: every epoch) and at the end; a resumed run skips the micro-batches already
  consumed, so it follows exactly the trajectory of an uninterrupted one. Once the run has finished only
  ``trainer.json`` is kept (``training.checkpoints.keep_state: true`` keeps everything).
* ``checkpoints/last`` and ``checkpoints/best``: Hugging Face folders with a model card. ``best`` is the
  lowest validation cross-entropy on the teacher's (or gold) validation answers, evaluated every
  ``eval_every`` optimizer steps (default: each epoch) and at the end; ties keep the earlier step;
  ``select: last`` copies the final weights; without validation rows ``best_val_loss`` falls back to last.
* ``train_summary.json``: written last; its presence means training is done.

Never destroyed: a finished run is not retrained without ``force``; retraining (or a fresh start over an
unfinished run's records) happens in ``.staging-train/`` and is moved in by one journaled commit that also
retires the old evaluation (``uld.store.RunFolder.commit``). A loss that is NaN or infinite on any rank stops
the run with :class:`TrainingDiverged` after saving the current weights to ``checkpoints/diverged``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from uld.answers import check_signal_matches, read_answers
from uld.config import ExperimentConfig, to_dict
from uld.distributed import accelerator, dist, on_main
from uld.errors import StoreWriteError, TrainingDiverged, TrainingError
from uld.ids import resume_key
from uld.io import append_jsonl, atomic_write_json, read_jsonl, recover_dir, remove, write_jsonl
from uld.methods import get_method
from uld.model_card import model_card
from uld.models import bind_run_models, load_model, load_tokenizer, resolve_model
from uld.signal import TeacherSignalStore
from uld.store import RunFolder
from uld.training.objectives import answer_nll, build_ot_cost, compute_losses, student_answer_logits
from uld.training.optim import build_optimizer, build_scheduler, plan_steps, resolve_lr
from uld.training.parallel import cpu_fsdp_requested, shard
from uld.training.rows import (DistillationCollator, DistillationDataset, EpochSampler, LengthBucketSampler, encode_rows,
                               item_length, load_training_rows)
from uld.training.state import Checkpointer, TrainState, copy_hf, read_trainer_json, save_hf

log = logging.getLogger(__name__)

__all__ = ["train", "TRAINING_RECORDS", "EVALUATION_RECORDS"]

TRAINING_RECORDS = ("metrics.jsonl", "checkpoints", "train_summary.json")
EVALUATION_RECORDS = ("eval", "scores.json")
STAGING = "train"


@dataclasses.dataclass
class _Layout:
    out: Path  # where this attempt writes its records
    resume: bool  # continue a saved state found there
    staged: bool  # out is a staging folder, committed into the run at the end
    done: Optional[dict] = None  # training had already finished: its summary


def train(cfg: ExperimentConfig, run: RunFolder, teacher_dir: Optional[Path], *, resume: bool = True,
          force: bool = False, force_resume: bool = False) -> dict:
    """Train the student of ``cfg`` into ``run`` and return the summary (also ``train_summary.json``).

    ``resume``: continue from a saved state when one exists; a finished run returns its summary unless
    ``force`` retrains it (beside the old records, committed at the end). ``force_resume`` resumes a
    state saved under another config or world size.
    """
    cfg = bind_run_models(cfg)
    d = dist()
    if get_method(cfg.training.method).target == "none":
        summary = {"method": "none", "trained": False}
        on_main(lambda: run.write_json("train_summary.json", summary), d)
        return summary
    layout = on_main(lambda: _choose_layout(run, cfg, resume=resume, force=force), d)
    if layout.done is not None:
        return layout.done
    try:
        summary = _Session(cfg, layout.out, teacher_dir, run_id=run.id).run(resume=layout.resume, force_resume=force_resume)
    except StoreWriteError:
        if layout.staged:  # a full disk or a file-size limit: give the space back, keep the old records
            on_main(lambda: remove(layout.out), d)
        raise
    if layout.staged:
        on_main(lambda: run.commit(layout.out, TRAINING_RECORDS, drop=EVALUATION_RECORDS), d)
    return summary


def _choose_layout(run: RunFolder, cfg: ExperimentConfig, *, resume: bool, force: bool) -> _Layout:
    run.recover()
    state_dir = run.file("checkpoints", "state")
    manifest = read_trainer_json(state_dir)
    finished = run.exists("train_summary.json") or bool(manifest and manifest.get("finished"))
    if finished and not force:
        # finalizing again completes a run killed between its final state and its last record
        summary = run.read_json("train_summary.json") if run.exists("train_summary.json") else manifest["summary"]
        log.info("training of %s already finished (use --force to retrain)", run.id)
        return _Layout(run.path, False, False, done=_finalize(run.path, cfg, summary))
    staging = run.file(f".staging-{STAGING}")
    if staging.exists():
        recover_dir(staging / "checkpoints" / "state")
    if resume and not force and read_trainer_json(staging / "checkpoints" / "state") is not None:
        return _Layout(staging, True, True)  # an interrupted retraining: continue it
    if force or any(run.exists(n) for n in TRAINING_RECORDS):
        if resume and not force and manifest is not None:
            return _Layout(run.path, True, False)
        return _Layout(run.staging(STAGING), False, True)
    return _Layout(run.path, False, False)


def _finalize(out: Path, cfg: ExperimentConfig, summary: dict) -> dict:
    """Checkpoint selection, the summary, pruning: idempotent, so a run killed half-way through it
    completes it on its next start."""
    ck = cfg.training.checkpoints
    best, last = out / "checkpoints" / "best", out / "checkpoints" / "last"
    if (summary["select"] == "last" or not best.exists()) and last.exists():
        copy_hf(last, best)
    atomic_write_json(out / "train_summary.json", summary)
    if not ck.keep_last and summary["select"] != "last":
        remove(last)
    if not ck.keep_state:
        Checkpointer.prune_dir(out / "checkpoints" / "state")
    return summary


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to optimizer step ``step`` (those after it will be recomputed); a torn
    last line of a killed writer is dropped."""
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


class _Session:
    """One attempt at training ``cfg`` into the folder ``out``."""

    def __init__(self, cfg: ExperimentConfig, out: Path, teacher_dir: Optional[Path], *, run_id: str):
        self.cfg, self.t, self.out, self.teacher_dir, self.run_id = cfg, cfg.training, Path(out), teacher_dir, run_id
        self.method = get_method(cfg.training.method)
        self.acc = accelerator(self.t.mixed_precision, log_with=list(self.t.trackers) or None,
                               project_dir=str(self.out))
        self.main, self.world = self.acc.is_main_process, self.acc.num_processes
        self.metrics_path = self.out / "metrics.jsonl"
        self.ckpt = self.out / "checkpoints"
        if self.main:  # undo folder swaps a killed attempt left half done
            for sub in ("best", "last", "state"):
                recover_dir(self.ckpt / sub)
        self.acc.wait_for_everyone()

    # ---- the story -------------------------------------------------------------------------------

    def run(self, *, resume: bool, force_resume: bool) -> dict:
        from accelerate.utils import set_seed

        started = time.perf_counter()
        set_seed(self.t.seed)
        self._load_models()
        self._load_data()
        self._build_optimization()
        state = TrainState()
        manifest = self.checkpointer.check(force=force_resume) if resume else None
        if manifest is not None and manifest.get("finished") and manifest.get("summary"):
            return on_main(lambda: _finalize(self.out, self.cfg, manifest["summary"]))
        if manifest is not None:
            state = self.checkpointer.load(manifest)
            if self.main:
                _truncate_metrics(self.metrics_path, state.global_step)
            log.info("resuming %s at optimizer step %d (epoch %d, micro-batch %d)", self.run_id, state.global_step,
                     state.epoch, state.batch_in_epoch)
        self.acc.wait_for_everyone()
        self._init_trackers()
        self._loop(state)
        summary = self._summary(state, started, resumed=manifest is not None)
        self._save_checkpoints(state, summary=summary)
        result = on_main(lambda: _finalize(self.out, self.cfg, summary))
        if self.t.trackers:
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return result

    # ---- set-up ----------------------------------------------------------------------------------

    def _load_models(self) -> None:
        cfg, t = self.cfg, self.t
        self.s_resolved = resolve_model(cfg.student)
        self.enc_dec = self.s_resolved.is_encoder_decoder
        self.s_tok = load_tokenizer(self.s_resolved, padding_side="right")
        self.model = load_model(self.s_resolved)
        self.model.train()
        self.t_tok, self.teacher, self.store, self.ot_cost = None, None, None, "uniform"
        if not self.method.distills and t.distill.alignment != "offsets":
            return
        if self.method.distills and self.method.uses_cache(t):
            self.store = self._signal_store()
        needs_tok = self.method.needs_online_teacher(t) or t.distill.alignment == "offsets"
        if needs_tok:
            t_resolved = resolve_model(cfg.teacher)
            self.t_tok = load_tokenizer(t_resolved, padding_side="right")
        if self.method.needs_online_teacher(t):
            self.teacher = load_model(resolve_model(cfg.teacher)).to(self.acc.device).eval().requires_grad_(False)
        if self.method.same_vocab and self.s_tok.get_vocab() != self.t_tok.get_vocab():
            raise TrainingError(f"training.method={t.method} needs the teacher and the student to share one tokenizer; "
                                "these two differ (use uld for cross-tokenizer distillation)")
        if t.method == "uld-ot":
            self.ot_cost = build_ot_cost(cfg, self.s_tok, self.t_tok, self.model.get_output_embeddings().weight.shape[0],
                                         self.teacher.get_output_embeddings().weight.shape[0], self.acc.device)

    def _signal_store(self) -> TeacherSignalStore:
        cfg = self.cfg
        sig = Path(self.teacher_dir) / "signal" if self.teacher_dir is not None else None
        if sig is None or not sig.exists():
            raise TrainingError(f"training.distill.teacher_signal=cached but {sig} does not exist: run the teacher stage "
                                "with generation.store_signal=true, or use training.distill.teacher_signal=online")
        return TeacherSignalStore(sig, expect_k=cfg.generation.top_k_signal, expect_temperature=cfg.generation.signal_temperature)

    def _load_data(self) -> None:
        t = self.t
        train_rows, val_rows, self.data_info = load_training_rows(self.cfg, self.teacher_dir)
        if self.store is not None:
            check_signal_matches(read_answers(self.teacher_dir), self.store, self.teacher_dir)
        # the teacher side is never truncated: the teacher stage only kept rows that fit its context
        # data.max_length: null trains on whole rows, up to what the student can attend to
        max_length = self.cfg.data.max_length or self.s_resolved.entry.max_length
        enc = dict(student_encoder_decoder=self.enc_dec, max_length=max_length,
                   teacher_tok=self.t_tok if (self.teacher is not None or t.distill.alignment == "offsets") else None)
        train_items, self.train_counts = encode_rows(train_rows, self.s_tok, **enc)
        val_items, self.val_counts = encode_rows(val_rows, self.s_tok, **enc)
        if not train_items:
            raise TrainingError(f"no training rows left ({self.train_counts}); check the teacher answers and data.max_length")
        collator = DistillationCollator(self.s_tok.pad_token_id, self.t_tok.pad_token_id if self.t_tok is not None else None,
                                        self.store, t.distill.top_k)
        # Own generators: creating a DataLoader iterator draws a seed, and drawing it from the global RNG
        # would shift the dropout masks of a resumed run (which creates one more iterator).
        sampler = (LengthBucketSampler([item_length(it) for it in train_items], t.batch_size, t.seed)
                   if t.batching == "length" else EpochSampler(len(train_items), t.seed))
        self.train_dl = DataLoader(DistillationDataset(train_items), batch_size=t.batch_size,
                                   sampler=sampler, collate_fn=collator,
                                   num_workers=t.num_workers, generator=torch.Generator().manual_seed(t.seed))
        self.val_dl = DataLoader(DistillationDataset(val_items), batch_size=t.batch_size, shuffle=False, collate_fn=collator,
                                 num_workers=t.num_workers, generator=torch.Generator().manual_seed(t.seed + 1)) if val_items else None
        self.select = t.checkpoints.select
        if self.select == "best_val_loss" and self.val_dl is None:
            log.warning("no validation rows: checkpoint selection falls back to the last weights")
            self.select = "last"

    def _build_optimization(self) -> None:
        t = self.t
        self.lr, self.lr_source = resolve_lr(t)
        loaders = [self.train_dl] + ([self.val_dl] if self.val_dl is not None else [])
        if cpu_fsdp_requested(self.acc):  # accelerate shards only on accelerators: FSDP2 by hand on CPUs
            self.model = shard(self.model)
            self.optimizer, *loaders = self.acc.prepare(build_optimizer(self.model, self.lr, t.optim.weight_decay, t.optim.fused), *loaders)
        else:
            optimizer = build_optimizer(self.model, self.lr, t.optim.weight_decay, t.optim.fused)
            self.model, self.optimizer, *loaders = self.acc.prepare(self.model, optimizer, *loaders)
        self.train_dl = loaders[0]
        self.val_dl = loaders[1] if len(loaders) > 1 else None
        self.batches_per_epoch = len(self.train_dl)
        self.steps_per_epoch, self.total_steps = plan_steps(self.batches_per_epoch, t.grad_accum, t.epochs, t.max_steps)
        # Not passed through prepare(): accelerate would step it once per process; it is stepped once per
        # optimizer step here and saved by the checkpointer.
        self.scheduler = build_scheduler(self.optimizer, t.optim.scheduler, self.total_steps, self.lr, t.optim.warmup_ratio)
        self.checkpointer = Checkpointer(self.ckpt / "state", self.acc, self.model, self.optimizer, self.scheduler,
                                         config_key=resume_key(self.cfg), total_steps=self.total_steps)

    def _init_trackers(self) -> None:
        if self.t.trackers:
            flat = {}
            for section, vals in to_dict(self.cfg).items():
                if isinstance(vals, dict):
                    flat.update({f"{section}.{k}": v for k, v in vals.items() if isinstance(v, (int, float, str, bool))})
            self.acc.init_trackers(self.run_id, config=flat)

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self, state: TrainState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total_steps, initial=state.global_step, disable=not self.main,
                        desc=f"train {self.t.method}", dynamic_ncols=True)
        self.window = _Window()
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch) + 1
        epoch, skip = state.epoch, state.batch_in_epoch
        try:
            while state.global_step < self.total_steps and epoch < n_epochs:
                self.train_dl.set_epoch(epoch)
                loader = self.acc.skip_first_batches(self.train_dl, skip) if skip else self.train_dl
                for i, batch in enumerate(loader, start=skip):
                    if self._micro_step(state, i, batch) and self._after_optimizer_step(state, epoch, i):
                        return
                epoch, skip = epoch + 1, 0
        finally:
            self.bar.close()

    def _micro_step(self, state: TrainState, i: int, batch: dict) -> bool:
        """Forward/backward of micro-batch ``i``; an optimizer step when it closes an accumulation window
        (windows restart at each epoch, the last may be shorter). Returns whether it stepped."""
        t = self.t
        w_start = (i // t.grad_accum) * t.grad_accum
        w_len = min(t.grad_accum, self.batches_per_epoch - w_start)
        sync = i == w_start + w_len - 1
        with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
            with self.acc.autocast():
                out = compute_losses(self.model, batch, t, encoder_decoder=self.enc_dec, teacher=self.teacher,
                                     student_eos_id=self.s_tok.eos_token_id, ot_cost=self.ot_cost)
            self._guard_divergence(state, batch, out.loss)
            self.acc.backward(out.loss / w_len)
        self.window.add(out)
        if not sync:
            return False
        self.lr_used = self.scheduler.get_last_lr()[0]  # the rate this optimizer step applies
        self.grad_norm = None
        if t.optim.max_grad_norm is not None:
            gn = self.acc.clip_grad_norm_(self.model.parameters(), t.optim.max_grad_norm)
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # a DTensor when the model is sharded
            self.grad_norm = float(gn) if gn is not None else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        self.bar.update(1)
        return True

    def _guard_divergence(self, state: TrainState, batch: dict, loss: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach())) else 1.0, device=self.acc.device)
        if float(self.acc.reduce(bad, "sum")) == 0:
            return
        ids = [r for rs in dist().gather(batch["row_ids"]) for r in rs]
        diverged = self.ckpt / "diverged"
        self.optimizer.zero_grad(set_to_none=True)
        save_hf(self.acc, self.model, self.s_tok, diverged, {"step": state.global_step, "row_ids": ids})
        raise TrainingDiverged(state.global_step, ids, diverged, float(loss.detach()))

    def _after_optimizer_step(self, state: TrainState, epoch: int, i: int) -> bool:
        """Logging, validation, checkpoints after the optimizer step that closed micro-batch ``i`` of
        ``epoch``; returns True when training is done."""
        t, ck = self.t, self.t.checkpoints
        end_of_epoch = i + 1 == self.batches_per_epoch
        state.epoch, state.batch_in_epoch = (epoch + 1, 0) if end_of_epoch else (epoch, i + 1)
        finished = state.global_step >= self.total_steps
        if state.global_step % t.log_every == 0 or finished:
            self._log_train(state)
        if self.val_dl is not None and (finished or (ck.eval_every and state.global_step % ck.eval_every == 0)
                                        or (not ck.eval_every and end_of_epoch)):
            self._validate(state)
        if not finished and ((ck.save_every and state.global_step % ck.save_every == 0) or (not ck.save_every and end_of_epoch)):
            self._save_checkpoints(state)  # the final one is written with the summary
        state.finished = finished
        return finished

    # ---- records ---------------------------------------------------------------------------------

    def _record(self, rec: dict) -> None:
        if self.main:
            append_jsonl(self.metrics_path, rec)
        if self.t.trackers:
            self.acc.log({f"{rec['split']}/{k}": v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"},
                         step=rec["step"])

    def _epoch_float(self, state: TrainState) -> float:
        return round(state.epoch + state.batch_in_epoch / self.batches_per_epoch, 4)

    def _log_train(self, state: TrainState) -> None:
        w = self.window.reduce(self.acc)
        rec = {"step": state.global_step, "epoch": self._epoch_float(state), "split": "train", "loss": w["loss"], "ce": w["ce"],
               # the distillation term under its loss's name: "uld" (uld, uld-ot) or "kl" (kd-kl)
               (self.method.log_key or "uld"): w["distill"] if self.method.distills else None,
               "lr": self.lr_used, "grad_norm": self.grad_norm, "tokens_per_s": w["tokens_per_s"],
               "max_memory_mb": round(_peak_memory_mb(self.acc.device), 1)}
        self._record(rec)
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
        self.window = _Window()

    def _validate(self, state: TrainState) -> None:
        self.model.eval()
        nll_sum, tok_sum = 0.0, 0.0
        with torch.no_grad():
            for vb in self.val_dl:
                with self.acc.autocast():
                    logits, labels, causal = student_answer_logits(self.model, vb, self.enc_dec, answer_only=self.t.logits == "answer")
                nll, n = answer_nll(logits, labels, causal=causal)
                # gather_for_metrics drops the samples accelerate repeats to even out the last batch
                nll, n = self.acc.gather_for_metrics((nll, n))
                nll_sum += float(nll.sum())
                tok_sum += float(n.sum())
        self.model.train()
        val_loss = nll_sum / max(tok_sum, 1.0)
        improved = val_loss < state.best
        if improved:
            state.best_val_loss, state.best_step = val_loss, state.global_step
        self._record({"step": state.global_step, "epoch": self._epoch_float(state), "split": "val", "loss": val_loss,
                      "ce": val_loss, "best": improved})
        if improved and self.select == "best_val_loss":
            self._save_model(self.ckpt / "best", state, {"val_loss": val_loss, "rule": self.select})

    def _save_model(self, dest: Path, state: TrainState, extra: dict) -> None:
        card = model_card(self.cfg, self.run_id, step=state.global_step, checkpoint=dest.name)
        save_hf(self.acc, self.model, self.s_tok, dest, {"step": state.global_step, **extra}, card=card)

    def _save_checkpoints(self, state: TrainState, *, summary: Optional[dict] = None) -> None:
        self._save_model(self.ckpt / "last", state, {})
        self.checkpointer.save(state, summary=summary)

    def _summary(self, state: TrainState, started: float, *, resumed: bool) -> dict:
        t = self.t
        return {
            "method": t.method, "trained": True, "steps": state.global_step, "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "epochs": t.epochs, "num_processes": self.world,
            "global_batch": t.batch_size * self.world * t.grad_accum, "lr": self.lr, "lr_source": self.lr_source,
            "select": self.select, "best_step": state.best_step if self.select == "best_val_loss" else state.global_step,
            "best_val_loss": state.best_val_loss, "train_rows": self.train_counts, "val_rows": self.val_counts,
            "data": self.data_info, "teacher_dir": str(self.teacher_dir) if self.teacher_dir is not None else None,
            "wall_s": round(time.perf_counter() - started, 2), "resumed": resumed,
        }


class _Window:
    """Sums of the losses since the last log line (reduced over processes when logged)."""

    def __init__(self) -> None:
        self.loss = self.ce = self.distill = 0.0
        self.n = self.tokens = 0
        self.start = time.perf_counter()

    def add(self, out: Any) -> None:
        self.loss += float(out.loss.detach())
        self.ce += float(out.ce)
        self.distill += float(out.distill) if out.distill is not None else 0.0
        self.n += 1
        self.tokens += out.n_tokens

    def reduce(self, acc: Any) -> dict:
        stats = acc.reduce(torch.tensor([self.loss, self.ce, self.distill, self.n, self.tokens], dtype=torch.float64,
                                        device=acc.device), "sum")
        loss, ce, distill, n, tokens = stats.tolist()
        elapsed = time.perf_counter() - self.start
        n = max(n, 1.0)
        return {"loss": loss / n, "ce": ce / n, "distill": distill / n, "tokens_per_s": tokens / elapsed if elapsed > 0 else None}
