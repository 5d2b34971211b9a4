"""Distillation losses: Universal Logit Distillation (ULD) and its baselines/ablations (torch only).

ULD (Boizard et al., 2024, arXiv 2402.12030) compares a student and a teacher that do NOT share a
tokenizer: sort both next-token distributions in decreasing order, zero-pad the smaller vocabulary and
take the L1 distance. Read :mod:`~uld.losses.uld` (the loss and its memory-bounded autograd),
:mod:`~uld.losses.masks` (which positions, how they pair), :mod:`~uld.losses.kl` (same-tokenizer KD),
:mod:`~uld.losses.ot` (transport-cost ablation), :mod:`~uld.losses.module` (``nn.Module`` wrappers for
any training loop).
"""

from uld.losses._common import REDUCTIONS
from uld.losses.kl import kd_kl
from uld.losses.masks import IGNORE_INDEX, answer_logit_mask, answer_logit_targets, positional_pairs
from uld.losses.module import KDLoss, LossParts, ULDLoss
from uld.losses.ot import CostFn, embedding_cost, levenshtein_cost, normalized_levenshtein, uld_ot
from uld.losses.uld import TeacherSignal, distillation_objective, fold_tail, teacher_signal_from_logits, uld_distance, uld_loss

__all__ = [
    "TeacherSignal", "answer_logit_mask", "answer_logit_targets", "distillation_objective", "embedding_cost", "fold_tail",
    "kd_kl", "levenshtein_cost", "normalized_levenshtein", "positional_pairs", "teacher_signal_from_logits",
    "uld_distance", "uld_loss", "uld_ot", "ULDLoss", "KDLoss", "LossParts", "IGNORE_INDEX", "REDUCTIONS", "CostFn",
]
