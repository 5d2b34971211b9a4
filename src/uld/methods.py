"""Training methods, one entry each: what the student learns from, its distillation term, what it needs.

A method is a :class:`Method` in :data:`METHODS`. The config schema takes its names from this table,
``uld.config.validate`` runs its ``check``, the pipeline asks it whether a teacher stage is needed,
training computes ``CE + lam * term`` with its ``term``, and results tables read its ``log_key`` and
whether it has a distillation term. Adding a method is adding one entry here.

=================  =========================================================================================
``none``           no training (the untouched student is evaluated)
``sft-gold``       cross-entropy on the dataset's reference answers
``sft-teacher``    cross-entropy on the teacher's generated answers (the paper's λ = 0 baseline)
``uld``            CE + λ·ULD on the teacher's answers; the teacher's distributions from the cached signal
                   or from the teacher model run beside the student
``kd-kl``          CE + λ·KL(teacher ‖ student): the same-tokenizer baseline (online teacher)
``uld-ot``         CE + λ·OT with a token transport cost (uniform / Levenshtein / embedding; online teacher)
=================  =========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

# uld.losses (and torch) are imported by the terms when they run: the config schema reads this table, and
# `uld config`, `uld store check` or `uld --help` should not pay torch's start-up time.

__all__ = ["Method", "DistillInputs", "METHODS", "METHOD_NAMES", "get_method"]


@dataclass
class DistillInputs:
    """What a distillation term sees for one micro-batch (masks mark logit positions, see uld.losses)."""

    student_logits: "Tensor"  # [B, Ts, Vs]
    student_mask: "Tensor"  # [B, Ts] bool
    teacher: Any  # teacher logits [B, Tt, Vt] (online), or a losses.TeacherSignal (cached)
    teacher_mask: "Tensor"  # [B, Tt] bool
    training: Any  # the TrainingConfig
    ot_cost: Any = "uniform"  # uld-ot: "uniform" or a cost function built by the trainer

    @property
    def cached(self) -> bool:
        from uld.losses import TeacherSignal

        return isinstance(self.teacher, TeacherSignal)


Check = Callable[[Any], list[tuple[str, str]]]  # ExperimentConfig -> [(dotted key, problem)]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    target: Literal["none", "gold", "teacher"]  # what the cross-entropy is computed on
    term: Optional[Callable[[DistillInputs], "Tensor"]] = None  # the distillation term; None: CE only
    log_key: Optional[str] = None  # the term's column in metrics.jsonl
    cached_signal: bool = False  # can read the teacher stage's cached signal instead of running the teacher
    same_vocab: bool = False  # teacher and student must share one tokenizer
    check: Check = lambda cfg: []

    @property
    def needs_teacher_stage(self) -> bool:
        return self.target == "teacher"

    @property
    def distills(self) -> bool:
        return self.term is not None

    def uses_cache(self, training: Any) -> bool:
        return self.cached_signal and training.distill.teacher_signal == "cached"

    def needs_online_teacher(self, training: Any) -> bool:
        return self.distills and not self.uses_cache(training)


# --------------------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------------------


def _uld(x: DistillInputs) -> "Tensor":
    from uld import losses

    d = x.training.distill
    return losses.uld_loss(
        x.student_logits, x.teacher, x.student_mask, x.teacher_mask,
        student_temperature=d.student_temperature,
        # a cached signal already holds the teacher at its temperature (checked against the config)
        teacher_temperature=1.0 if x.cached else d.teacher_temperature,
        top_k=None if x.cached else d.top_k, reduction=d.reduction, chunk_size=d.loss_chunk_size,
    )  # fmt: skip


def _kd_kl(x: DistillInputs) -> "Tensor":
    from uld import losses

    d = x.training.distill
    return losses.kd_kl(x.student_logits, x.teacher, x.student_mask, x.teacher_mask,
                        temperature=d.student_temperature, reduction=d.reduction)


def _uld_ot(x: DistillInputs) -> "Tensor":
    from uld import losses

    d, ot = x.training.distill, x.training.ot
    return losses.uld_ot(
        x.student_logits, x.teacher, x.student_mask, x.teacher_mask, cost=x.ot_cost, top_k=ot.top_k,
        solver=ot.solver, student_temperature=d.student_temperature, teacher_temperature=d.teacher_temperature,
        reduction=d.reduction,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Checks (run by uld.config.validate, so a bad combination fails before anything is computed)
# --------------------------------------------------------------------------------------------------


def _check_uld(cfg: Any) -> list[tuple[str, str]]:
    d, gen = cfg.training.distill, cfg.generation
    if d.teacher_signal != "cached":
        return []
    out = []
    if d.teacher_temperature != gen.signal_temperature:
        out.append(("training.distill.teacher_temperature",
                    f"is {d.teacher_temperature} but the cached teacher signal is computed at generation.signal_temperature="
                    f"{gen.signal_temperature}; set both to the temperature you want"))
    if d.top_k is not None and d.top_k > gen.top_k_signal:
        out.append(("training.distill.top_k", f"is {d.top_k} but the cached signal keeps generation.top_k_signal={gen.top_k_signal}"))
    if not gen.store_signal:
        out.append(("generation.store_signal", "is false but training.distill.teacher_signal=cached reads the cached signal"))
    return out


def _check_kd_kl(cfg: Any) -> list[tuple[str, str]]:
    d = cfg.training.distill
    if d.student_temperature != d.teacher_temperature:
        return [("training.distill.teacher_temperature",
                 f"kd-kl uses one temperature: set it equal to training.distill.student_temperature ({d.student_temperature})")]
    return []


def _check_uld_ot(cfg: Any) -> list[tuple[str, str]]:
    ot = cfg.training.ot
    if ot.cost == "embedding" and not ot.embedding_model:
        return [("training.ot.embedding_model", "ot.cost=embedding needs a token-embedding model (a Hub id or a local folder)")]
    return []


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", "no training: the model is evaluated as it is", target="none"),
        Method("sft-gold", "cross-entropy on the dataset's reference answers", target="gold"),
        Method("sft-teacher", "cross-entropy on the teacher's answers (λ = 0)", target="teacher"),
        Method("uld", "CE + λ·ULD on the teacher's answers", target="teacher", term=_uld, log_key="uld",
               cached_signal=True, check=_check_uld),
        Method("kd-kl", "CE + λ·KL(teacher ‖ student), same tokenizer", target="teacher", term=_kd_kl, log_key="kl",
               same_vocab=True, check=_check_kd_kl),
        Method("uld-ot", "CE + λ·OT with a token transport cost", target="teacher", term=_uld_ot, log_key="uld",
               check=_check_uld_ot),
    )
}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(METHOD_NAMES)}") from None
