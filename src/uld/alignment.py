"""Pairing student and teacher answer positions across tokenizers.

Two modes, both returning the SAME kind of object (index tensors of paired logit positions):

``positional`` (paper)
    In each row, the i-th marked student position is paired with the i-th marked teacher position,
    for ``i < min(n_s, n_t)``. When the tokenizers split words differently the pairs drift apart:
    after " Broncos" (one GPT-2 token) vs "▁Bron" + "cos" (two Llama tokens), every later student
    token is compared with the teacher distribution of an earlier piece of text.

``offsets`` (extension)
    Pair the student and teacher answer tokens that START at the same character of the answer text;
    tokens without a partner are skipped. Both sides' offsets increase along the answer, so the
    matched pairs are order preserving: keeping only matched positions in each mask and pairing
    by rank reproduces them. :func:`offset_masks` returns those masks, which can be fed straight to
    :func:`uld.losses.uld_loss`.

Character starts are given per MARKED position, in order: ``char_starts[b, i]`` is the character
offset, within the answer text, where the token predicted by the i-th marked logit position of row
``b`` starts (an EOS gets ``len(answer)``). Padded tensors use -1; lists of lists are accepted.
Entries beyond the number of marked positions are ignored, so a list that still holds the EOS entry
works with a mask built with ``skip_eos=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from uld.losses import positional_pairs

__all__ = [
    "char_starts_from_offsets",
    "offset_masks",
    "pad_char_starts",
    "pair_positions",
]

MODES = ("positional", "offsets")
PAD = -1

CharStarts = Tensor | Sequence[Sequence[int]]


def pad_char_starts(rows: CharStarts, device: torch.device | str | None = None) -> Tensor:
    """Lists of per-token char starts -> long ``[B, L]`` padded with -1 (tensors pass through)."""
    if isinstance(rows, Tensor):
        if rows.dim() != 2:
            raise ValueError(f"char starts must be [B, L], got shape {tuple(rows.shape)}")
        return rows.to(device=device, dtype=torch.long)
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for b, r in enumerate(rows):  # input conversion only; the matching itself is vectorised
        if len(r):
            out[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out.to(device)


def char_starts_from_offsets(
    offset_mapping: Tensor | Sequence[Sequence[int]],
    answer_start_char: int | Tensor,
    answer_length: int | Tensor | None = None,
) -> Tensor:
    """Char starts relative to the answer from a fast tokenizer's ``offset_mapping``.

    offset_mapping: ``[T, 2]`` or ``[B, T, 2]`` (start, end) character spans in the full text;
    answer_start_char: where the answer starts in that text (int, or ``[B]``). Returns long
    ``[T]`` / ``[B, T]``.

    A token that begins before the answer (a leading space merged into the first answer token, as
    in " Denver" or "▁Den") gets 0. With ``answer_length`` given, zero-width spans (special tokens
    such as an appended EOS, whose span is (0, 0)) get ``answer_length``, the convention for EOS.
    """
    om = torch.as_tensor(offset_mapping, dtype=torch.long)
    if om.shape[-1] != 2 or om.dim() not in (2, 3):
        raise ValueError(f"offset_mapping must be [T, 2] or [B, T, 2], got shape {tuple(om.shape)}")
    start = torch.as_tensor(answer_start_char, dtype=torch.long)
    if om.dim() == 3 and start.dim() == 1:
        start = start.unsqueeze(1)
    rel = (om[..., 0] - start).clamp(min=0)
    if answer_length is not None:
        length = torch.as_tensor(answer_length, dtype=torch.long)
        if om.dim() == 3 and length.dim() == 1:
            length = length.unsqueeze(1)
        rel = torch.where(om[..., 0] == om[..., 1], length.expand_as(rel), rel)
    return rel


def offset_masks(
    student_mask: Tensor,
    teacher_mask: Tensor,
    student_char_starts: CharStarts,
    teacher_char_starts: CharStarts,
) -> tuple[Tensor, Tensor]:
    """Keep only the marked positions whose token starts at a character where the other side too
    has a token starting. Returns new bool masks ``[B, Ts]``, ``[B, Tt]`` with equal counts per row.

    Within a run of tokens that start at the same character (byte pieces of one character), only
    the first is eligible. Raises ``ValueError`` when a row has fewer char starts than marked
    positions, or when its starts decrease.
    """
    device = student_mask.device
    s_starts = pad_char_starts(student_char_starts, device)
    t_starts = pad_char_starts(teacher_char_starts, device)
    if s_starts.shape[0] != student_mask.shape[0] or t_starts.shape[0] != teacher_mask.shape[0]:
        raise ValueError(
            f"char starts have {s_starts.shape[0]} (student) / {t_starts.shape[0]} (teacher) rows, "
            f"masks have {student_mask.shape[0]} / {teacher_mask.shape[0]}"
        )
    s_valid, s_first = _eligible(s_starts, student_mask, "student")
    t_valid, _ = _eligible(t_starts, teacher_mask, "teacher")

    # Search each eligible student start among the teacher starts; invalid teacher entries are pushed
    # to the end with a sentinel larger than any char offset so the rows stay sorted.
    big = torch.iinfo(torch.long).max
    t_sorted = torch.where(t_valid, t_starts, big)
    if t_sorted.shape[1] == 0 or s_starts.shape[1] == 0:
        return torch.zeros_like(student_mask), torch.zeros_like(teacher_mask)
    query = torch.where(s_first, s_starts, big - 1)
    j = torch.searchsorted(t_sorted, query).clamp(max=t_sorted.shape[1] - 1)
    s_hit = s_first & (t_sorted.gather(1, j) == s_starts)  # searchsorted finds the FIRST equal entry
    t_hit = torch.zeros_like(t_starts).scatter_add_(1, j, s_hit.long()) > 0

    return _ranks_to_positions(student_mask, s_hit), _ranks_to_positions(teacher_mask, t_hit)


def pair_positions(
    student_mask: Tensor,
    teacher_mask: Tensor,
    mode: str = "positional",
    *,
    student_char_starts: CharStarts | None = None,
    teacher_char_starts: CharStarts | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Paired logit positions ``(s_row, s_pos, t_row, t_pos)``, long ``[P]`` each, row-major.

    ``mode="positional"``: i-th marked with i-th marked (paper). ``mode="offsets"``: tokens that
    start at the same answer character (needs both ``*_char_starts``; see module docstring).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "offsets":
        if student_char_starts is None or teacher_char_starts is None:
            raise ValueError("mode='offsets' needs student_char_starts and teacher_char_starts")
        student_mask, teacher_mask = offset_masks(
            student_mask, teacher_mask, student_char_starts, teacher_char_starts
        )
    return positional_pairs(student_mask, teacher_mask)


def _eligible(starts: Tensor, mask: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """(valid, first-of-run) bool ``[B, L]`` for the starts that belong to marked positions."""
    n = mask.sum(1, keepdim=True)
    have = (starts >= 0).sum(1, keepdim=True)
    if bool((have < n).any()):
        bad = int((have < n).long().argmax())
        raise ValueError(
            f"{side} row {bad}: {int(have[bad])} char starts for {int(n[bad])} marked positions"
        )
    rank = torch.arange(starts.shape[1], device=starts.device)
    valid = (rank < n) & (starts >= 0)
    prev = torch.cat([torch.full_like(starts[:, :1], PAD), starts[:, :-1]], dim=1)
    if bool((valid & (rank > 0) & (starts < prev)).any()):
        bad = int((valid & (rank > 0) & (starts < prev)).any(1).long().argmax())
        raise ValueError(f"{side} row {bad}: char starts must not decrease along the answer")
    first = valid & ((rank == 0) | (starts != prev))
    return valid, first


def _ranks_to_positions(mask: Tensor, keep_rank: Tensor) -> Tensor:
    """Mask ``[B, T]`` restricted to the marked positions whose rank ``r`` has ``keep_rank[b, r]``."""
    if keep_rank.shape[1] == 0:
        return torch.zeros_like(mask)
    rank = (mask.long().cumsum(1) - 1).clamp(min=0, max=keep_rank.shape[1] - 1)
    return mask & keep_rank.gather(1, rank)
