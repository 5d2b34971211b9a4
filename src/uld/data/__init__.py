"""The five tasks of the ULD paper: loading (Hub or original local files), splits, prompts, tokens.

Public API (see docs/architecture.md, "Data")::

    get_task(name) -> Task          # squad, qed, fairytaleqa, pubmedqa, dialogsum
    Task.load(split, data_dir=None) # "train" = whole training pool, "test" = the evaluated split
    training_pool(cfg.data) -> (train, val)   # .info: what was done
    test_split(cfg.data)
    sample_articles(cfg.data)       # which articles the training / validation / test items come from
    render_chat(tokenizer, messages, system_role=True, template=None)
    encode_pair(tokenizer, prompt, answer, ...), collate(encoded, pad_id, padding_side)

Adding a task: write a module with a ``Task`` subclass decorated with ``@register_task`` and import it
below (one line).
"""

from uld.data.base import (
    DATA_DIR_ENV,
    TASKS,
    DataError,
    Example,
    PoolSplit,
    Task,
    articles,
    get_task,
    register_task,
    resolve_data_dir,
    sample_articles,
    select_shots,
    shuffled_order,
    split_pool,
    test_split,
    training_pool,
)
from uld.data.prompts import CHAT_TEMPLATES, SYSTEM_PROMPTS, ChatTemplateError, chat_prompt_ids, render_chat
from uld.data.tokenize import Encoded, PromptTooLong, collate, encode_pair, encode_prompt
from uld.data.teacher_prompts import (
    answer_separator,
    encode_teacher_pair,
    encode_teacher_prompt,
    render_teacher_prompt,
    select_teacher_shots,
    teacher_prompt,
)

# Task modules register themselves on import (one line per task).
from uld.data import squad, qed, fairytaleqa, pubmedqa, dialogsum  # noqa: E402,F401  isort: skip

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "DataError",
    "Example",
    "PoolSplit",
    "Task",
    "get_task",
    "register_task",
    "resolve_data_dir",
    "select_shots",
    "split_pool",
    "shuffled_order",
    "articles",
    "sample_articles",
    "training_pool",
    "test_split",
    "CHAT_TEMPLATES",
    "SYSTEM_PROMPTS",
    "ChatTemplateError",
    "render_chat",
    "chat_prompt_ids",
    "Encoded",
    "PromptTooLong",
    "encode_pair",
    "encode_prompt",
    "collate",
    "select_teacher_shots",
    "render_teacher_prompt",
    "teacher_prompt",
    "encode_teacher_prompt",
    "encode_teacher_pair",
    "answer_separator",
]
