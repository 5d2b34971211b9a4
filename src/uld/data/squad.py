"""SQuAD v1.1 (extractive QA). Test = the official dev set (10,570); training pool = train (87,599).

Local files: ``squad/train-v1.1.json`` and ``squad/dev-v1.1.json`` (official JSON: articles ->
paragraphs -> qas). Hub: ``rajpurkar/squad`` (``train`` / ``validation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from uld.data._io import read_json
from uld.data.base import DataError, Example, RowContext, Split, Task, hub_dataset, register_task
from uld.data.prompts import SYSTEM_PROMPTS


@register_task
class SQuAD(Task):
    name = "squad"
    kind = "extractive"
    hub_id = "rajpurkar/squad"
    system_prompt = SYSTEM_PROMPTS["extractive"]
    FILES = {"train": "train-v1.1.json", "test": "dev-v1.1.json"}

    def local_files(self, split: Split, root: Path) -> list[Path]:
        return [root / self.FILES[split]]

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        (path,) = files
        doc = read_json(path, task=self.name, split=split)

        def bad(where: str, msg: str) -> DataError:
            return DataError(f"{path.name}: {msg}", task=self.name, split=split, row=where)

        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise bad("", "expected a JSON object with a 'data' list of articles")
        for i, article in enumerate(doc["data"]):
            if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
                raise bad(f"data[{i}]", "expected an article with a 'paragraphs' list")
            for j, para in enumerate(article["paragraphs"]):
                if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                    raise bad(f"data[{i}].paragraphs[{j}]", "expected a paragraph with a 'qas' list")
                for k, qa in enumerate(para["qas"]):
                    label = f"data[{i}].paragraphs[{j}].qas[{k}]"
                    if isinstance(qa, dict) and "id" in qa:
                        label = f"{label} (id={qa['id']})"
                    record = dict(qa) if isinstance(qa, dict) else qa
                    if isinstance(record, dict):
                        record["title"] = article.get("title", "")
                        record["context"] = para.get("context")
                    yield label, record

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        ds = hub_dataset(self.hub_id, split="train" if split == "train" else "validation")
        for i, row in enumerate(ds):
            answers = [{"text": t} for t in row["answers"]["text"]]
            yield f"{i} (id={row['id']})", {**row, "answers": answers}

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        answers = ctx.get(record, "answers")
        if not isinstance(answers, list):
            raise ctx.error("answers", f"expected a list, got {type(answers).__name__}")
        texts = []
        for i, a in enumerate(answers):
            if not isinstance(a, dict) or "text" not in a:
                raise ctx.error(f"answers[{i}].text", "missing field")
            texts.append(a["text"])
        title = record.get("title", "")
        return Example(
            id=_id(ctx, record),
            context=ctx.text(record, "context"),
            question=ctx.text(record, "question"),
            answers=ctx.answers(texts, "answers"),
            title=title if isinstance(title, str) else "",
        )

    def references(self, ex: Example, protocol: str = "authors") -> list[str]:
        super().references(ex, protocol)
        return list(ex.answers)  # the authors scored against all crowd answers (max over references)


def _id(ctx: RowContext, record: dict, field: str = "id") -> str:
    """A row id (string or integer in the source) as a non-empty string."""
    value = ctx.get(record, field)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
        raise ctx.error(field, f"expected a non-empty string or integer, got {value!r}")
    return str(value)
