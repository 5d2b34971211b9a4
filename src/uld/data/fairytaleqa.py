"""FairytaleQA (generative QA over story sections written for children).

Test = the test split (1,007); training pool = train (8,548) followed by validation (1,025).
Local files: ``fairytaleqa/{train,validation,test}.jsonl``, one row per question with ``story_name``,
``question_id``, ``story_section``, ``question`` and ``answer1``..``answer6`` (``answer2``.. may be
empty). Hub: ``GEM/FairytaleQA`` (one row per question: ``content``, ``question``, ``answer``).

Ids are ``<story_name>/<question_id>``. The official train file reuses a question id within a story
for different questions in 10 places; a later question with a reused id gets ``~2`` (``~3``...)
appended, while a repeated identical question is reported as a duplicate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from uld.data._io import read_jsonl
from uld.data.base import Example, RowContext, Split, Task, hub_dataset, register_task
from uld.data.prompts import SYSTEM_PROMPTS
from uld.data.squad import _id

ANSWER_FIELDS = tuple(f"answer{i}" for i in range(1, 7))


@register_task
class FairytaleQA(Task):
    name = "fairytaleqa"
    kind = "generative"
    hub_id = "GEM/FairytaleQA"
    system_prompt = SYSTEM_PROMPTS["generative"]
    FILES = {"train": ("train.jsonl", "validation.jsonl"), "test": ("test.jsonl",)}

    def local_files(self, split: Split, root: Path) -> list[Path]:
        return [root / name for name in self.FILES[split]]

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        for path in files:
            yield from _mark_reused_ids(read_jsonl(path, label_field="question_id"))

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        for hub_split in ("train", "validation") if split == "train" else ("test",):
            ds = hub_dataset(self.hub_id, split=hub_split)

            def rows(ds=ds, hub_split=hub_split):
                for i, row in enumerate(ds):
                    record = {
                        "story_name": row.get("story_name"),
                        "question_id": row.get("question_id", row.get("gem_id")),
                        "story_section": row.get("content"),
                        "question": row.get("question"),
                        "answer1": row.get("answer", row.get("target")),
                    }
                    yield f"{hub_split}[{i}]", record

            yield from _mark_reused_ids(rows())

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        story = ctx.text(record, "story_name")
        qid = _id(ctx, record, "question_id")
        answers = [ctx.text(record, "answer1")]
        for field in ANSWER_FIELDS[1:]:
            value = record.get(field, "")
            if value is None:
                continue
            if not isinstance(value, str):
                raise ctx.error(field, f"expected a string, got {type(value).__name__}")
            if value.strip():
                answers.append(value.strip())
        occurrence = record.get("_occurrence", 1)
        return Example(
            id=f"{story}/{qid}" + (f"~{occurrence}" if occurrence > 1 else ""),
            context=ctx.text(record, "story_section"),
            question=ctx.text(record, "question"),
            answers=tuple(answers),
            title=story.replace("-", " "),
        )

    def references(self, ex: Example, protocol: str = "authors") -> list[str]:
        super().references(ex, protocol)
        return [ex.answers[0]] if protocol == "authors" else list(ex.answers)


def _mark_reused_ids(rows: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Number the distinct questions that share one (story, question id) within a file."""
    questions: dict[tuple, list] = {}
    for label, record in rows:
        if isinstance(record, dict):
            key = (record.get("story_name"), str(record.get("question_id")))
            seen = questions.setdefault(key, [])
            q = record.get("question")
            if q not in seen:
                seen.append(q)
            if seen.index(q) > 0:
                record = {**record, "_occurrence": seen.index(q) + 1}
        yield label, record
