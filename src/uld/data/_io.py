"""Readers for the original file formats (JSON, JSON lines) with errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from uld.errors import DataError


def read_json(path: Path, *, task: str, split: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})", task=task, split=split) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})", task=task, split=split) from None


def read_jsonl(path: Path, *, label_field: str | None = None) -> Iterator[tuple[str, Any]]:
    """(row label, record) per non-blank line. A line that is not JSON comes back as an
    :class:`_InvalidLine` record so the row is counted (and reported) rather than aborting the file."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label = f"{path.name}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield label, InvalidLine(str(exc))
            continue
        if label_field and isinstance(record, dict) and label_field in record:
            label = f"{label} ({label_field}={record[label_field]})"
        yield label, record


class InvalidLine:
    """Placeholder record for a line that is not valid JSON; ``parse_row`` turns it into a DataError."""

    def __init__(self, reason: str):
        self.reason = reason
