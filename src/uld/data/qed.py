"""QED (extractive QA over Natural Questions passages, with explanations).

Test = the official dev file (1,355); training pool = the train file (7,167 answerable examples).
Local files: ``qed/qed-train.jsonlines`` and ``qed/qed-dev.jsonlines`` (one JSON object per line:
``example_id``, ``title_text``, ``question_text``, ``paragraph_text``, ``original_nq_answers`` = a list
of annotations, each a list of spans ``{start, end, string}``). Hub: ``google-research-datasets/qed``.

``Example.answers`` lists every span of every annotation in source order, so ``answers[0]`` is the
first span of the first annotation: the single reference the authors scored against.

20 rows of the training file carry only the "no span" marker (``start == end == -1``, empty string):
they stay in the training pool (the teacher answers them; context and question are fine) with
``answers == ()``, are never drawn as few-shot examples, and ``gold_answer`` refuses them. In the
test split such a row is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from uld.data._io import read_jsonl
from uld.data.base import Example, RowContext, Split, Task, hub_dataset, register_task
from uld.data.prompts import SYSTEM_PROMPTS
from uld.data.squad import _id


@register_task
class QED(Task):
    name = "qed"
    kind = "extractive"
    hub_id = "google-research-datasets/qed"
    system_prompt = SYSTEM_PROMPTS["extractive"]
    FILES = {"train": "qed-train.jsonlines", "test": "qed-dev.jsonlines"}

    def local_files(self, split: Split, root: Path) -> list[Path]:
        return [root / self.FILES[split]]

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        yield from read_jsonl(files[0], label_field="example_id")

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        ds = hub_dataset(self.hub_id, split="train" if split == "train" else "validation")
        for i, row in enumerate(ds):
            row = dict(row)
            # The Hub copy names the question `question`; the original files `question_text`.
            if "question_text" not in row and "question" in row:
                row["question_text"] = row["question"]
            yield f"{i} (example_id={row.get('example_id')})", row

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        annotations = ctx.get(record, "original_nq_answers")
        if not isinstance(annotations, list) or not annotations:
            raise ctx.error("original_nq_answers", "expected a non-empty list of annotations")
        spans = []
        for i, ann in enumerate(annotations):
            ann = [ann] if isinstance(ann, dict) else ann  # tolerate a flat list of spans
            if not isinstance(ann, list) or not ann:
                raise ctx.error(f"original_nq_answers[{i}]", "expected a non-empty list of spans")
            for j, span in enumerate(ann):
                if not isinstance(span, dict) or "string" not in span:
                    raise ctx.error(f"original_nq_answers[{i}][{j}].string", "missing field")
                if span.get("start") == -1 and span.get("end") == -1 and span["string"] == "":
                    continue  # the source's marker for "no span annotated"
                spans.append(span["string"])
        if not spans and ctx.split == "train":
            answers: tuple[str, ...] = ()
        elif not spans:
            raise ctx.error("original_nq_answers", "no annotated answer span (start = end = -1)")
        else:
            answers = ctx.answers(spans, "original_nq_answers")
        title = record.get("title_text", "")
        return Example(
            id=_id(ctx, record, "example_id"),
            context=ctx.text(record, "paragraph_text"),
            question=ctx.text(record, "question_text"),
            answers=answers,
            title=title if isinstance(title, str) else "",
        )

    def references(self, ex: Example, protocol: str = "authors") -> list[str]:
        super().references(ex, protocol)
        # The authors' scores are reproduced with the first span of the first annotation only.
        return [ex.answers[0]] if protocol == "authors" else list(ex.answers)
