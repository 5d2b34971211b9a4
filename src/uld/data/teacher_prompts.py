"""Teacher prompts: the one place that builds and tokenizes them.

The teacher stage generates answers from these prompts and caches the teacher's signal on exactly
these tokens; teacher evaluation and the online-teacher training mode reuse the same functions, so a
prompt is never rendered or tokenized two different ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from uld.data.base import select_shots
from uld.data.prompts import render_chat
from uld.data.tokenize import encode_pair, encode_prompt

if TYPE_CHECKING:  # pragma: no cover
    from uld.data.base import Example

__all__ = [
    "select_teacher_shots",
    "render_teacher_prompt",
    "teacher_prompt",
    "encode_teacher_prompt",
    "encode_teacher_pair",
    "answer_separator",
]


def select_teacher_shots(ex: "Example", pool: Sequence["Example"], k: int, seed: int) -> list["Example"]:
    """``k`` few-shot examples for ``ex`` drawn from ``pool`` with a fixed seed, never ``ex`` itself.

    Every item sees the same shots (one shared prompt prefix), except an item that is one of them: it
    gets the next candidate of the same seeded order instead (``uld.data.select_shots``).
    """

    if not isinstance(pool, list):
        pool = list(pool)
    return select_shots(pool, k, seed, exclude=(ex.id,))


def render_teacher_prompt(task, ex: "Example", shots: Sequence["Example"], entry, tokenizer, *, title: bool) -> str:
    """Teacher prompt text for ``ex`` with the given shots: the task's messages through the chat template.

    ``entry`` is the teacher's registry entry: ``system_role`` (False: the system prompt is folded into
    the first user turn) and ``chat_template`` (None: the tokenizer's own; else a named template such as
    ``"plain"``). A tokenizer with no template and no configured one makes ``render_chat`` raise.
    """

    messages = task.teacher_messages(ex, list(shots), title=title)
    return render_chat(tokenizer, messages, system_role=entry.system_role, template=entry.chat_template)


def teacher_prompt(task, ex: "Example", pool: Sequence["Example"], entry, tokenizer, shots: int, title: bool, seed: int) -> str:
    """The one function that builds teacher prompts (answer generation here, teacher evaluation too).

    ``shots`` is the few-shot count (``uld.models.shots_for``), ``title`` whether passage titles are
    shown (``uld.models.title_for``), ``seed`` the shot-selection seed (``data.split_seed``).
    """
    chosen = select_teacher_shots(ex, pool, shots, seed)
    return render_teacher_prompt(task, ex, chosen, entry, tokenizer, title=title)


def _has_special_prefix(tokenizer, text: str) -> bool:
    """Whether rendered prompt text already opens with the tokenizer's BOS (chat templates that write it)."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def encode_teacher_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered teacher prompt, as generation feeds them to the teacher.

    Templates that write the BOS as text (Llama-2, Mistral) are tokenized without adding special
    tokens; the others (``plain``, templates without BOS) get the tokenizer's leading special tokens,
    as a base model saw during pre-training. Identical to the prompt part of :func:`encode_teacher_pair`.
    """

    return encode_prompt(tokenizer, text, add_special_tokens=not _has_special_prefix(tokenizer, text))


def answer_separator(prompt: str) -> str:
    """Text between a teacher prompt and its answer when teacher-forcing: ``" "`` unless the prompt
    already ends in whitespace (ChatML-style templates end their generation prompt with a newline)."""
    return "" if prompt[-1:].isspace() else " "


def encode_teacher_pair(tokenizer, prompt: str, answer: str, *, max_length: Optional[int] = None, add_eos: bool = True):
    """``uld.data.encode_pair`` for a rendered teacher prompt and a kept teacher answer.

    The one tokenization of the teacher side: the teacher stage caches the signal of these tokens, and
    an online teacher must use the same function for its logits to line up with the cache. Raises
    ``uld.data.PromptTooLong`` when the pair exceeds ``max_length`` (no context is ever shortened).
    """

    return encode_pair(
        tokenizer, prompt, answer, encoder_decoder=False, max_length=max_length, add_eos=add_eos,
        sep=answer_separator(prompt), add_special_tokens=not _has_special_prefix(tokenizer, prompt),
    )


