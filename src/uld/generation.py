"""Batched greedy generation, shared by teacher answer generation and evaluation.

Both stages decode the same way (the paper's protocol): greedy, at most ``max_new_tokens`` new tokens,
and only the first line of the text is kept. Prompts are sorted by length so a batch holds similar
lengths, left-padded for decoder-only models (every row's next token sits at the last position) and
right-padded for encoder-decoders; results come back in the caller's order.

Few-shot teacher prompts share a long opening (system prompt, the shots): with ``share_prefix`` a
batch's common token prefix goes through the model once, its key/value cache is repeated over the
rows, and only each row's own tail is prefilled, laid out ``[prefix][pads][tail]`` (positions come
from the attention mask, so every row sees the positions it would alone). On this workload prefill,
not decoding, is most of the compute, so this is where batching pays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

__all__ = ["GenerationOutput", "keep_first_line", "greedy_generate", "common_prefix_len", "layout", "fits_window", "MIN_SHARED_PREFIX"]


def keep_first_line(text: str) -> str:
    """The first non-empty line, stripped (a generation that opens with a line break is not empty)."""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


@dataclass
class GenerationOutput:
    """Greedy generations, in the order of the prompts given."""

    texts: list[str]  # decoded new tokens (special tokens removed), before first-line cutting
    answers: list[str]  # first line, stripped (the whole text stripped when first_line=False)
    n_tokens: list[int]  # new tokens each row generated, up to and including EOS, no padding
    seconds: float
    prefill_tokens: int = 0  # prompt positions run through the model, pads included (a shared prefix once per batch)
    pad_tokens: int = 0  # of which pads


class _FirstLineStop:
    """Per-row stopping rule: a row is done once its new text has a line break after some content.

    Greedy tokens before that break do not depend on when decoding stops, so the kept first line is
    the one the full ``max_new_tokens`` would give; stopping early only saves compute.
    """

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(c in t.lstrip() for c in "\n\r") for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _count_new_tokens(row: list[int], eos_ids: set[int], pad_id: Optional[int]) -> int:
    for i, t in enumerate(row):
        if t in eos_ids:
            return i + 1
    n = len(row)
    while n and row[n - 1] == pad_id:
        n -= 1
    return n


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all ``rows`` share, leaving every row at least one token of its own."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return max(n, 0)


# below this a shared prefix is not worth a separate forward pass
MIN_SHARED_PREFIX = 16


@dataclass
class _Batch:
    ids: torch.Tensor  # [B, width]
    mask: torch.Tensor  # [B, width]
    cache: object = None  # key/value cache of the shared prefix, repeated over the rows; None: no prefix
    shared: int = 0  # length of that prefix

    @property
    def prefill_tokens(self) -> int:
        b, width = self.ids.shape
        return self.shared + b * (width - self.shared)

    @property
    def pad_tokens(self) -> int:
        return int((self.mask == 0).sum())


def layout(rows: Sequence[Sequence[int]], pad_id: int, *, shared: int, right_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``rows`` into one tensor: ``[shared prefix][pads][own tail]`` (left padding when ``shared`` is 0),
    or ``[row][pads]`` for an encoder."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        t = torch.as_tensor(list(r), dtype=torch.long)
        if right_pad:
            ids[i, : len(r)], mask[i, : len(r)] = t, 1
            continue
        ids[i, :shared], mask[i, :shared] = t[:shared], 1
        tail = len(r) - shared
        ids[i, width - tail :], mask[i, width - tail :] = t[shared:], 1
    return ids, mask


def fits_window(model, width: int, max_new_tokens: int = 0) -> bool:
    """Sliding-window layers count cache slots, pads included: pads in the middle would shift a long
    row's window, so the shared-prefix layout is only used when the whole sequence fits the window."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return window is None or width + max_new_tokens <= window


def usable_prefix(model, rows: Sequence[Sequence[int]], *, max_new_tokens: int = 0, cap: Optional[int] = None) -> int:
    """Tokens of the prefix ``rows`` share that are worth computing once (at most ``cap``), or 0: a single
    row, a prefix under ``MIN_SHARED_PREFIX`` tokens, or a batch too wide for the model's sliding window."""
    if len(rows) < 2:
        return 0
    shared = common_prefix_len(rows)
    if cap is not None:
        shared = min(shared, cap)
    width = max(len(r) for r in rows)
    return shared if shared >= MIN_SHARED_PREFIX and fits_window(model, width, max_new_tokens) else 0


