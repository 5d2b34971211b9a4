"""The loss of one micro-batch: cross-entropy on the answer plus the method's distillation term.

CE is the mean negative log-likelihood over the batch's student answer tokens (the EOS included: the
student must learn to stop). The distillation term (methods with a ``term`` in :mod:`uld.methods`) compares
the student's distributions at its answer positions (``answer_logit_mask``; the position predicting the
EOS skipped when ``training.distill.skip_student_eos``) with the teacher's at the teacher's answer
positions (its EOS skipped when ``skip_teacher_eos``), paired by rank or by character offsets, taken from
the cached signal or from the teacher model run beside the student. Total: ``CE + lam * term``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from transformers import AutoModel

from uld import losses
from uld.alignment import offset_masks
from uld.config import ExperimentConfig, ModelConfig, TrainingConfig
from uld.errors import TrainingError
from uld.methods import DistillInputs, get_method
from uld.models import load_tokenizer, resolve_model
from uld.signal import answer_logits

__all__ = ["LossOutput", "compute_losses", "student_answer_logits", "answer_nll", "build_ot_cost"]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what is back-propagated
    ce: torch.Tensor  # scalar, detached
    distill: Optional[torch.Tensor]  # scalar, detached (None for CE-only methods)
    n_tokens: int  # student tokens processed (prompt + answer, no padding)


def _student_forward(model: torch.nn.Module, batch: dict, encoder_decoder: bool) -> torch.Tensor:
    """Student logits ``[B, T, V]``: aligned with ``input_ids`` (decoder-only) or with ``labels``
    (encoder-decoder; the decoder input is the right-shifted labels)."""
    if encoder_decoder:
        inner = model.module if hasattr(model, "module") else model
        dec_in = inner.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec_in,
                     decoder_attention_mask=batch.get("decoder_attention_mask")).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def student_answer_logits(
    model: torch.nn.Module, batch: dict, encoder_decoder: bool, *, answer_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Student logits with the labels they are scored against: ``(logits [B, T', V], labels [B, T'], causal)``.

    ``answer_only=False``: the full logits, ``labels = batch["labels"]``, ``causal`` for decoder-only
    models. ``answer_only=True`` (decoder-only): only the positions that predict an answer token are
    projected onto the vocabulary (``logits_to_keep``), packed per row in order and right-padded, with
    their targets as labels (-100 on padding) and ``causal=False``: the same losses at a fraction of the
    cost of a large output layer. Encoder-decoder logits already cover the answer only.
    """
    labels = batch["labels"]
    if encoder_decoder or not answer_only:
        return _student_forward(model, batch, encoder_decoder), labels, not encoder_decoder
    targets = losses.answer_logit_targets(labels, causal=True)  # [B, T]: token predicted at each position
    keep = targets != -100
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that ignores a mask-valued logits_to_keep returns every position
        logits = logits[keep]
    counts = keep.sum(dim=1).tolist()
    packed = torch.nn.utils.rnn.pad_sequence(list(torch.split(logits, counts)), batch_first=True)
    packed_targets = torch.nn.utils.rnn.pad_sequence(list(torch.split(targets[keep], counts)), batch_first=True,
                                                     padding_value=-100)
    return packed, packed_targets, False


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the answer tokens and their counts.

    logits ``[B, T, V]``, labels ``[B, T]`` (-100 off the answer). Returns ``(nll [B], n [B])`` in float32.
    """
    lg, lb = (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)
    nll = F.cross_entropy(lg.float().transpose(1, 2), lb, ignore_index=-100, reduction="none")  # [B, T']
    valid = lb != -100
    return (nll * valid).sum(dim=1), valid.sum(dim=1).float()


def _teacher_side(batch: dict, tcfg: TrainingConfig, teacher: Optional[torch.nn.Module]) -> tuple[Any, torch.Tensor]:
    """(cached TeacherSignal or online teacher logits, teacher mask)."""
    skip = tcfg.distill.skip_teacher_eos
    if "signal_probs" in batch:
        probs, lengths = batch["signal_probs"], batch["signal_lengths"]
        # one cached distribution per answer token, then the one predicting the teacher's EOS (last)
        lengths = lengths - 1 if skip else lengths
        mask = torch.arange(probs.shape[1], device=probs.device)[None, :] < lengths[:, None]
        return losses.TeacherSignal(probs=probs, tail=batch["signal_tail"]), mask
    if teacher is None:
        raise TrainingError(f"training.method={tcfg.method!r} with the online teacher: no teacher model was loaded")
    return answer_logits(teacher, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_labels"],
                         skip_eos=skip)


def _align(tcfg: TrainingConfig, batch: dict, student_mask: torch.Tensor, teacher_mask: torch.Tensor):
    """``offsets`` alignment: keep only the answer positions whose tokens start at the same character
    on both sides (``uld.alignment.offset_masks``); ``positional`` (paper): the masks unchanged."""
    if tcfg.distill.alignment == "positional":
        return student_mask, teacher_mask
    if "teacher_answer_char_starts" not in batch:
        raise TrainingError("training.distill.alignment=offsets needs the teacher-side encoding of each row")
    return offset_masks(student_mask, teacher_mask, batch["answer_char_starts"], batch["teacher_answer_char_starts"])


def compute_losses(
    model: torch.nn.Module,
    batch: dict,
    tcfg: TrainingConfig,
    *,
    encoder_decoder: bool,
    teacher: Optional[torch.nn.Module] = None,
    student_eos_id: Optional[int] = None,
    ot_cost: Any = "uniform",
) -> LossOutput:
    """Loss of one micro-batch for ``tcfg.method`` (see the module docstring)."""
    labels = batch["labels"]
    n_tokens = int(batch["attention_mask"].sum().item())
    if encoder_decoder:
        n_tokens += int((labels != -100).sum().item())
    logits, labels, causal = student_answer_logits(model, batch, encoder_decoder, answer_only=tcfg.logits == "answer")
    nll, n = answer_nll(logits, labels, causal=causal)
    ce = nll.sum() / n.sum().clamp_min(1.0)
    method = get_method(tcfg.method)
    if not method.distills:
        return LossOutput(ce, ce.detach(), None, n_tokens)
    student_mask = losses.answer_logit_mask(labels, causal=causal, skip_eos=tcfg.distill.skip_student_eos,
                                            eos_token_id=student_eos_id)
    teacher_view, teacher_mask = _teacher_side(batch, tcfg, teacher)
    student_mask, teacher_mask = _align(tcfg, batch, student_mask, teacher_mask)
    term = method.term(DistillInputs(logits, student_mask, teacher_view, teacher_mask, tcfg, ot_cost))
    total = losses.distillation_objective(ce, term, tcfg.lam)
    return LossOutput(total, ce.detach(), term.detach(), n_tokens)


# --------------------------------------------------------------------------------------------------
# Transport costs of uld-ot
# --------------------------------------------------------------------------------------------------


def _vocab_strings(tok: Any, size: int) -> list[str]:
    """Text of every token id below ``size`` (ids beyond the tokenizer: ""), whitespace stripped."""
    n = len(tok)
    return [tok.decode([i]).strip() if i < n else "" for i in range(size)]


def _embedder(name: str, device: torch.device) -> Callable[[list[str]], torch.Tensor]:
    """``texts -> [n, d]``: mean-pooled last hidden states of one shared encoder (e.g. a sentence-embedding
    model), memoised per string since training meets the same top-k tokens again and again."""
    resolved = resolve_model(ModelConfig(name=name))
    tok = load_tokenizer(resolved)
    model = AutoModel.from_pretrained(resolved.source, revision=resolved.revision, use_safetensors=True,
                                      trust_remote_code=resolved.trust_remote_code).to(device).eval()
    cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in cache})
        for i in range(0, len(new), 256):
            chunk = new[i : i + 256]
            enc = tok([t or " " for t in chunk], padding=True, truncation=True, max_length=32, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            for t, v in zip(chunk, (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)):
                cache[t] = v.float().cpu()
        return torch.stack([cache[t] for t in texts])

    return embed


def build_ot_cost(cfg: ExperimentConfig, s_tok: Any, t_tok: Any, s_vocab: int, t_vocab: int, device: torch.device) -> Any:
    """The token cost of ``training.ot.cost``: ``"uniform"`` or a cost function over token ids."""
    kind = cfg.training.ot.cost
    if kind == "uniform":
        return "uniform"
    s_str, t_str = _vocab_strings(s_tok, s_vocab), _vocab_strings(t_tok, t_vocab)
    if kind == "levenshtein":
        return losses.levenshtein_cost(s_str, t_str)
    return losses.embedding_cost(s_str, t_str, _embedder(cfg.training.ot.embedding_model, device))
