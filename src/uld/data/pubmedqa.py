"""PubMedQA (biomedical QA with long answers), PQA-L.

Test = the 500 official test ids of PQA-L, answer = the abstract's conclusion (``LONG_ANSWER``).
Training pool: on the Hub, PQA-A (``pqa_artificial``, 211k generated items, as in the paper); from
local files, where PQA-A is not at hand, the 500 PQA-L items outside the official test set.
Local files: ``pubmedqa/ori_pqal.json`` (pubid -> ``QUESTION``, ``CONTEXTS``, ``LONG_ANSWER``, ...)
and ``pubmedqa/test_ground_truth.json`` (test pubid -> yes/no/maybe). Hub: ``qiaojin/PubMedQA``.

The context is the abstract without its conclusion: the ``CONTEXTS`` sections joined by spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from uld.data._io import read_json
from uld.data._pubmedqa_test_ids import TEST_IDS
from uld.data.base import DataError, Example, RowContext, Split, Task, hub_dataset, register_task
from uld.data.prompts import SYSTEM_PROMPTS


@register_task
class PubMedQA(Task):
    name = "pubmedqa"
    kind = "medical"
    hub_id = "qiaojin/PubMedQA"
    system_prompt = SYSTEM_PROMPTS["medical"]
    context_label = "Medical paper"

    def local_files(self, split: Split, root: Path) -> list[Path]:
        return [root / "ori_pqal.json", root / "test_ground_truth.json"]

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        items = read_json(files[0], task=self.name, split=split)
        test = read_json(files[1], task=self.name, split=split)
        for path, obj in zip(files, (items, test)):
            if not isinstance(obj, dict):
                raise DataError(f"{path.name}: expected a JSON object keyed by PubMed id", task=self.name, split=split)
        test_ids = set(test)
        missing = sorted(test_ids - set(items))
        if missing:
            raise DataError(
                f"{files[1].name}: {len(missing)} test ids are not in {files[0].name} (first: {missing[0]})",
                task=self.name,
                split=split,
            )
        for pubid, item in items.items():
            if (pubid in test_ids) == (split == "test"):
                yield f"pubid={pubid}", {"pubid": pubid, **item} if isinstance(item, dict) else item

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        config = "pqa_artificial" if split == "train" else "pqa_labeled"
        ds = hub_dataset(self.hub_id, config, split="train")
        for row in ds:
            pubid = str(row["pubid"])
            if split == "test" and pubid not in TEST_IDS:
                continue
            ctx = row.get("context") or {}
            record = {
                "pubid": pubid,
                "QUESTION": row.get("question"),
                "CONTEXTS": ctx.get("contexts") if isinstance(ctx, dict) else None,
                "LONG_ANSWER": row.get("long_answer"),
            }
            yield f"pubid={pubid}", record

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        sections = ctx.get(record, "CONTEXTS")
        if not isinstance(sections, list) or not sections:
            raise ctx.error("CONTEXTS", "expected a non-empty list of abstract sections")
        for i, s in enumerate(sections):
            if not isinstance(s, str):
                raise ctx.error(f"CONTEXTS[{i}]", f"expected a string, got {type(s).__name__}")
        context = " ".join(s.strip() for s in sections if s.strip())
        if not context:
            raise ctx.error("CONTEXTS", "empty")
        return Example(
            id=str(ctx.get(record, "pubid")),
            context=context,
            question=ctx.text(record, "QUESTION"),
            answers=(ctx.text(record, "LONG_ANSWER"),),
        )