def prefix_cache(model, prefix_ids: torch.Tensor, n_rows: int):
    """The KV cache of one row's ``prefix_ids [1, S]``, repeated for ``n_rows`` rows."""
    cache = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(n_rows)
    return cache


def _prepare(model, rows, pad_id, *, encoder_decoder: bool, share_prefix: bool, max_new_tokens: int, device) -> _Batch:
    shared = usable_prefix(model, rows, max_new_tokens=max_new_tokens) if share_prefix and not encoder_decoder else 0
    ids, mask = layout(rows, pad_id, shared=shared, right_pad=encoder_decoder)
    cache = prefix_cache(model, ids[:1, :shared].to(device), len(rows)) if shared else None
    return _Batch(ids.to(device), mask.to(device), cache, shared)


def _decode(model, batch: _Batch, *, tokenizer, pad_id: int, max_new_tokens: int, first_line: bool, encoder_decoder: bool) -> list[list[int]]:
    """New token ids of each row of a prepared batch (greedy; the model's own sampling settings are overridden)."""
    from transformers import StoppingCriteriaList

    # encoder-decoder outputs are decoder ids that open with the decoder start token
    prompt_len = 1 if encoder_decoder else batch.ids.shape[1]
    stops = StoppingCriteriaList([_FirstLineStop(tokenizer, prompt_len)]) if first_line else None
    extra = {"past_key_values": batch.cache} if batch.cache is not None else {}
    out = model.generate(
        input_ids=batch.ids,
        attention_mask=batch.mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        stopping_criteria=stops,
        # a model's own generation config may ask for sampling: greedy means greedy
        temperature=None,
        top_p=None,
        top_k=None,
        **extra,
    )
    return out[:, prompt_len:].cpu().tolist()


def _post(text: str, first_line: bool) -> str:
    return keep_first_line(text) if first_line else text.strip()


def _check_inputs(tokenizer, prompt_ids, batch_size: int) -> int:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: cannot batch prompts")
    return pad_id


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    first_line: bool = True,
    encoder_decoder: bool = False,
    share_prefix: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    desc: Optional[str] = None,
    on_batch: Optional[Callable[[list[int], list[str]], None]] = None,
) -> GenerationOutput:
    """Greedy decoding of tokenized prompts.

    ``share_prefix`` prefills each batch's common prefix once (decoder-only models; see the module
    docstring). ``progress(n_rows, n_new_tokens)`` is called after each batch; ``desc`` shows a tqdm
    bar with items/s and tokens/s instead. ``on_batch(indices, answers)`` gets each finished batch's
    prompt indices and post-processed answers (what a resumable caller journals). The model is put in
    eval mode and restored afterwards.
    """
    pad_id = _check_inputs(tokenizer, prompt_ids, batch_size)
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_ids), desc=desc, unit="ex")
    was_training = model.training
    model.eval()
    # longest first: a batch that does not fit in memory fails at once, not at the end; sorted
    # lengths also keep the pads of each batch few
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    texts, n_tokens = [""] * len(prompt_ids), [0] * len(prompt_ids)
    start, total_tokens, prefill, pads = time.perf_counter(), 0, 0, 0
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = _prepare(model, [prompt_ids[i] for i in idx], pad_id, encoder_decoder=encoder_decoder,
                             share_prefix=share_prefix, max_new_tokens=max_new_tokens, device=device)
            prefill, pads = prefill + batch.prefill_tokens, pads + batch.pad_tokens
            new = _decode(model, batch, tokenizer=tokenizer, pad_id=pad_id, max_new_tokens=max_new_tokens,
                          first_line=first_line, encoder_decoder=encoder_decoder)
            batch_tokens = 0
            for r, i in enumerate(idx):
                n_tokens[i] = _count_new_tokens(new[r], eos_ids, pad_id)
                texts[i] = tokenizer.decode(new[r][: n_tokens[i]], skip_special_tokens=True)
                batch_tokens += n_tokens[i]
            total_tokens += batch_tokens
            if on_batch is not None:
                on_batch(list(idx), [_post(texts[i], first_line) for i in idx])
            if progress is not None:
                progress(len(idx), batch_tokens)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(tok_per_s=f"{total_tokens / max(time.perf_counter() - start, 1e-9):.1f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    answers = [_post(t, first_line) for t in texts]
    return GenerationOutput(texts, answers, n_tokens, seconds, prefill, pads)
