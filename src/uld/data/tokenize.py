"""Prompt/answer tokenization with loss masks, context-only truncation, and batch collation.

Decoder-only (causal LM)::

    input_ids = [BOS if the tokenizer adds one] + prompt + sep + answer + [EOS]
    labels    = -100 on BOS and prompt tokens, the token id on answer tokens and EOS

The prompt part is tokenized exactly as :func:`encode_prompt` tokenizes it for generation, so a
student sees the same prompt ids at training and evaluation time, and the answer part is taken from
the tokenization of the whole text ``prompt + sep + answer`` (so SentencePiece's leading ``▁`` and
BPE's ``Ġ`` land on the first answer token as they would in running text).

Encoder-decoder (mT0)::

    input_ids = the prompt with the tokenizer's own special tokens (encoder input)
    labels    = answer + [EOS] (decoder targets; the model shifts them right itself)

Length limit: only the context part of the prompt is shortened (from its end), never the answer;
:class:`PromptTooLong` is raised when even an empty context does not fit, for callers to count skips.
"""

from __future__ import annotations

from uld.errors import PromptTooLong

from dataclasses import dataclass
from typing import Sequence

__all__ = ["IGNORE_INDEX", "Encoded", "PromptTooLong", "special_affixes", "encode_prompt", "encode_pair", "collate"]

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenized (prompt, answer) pair.

    Decoder-only: ``input_ids``, ``labels`` and ``attention_mask`` all have length ``T``.
    Encoder-decoder: ``input_ids``/``attention_mask`` have the encoder length ``S``; ``labels`` the
    decoder length ``A`` (answer tokens + EOS, no -100).
    ``answer_char_starts[i]`` is the character offset in ``answer`` where the i-th supervised token
    starts (EOS: ``len(answer)``), one entry per label that is not -100.
    """

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    answer_char_starts: list[int]
    truncated: bool = False  # the context was shortened to fit max_length
    context_chars_dropped: int = 0
    encoder_decoder: bool = False
    prompt_length: int = 0  # decoder-only: number of leading -100 labels; enc-dec: len(input_ids)

    @property
    def truncated_context(self) -> bool:
        return self.truncated

    @property
    def n_answer_tokens(self) -> int:
        return len(self.answer_char_starts)


_AFFIX_CACHE: dict[int, tuple[list[int], list[int]]] = {}


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """(ids the tokenizer puts before the text, ids it puts after) with ``add_special_tokens=True``.

    Llama-2 / Mistral: ([BOS], []); GPT-2 / Pythia: ([], []); T5 / mT0: ([], [EOS]).
    """
    key = id(tokenizer)
    if key not in _AFFIX_CACHE:
        probe = "probe text"
        bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                _AFFIX_CACHE[key] = (full[:start], full[start + len(bare) :])
                break
        else:  # pragma: no cover - no tokenizer we know does this
            raise ValueError(f"cannot locate the text inside its own special-token wrapping: {full} vs {bare}")
    return _AFFIX_CACHE[key]


def encode_prompt(tokenizer, prompt: str, *, encoder_decoder: bool = False, add_special_tokens: bool = True) -> list[int]:
    """Prompt ids for generation, identical to the prompt part of :func:`encode_pair`.

    Decoder-only: the tokenizer's leading special tokens (BOS) but never trailing ones (an EOS after
    the prompt would end the text before the answer). Encoder-decoder: the tokenizer's full wrapping.
    ``add_special_tokens=False`` for text that already carries them (a rendered chat prompt).
    """
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not add_special_tokens:
        return ids
    prefix, suffix = special_affixes(tokenizer)
    return prefix + ids + (suffix if encoder_decoder else [])


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token; use add_eos=False")
    return int(eos)


def _decoder_pair(tokenizer, prompt: str, sep: str, answer: str, add_eos: bool, add_special_tokens: bool):
    """(prompt ids, answer ids, answer char starts) for a decoder-only model."""
    prompt_ids = encode_prompt(tokenizer, prompt, add_special_tokens=add_special_tokens)
    bare_prompt = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full = tokenizer(prompt + sep + answer, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(full["input_ids"]), list(full["offset_mapping"])
    shift = len(prompt) + len(sep)
    if ids[: len(bare_prompt)] == bare_prompt and len(ids) > len(bare_prompt):
        answer_ids = ids[len(bare_prompt) :]
        starts = [max(0, s - shift) for s, _ in offsets[len(bare_prompt) :]]
    else:
        # A token straddles the prompt/answer boundary: keep the prompt as generation sees it and
        # tokenize the answer on its own (its first token then carries the separator).
        alone = tokenizer(sep + answer, add_special_tokens=False, return_offsets_mapping=True)
        answer_ids = list(alone["input_ids"])
        starts = [max(0, s - len(sep)) for s, _ in alone["offset_mapping"]]
    if add_eos:
        answer_ids.append(_eos_id(tokenizer))
        starts.append(len(answer))
    return prompt_ids, answer_ids, starts


def _encoder_decoder_pair(tokenizer, prompt: str, answer: str, add_eos: bool):
    prompt_ids = encode_prompt(tokenizer, prompt, encoder_decoder=True)
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    answer_ids = list(enc["input_ids"])
    starts = [s for s, _ in enc["offset_mapping"]]
    if add_eos:
        answer_ids.append(_eos_id(tokenizer))
        starts.append(len(answer))
    return prompt_ids, answer_ids, starts


def encode_pair(
    tokenizer,
    prompt: str,
    answer: str,
    *,
    encoder_decoder: bool = False,
    max_length: int | None = None,
    add_eos: bool = True,
    context: str | None = None,
    sep: str | None = None,
    add_special_tokens: bool = True,
) -> Encoded:
    """Tokenize one (prompt, answer) pair for training; see the module docstring for the layout.

    ``context``: the substring of ``prompt`` that may be shortened (its first occurrence), e.g.
    ``ex.context`` with ``prompt = task.student_prompt(ex)``. Without it an over-long pair raises
    :class:`PromptTooLong`. ``max_length`` bounds prompt + answer (+EOS) for decoder-only models and
    the encoder input for encoder-decoder models (whose answer must fit it too).
    ``sep``: text between prompt and answer; default ``" "`` for decoder-only (prompts end with
    ``Answer:``), ``""`` for encoder-decoder (the answer is a separate sequence).
    ``add_special_tokens=False``: the prompt already carries its special tokens (rendered chat text).
    """
    if not answer or not answer.strip():
        raise ValueError("empty answer: nothing to supervise")
    if sep is None:
        sep = "" if encoder_decoder else " "
    if context is not None and context not in prompt:
        raise ValueError("`context` does not occur in `prompt`")

    def build(p: str):
        if encoder_decoder:
            return _encoder_decoder_pair(tokenizer, p, answer, add_eos)
        return _decoder_pair(tokenizer, p, sep, answer, add_eos, add_special_tokens)

    def length(prompt_ids: list[int], answer_ids: list[int]) -> int:
        return len(prompt_ids) if encoder_decoder else len(prompt_ids) + len(answer_ids)

    prompt_ids, answer_ids, starts = build(prompt)
    truncated, dropped = False, 0
    if max_length is not None and length(prompt_ids, answer_ids) > max_length:
        if encoder_decoder and len(answer_ids) > max_length:
            raise PromptTooLong(f"answer of {len(answer_ids)} tokens exceeds max_length={max_length}",
                                n_tokens=len(answer_ids), max_length=max_length)
        if not context:
            n = length(prompt_ids, answer_ids)
            raise PromptTooLong(f"{n} tokens > max_length={max_length} and no context to shorten",
                                n_tokens=n, max_length=max_length)
        (prompt_ids, answer_ids, starts), dropped = _shorten_context(tokenizer, prompt, context, max_length, build, length)
        truncated = True
    return _assemble(prompt_ids, answer_ids, starts, truncated, dropped, encoder_decoder)


def _shorten_context(tokenizer, prompt: str, context: str, max_length: int, build, length):
    """The pair rebuilt with the context cut at a token boundary so that it fits: ``(pair, chars dropped)``."""
    at = prompt.index(context)
    before, after = prompt[:at], prompt[at + len(context) :]
    ctx_offsets = list(tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    # Token counts of the parts do not add up exactly (merges at the seams), so shorten by the
    # overshoot and re-measure until the pair fits; each round removes at least one token.
    keep = len(ctx_offsets) - (length(*build(prompt)[:2]) - max_length)
    while True:
        keep = max(keep, 0)
        cut = ctx_offsets[keep - 1][1] if keep > 0 else 0
        pair = build(before + context[:cut] + after)
        over = length(pair[0], pair[1]) - max_length
        if over <= 0:
            return pair, len(context) - cut
        if keep == 0:
            n = length(pair[0], pair[1])
            raise PromptTooLong(f"{n} tokens > max_length={max_length} even with an empty context",
                                n_tokens=n, max_length=max_length)
        keep -= over


def _assemble(prompt_ids, answer_ids, starts, truncated: bool, dropped: int, encoder_decoder: bool) -> Encoded:
    if encoder_decoder:
        return Encoded(input_ids=prompt_ids, labels=list(answer_ids), attention_mask=[1] * len(prompt_ids),
                       answer_char_starts=starts, truncated=truncated, context_chars_dropped=dropped,
                       encoder_decoder=True, prompt_length=len(prompt_ids))
    return Encoded(input_ids=prompt_ids + answer_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
                   attention_mask=[1] * (len(prompt_ids) + len(answer_ids)), answer_char_starts=starts,
                   truncated=truncated, context_chars_dropped=dropped, encoder_decoder=False,
                   prompt_length=len(prompt_ids))


def _pad(rows: Sequence[Sequence[int]], value: int, side: str, length: int | None = None):
    import torch

    n = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), n), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        t = torch.as_tensor(list(r), dtype=torch.long)
        if side == "right":
            out[i, : len(r)] = t
        else:
            out[i, n - len(r) :] = t
    return out


def collate(encoded_list: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict:
    """Pad a batch into tensors.

    Decoder-only: ``input_ids`` [B, T] (``pad_id``), ``attention_mask`` [B, T] (0 on padding),
    ``labels`` [B, T] (-100 on prompt and padding), all padded on ``padding_side``.
    Encoder-decoder: ``input_ids``/``attention_mask`` [B, S] padded on ``padding_side``; ``labels``
    [B, A] padded on the right with -100 and ``decoder_attention_mask`` [B, A].
    Both: ``answer_char_starts`` [B, A'] (A' = most supervised tokens in the batch), right-padded with -1.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not encoded_list:
        raise ValueError("cannot collate an empty batch")
    kinds = {e.encoder_decoder for e in encoded_list}
    if len(kinds) != 1:
        raise ValueError("a batch mixes encoder-decoder and decoder-only encodings")
    if pad_id is None:
        raise ValueError("pad_id is None: give the tokenizer a pad token (uld.models.load_tokenizer uses EOS)")
    batch = {
        "input_ids": _pad([e.input_ids for e in encoded_list], pad_id, padding_side),
        "attention_mask": _pad([e.attention_mask for e in encoded_list], 0, padding_side),
    }
    if kinds == {True}:
        labels = [e.labels for e in encoded_list]
        batch["labels"] = _pad(labels, IGNORE_INDEX, "right")
        batch["decoder_attention_mask"] = _pad([[1] * len(r) for r in labels], 0, "right")
    else:
        batch["labels"] = _pad([e.labels for e in encoded_list], IGNORE_INDEX, padding_side)
    batch["answer_char_starts"] = _pad([e.answer_char_starts for e in encoded_list], -1, "right")
    return batch
