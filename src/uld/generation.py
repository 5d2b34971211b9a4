"""Batched greedy generation, shared by teacher answer generation and evaluation.

Both stages decode the same way (the paper's protocol): greedy, at most ``max_new_tokens`` new tokens,
and only the first line of the text is kept. Prompts are sorted by length so a batch holds similar
lengths, left-padded for decoder-only models (every row's next token sits at the last position) and
right-padded for encoder-decoders; results come back in the caller's order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

__all__ = ["GenerationOutput", "keep_first_line", "greedy_generate"]


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
    progress: Optional[Callable[[int, int], None]] = None,
    desc: Optional[str] = None,
) -> GenerationOutput:
    """Greedy decoding of tokenized prompts.

    ``progress(n_rows, n_new_tokens)`` is called after each batch; ``desc`` shows a tqdm bar with
    items/s and tokens/s instead. The model is put in eval mode and restored afterwards.
    """
    from transformers import StoppingCriteriaList

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: cannot batch prompts")
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)

    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_ids), desc=desc, unit="ex")
    was_training = model.training
    model.eval()
    # longest first: a batch that does not fit in memory fails at once, not at the end
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    texts = [""] * len(prompt_ids)
    n_tokens = [0] * len(prompt_ids)
    start = time.perf_counter()
    total_tokens = 0
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(prompt_ids[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(prompt_ids[i])
                cols = slice(0, n) if encoder_decoder else slice(width - n, width)
                ids[r, cols] = torch.as_tensor(list(prompt_ids[i]), dtype=torch.long)
                mask[r, cols] = 1
            # encoder-decoder outputs are decoder ids that open with the decoder start token
            prompt_len = 1 if encoder_decoder else width
            stops = StoppingCriteriaList([_FirstLineStop(tokenizer, prompt_len)]) if first_line else None
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                stopping_criteria=stops,
                # a model's own generation config may ask for sampling: greedy means greedy
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = out[:, prompt_len:].cpu().tolist()
            batch_tokens = 0
            for r, i in enumerate(idx):
                n = _count_new_tokens(new[r], eos_ids, pad_id)
                n_tokens[i] = n
                batch_tokens += n
                texts[i] = tokenizer.decode(new[r][:n], skip_special_tokens=True)
            total_tokens += batch_tokens
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
    answers = [keep_first_line(t) if first_line else t.strip() for t in texts]
    return GenerationOutput(texts, answers, n_tokens, seconds)
