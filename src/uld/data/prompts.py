"""Teacher system prompts, named chat templates and chat rendering.

Student prompts are plain text built by each task (``Task.student_prompt``). Teacher prompts are chat
conversations (``Task.teacher_messages``) rendered here into one generation prompt string, either with
the tokenizer's own chat template or with a named template from :data:`CHAT_TEMPLATES` (the registry's
``chat_template`` field), which also serves tokenizer folders that ship without a template.

The rendered text contains the special tokens as text (``<s>``, ``</s>``), exactly like
``tokenizer.apply_chat_template(..., tokenize=False)``; tokenize it with ``add_special_tokens=False``
(or call :func:`chat_prompt_ids`) so BOS is not added twice.
"""

from __future__ import annotations

from typing import Callable

__all__ = [
    "SYSTEM_PROMPTS",
    "CHAT_TEMPLATES",
    "ChatTemplateError",
    "merge_system",
    "render_chat",
    "chat_prompt_ids",
]

# One per task kind (the paper's instructions: span of 0-5 words; 0-15 words; a short conclusion;
# one sentence with the speakers' names). The wording is ours.
SYSTEM_PROMPTS: dict[str, str] = {
    "extractive": (
        "You answer questions about a passage. Reply with a short span copied from the passage, "
        "0 to 5 words long, and nothing else: no full sentence, no explanation."
    ),
    "generative": (
        "You answer questions about a story. Reply with a short answer of 0 to 15 words, "
        "without any explanation."
    ),
    "medical": (
        "You are a medical researcher. Read the abstract and answer the question with a short conclusion "
        "of one or two sentences, as the authors of the paper would state it."
    ),
    "dialogue": (
        "You summarize dialogues. Write a single sentence that says what happens in the dialogue, "
        "calling the speakers by their names."
    ),
}


from uld.errors import ChatTemplateError  # noqa: E402


Messages = list[dict]


def merge_system(messages: Messages) -> Messages:
    """For models without a system role: prepend the system prompt to the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    if not rest or rest[0]["role"] != "user":
        raise ChatTemplateError("a system prompt must be followed by a user turn")
    rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
    return rest


def _split_turns(messages: Messages) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system or None, [(user, assistant or None), ...]); the last pair has no assistant turn."""
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    if not messages or len(messages) % 2 != 1:
        raise ChatTemplateError("expected user/assistant turns that alternate and end with a user turn")
    pairs: list[tuple[str, str | None]] = []
    for i in range(0, len(messages), 2):
        user = messages[i]
        if user["role"] != "user":
            raise ChatTemplateError(f"turn {i}: expected role 'user', got {user['role']!r}")
        answer = None
        if i + 1 < len(messages):
            if messages[i + 1]["role"] != "assistant":
                raise ChatTemplateError(f"turn {i + 1}: expected role 'assistant', got {messages[i + 1]['role']!r}")
            answer = messages[i + 1]["content"]
        pairs.append((user["content"], answer))
    return system, pairs


def _llama2(messages: Messages, bos: str, eos: str) -> str:
    """Meta's Llama-2 chat format: every exchange is ``<s>[INST] user [/INST] answer </s>``; the system
    prompt sits in ``<<SYS>>`` markers inside the first user turn; contents are stripped."""
    system, pairs = _split_turns(messages)
    out = []
    for i, (user, answer) in enumerate(pairs):
        user = user.strip()
        if i == 0 and system is not None:
            user = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{user}"
        out.append(f"{bos}[INST] {user} [/INST]")
        if answer is not None:
            out.append(f" {answer.strip()} {eos}")
    return "".join(out)


def _mistral(messages: Messages, bos: str, eos: str) -> str:
    """Mistral-7B-Instruct (v0.1/v0.2) as its Hugging Face template renders it: one BOS, then
    ``[INST] user [/INST]answer</s>`` per exchange; there is no system role."""
    system, pairs = _split_turns(messages)
    if system is not None:
        raise ChatTemplateError("the mistral template has no system role: use system_role=False")
    out = [bos]
    for user, answer in pairs:
        out.append(f"[INST] {user} [/INST]")
        if answer is not None:
            out.append(f"{answer}{eos}")
    return "".join(out)


def _plain(messages: Messages, bos: str, eos: str) -> str:
    """For base models: the system prompt as a first paragraph, then each user turn followed by its
    answer on the same line (user turns end with the answer cue, e.g. ``Answer:``), blank lines between
    exchanges, ending on the last user turn so the model continues it. No special tokens."""
    system, pairs = _split_turns(messages)
    blocks = [system] if system else []
    for user, answer in pairs:
        blocks.append(user if answer is None else f"{user} {answer}")
    return "\n\n".join(blocks)


CHAT_TEMPLATES: dict[str, Callable[[Messages, str, str], str]] = {
    "llama-2": _llama2,
    "mistral": _mistral,
    "plain": _plain,
}


def render_chat(tokenizer, messages: Messages, *, system_role: bool = True, template: str | None = None) -> str:
    """The generation prompt text for ``messages`` (ending where the assistant's answer starts).

    ``system_role=False`` folds the system prompt into the first user turn (Mistral). ``template``
    (a name in :data:`CHAT_TEMPLATES`) overrides the tokenizer's own chat template. Special tokens are
    text in the result: tokenize with ``add_special_tokens=False``.
    """
    if not system_role:
        messages = merge_system(messages)
    if template is not None:
        if template not in CHAT_TEMPLATES:
            raise ChatTemplateError(f"unknown chat template {template!r} (one of {sorted(CHAT_TEMPLATES)})")
        bos = getattr(tokenizer, "bos_token", None) or ""
        eos = getattr(tokenizer, "eos_token", None) or ""
        return CHAT_TEMPLATES[template](messages, bos, eos)
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template. For a base model set `chat_template: plain` in its "
            f"entry of experiments/models.yaml (or another name from {sorted(CHAT_TEMPLATES)})."
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompt_ids(tokenizer, messages: Messages, *, system_role: bool = True, template: str | None = None) -> list[int]:
    """Token ids of :func:`render_chat`'s text (special tokens in the text are not added again)."""
    text = render_chat(tokenizer, messages, system_role=system_role, template=template)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
