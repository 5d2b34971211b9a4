"""DialogSum (dialogue summarization).

Test = the test split (500 dialogues, 3 reference summaries each); training pool = train (12,460).
Local files: ``dialogsum/dialogsum.{train,test}.jsonl`` (``fname``, ``dialogue``, and ``summary`` or
``summary1``..``summary3``). Hub: ``knkarthick/dialogsum``, whose test split has one row per
(dialogue, summary) pair: rows are grouped back into one example per dialogue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from uld.data._io import read_jsonl
from uld.data.base import Example, RowContext, Split, Task, hub_dataset, register_task
from uld.data.prompts import SYSTEM_PROMPTS
from uld.data.squad import _id


@register_task
class DialogSum(Task):
    name = "dialogsum"
    kind = "dialogue"
    hub_id = "knkarthick/dialogsum"
    system_prompt = SYSTEM_PROMPTS["dialogue"]
    context_label = "Dialogue"
    answer_label = "Summary"
    has_question = False
    FILES = {"train": "dialogsum.train.jsonl", "test": "dialogsum.test.jsonl"}

    def local_files(self, split: Split, root: Path) -> list[Path]:
        return [root / self.FILES[split]]

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        yield from read_jsonl(files[0], label_field="fname")

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        ds = hub_dataset(self.hub_id, split="train" if split == "train" else "test")
        groups: dict[str, dict] = {}
        for row in ds:
            # Test ids look like "test_0_1", "test_0_2", ...: one dialogue, several summaries.
            fname = str(row["id"])
            if split == "test" and fname.count("_") == 2:
                fname = fname.rsplit("_", 1)[0]
            g = groups.setdefault(fname, {"fname": fname, "dialogue": row["dialogue"], "summaries": []})
            g["summaries"].append(row["summary"])
        for fname, g in groups.items():
            yield f"fname={fname}", g

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        fname = _id(ctx, record, "fname")
        if isinstance(record, dict) and "summaries" in record:  # grouped Hub rows
            if not isinstance(record["summaries"], list):
                raise ctx.error("summaries", "expected a list")
            answers = ctx.answers(record["summaries"], "summaries")
        elif isinstance(record, dict) and "summary" not in record and "summary1" in record:
            # test rows: summary1..summary3, each checked under its own name
            answers = tuple(ctx.text(record, k) for k in ("summary1", "summary2", "summary3") if k in record)
        else:
            answers = (ctx.text(record, "summary"),)
        return Example(
            id=fname,
            context=ctx.text(record, "dialogue"),
            question="",
            answers=answers,
        )
