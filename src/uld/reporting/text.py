"""How tables read: labels, number formats, LaTeX escapes, markdown grids, the fixture warning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from uld.store import store_info

__all__ = ["MISSING", "METRIC_LABELS", "SETTING_LABELS", "LABEL_HEADERS", "none", "fmt", "label", "tex", "tex_pm", "latex_grid", "panel_markdown",
           "markdown_grid", "fixture_lines"]

MISSING = "–"  # en dash: a cell with no number

METRIC_LABELS = {
    "f1": "F1",
    "em": "EM",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "bertscore_f1": "BERTScore",
    "bertscore_precision": "BERTScore P",
    "bertscore_recall": "BERTScore R",
}
SETTING_LABELS = {
    "teacher": "teacher (few-shot)",
    "student-few-shot": "student few-shot",
    "student-zero-shot": "student zero-shot",
    "lambda0": "λ=0",
    "uld": "ULD",
    "uld-ot": "ULD-OT",
    "sft-gold": "SFT (gold)",
    "kd-kl": "KD-KL",
}
LABEL_HEADERS = {
    "task": "Task",
    "teacher": "Teacher",
    "student": "Student",
    "setting": "Setting",
    "train_fraction": "Fraction",
    "ot_cost": "Cost",
}
_LATEX_ESCAPES = {
    "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}", "$": r"\$", "λ": r"$\lambda$",
    "Δ": r"$\Delta$", "–": "--", "−": "-", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"\S", "¶": r"\P",
}


def none(v: Any) -> Any:
    """NaN / None / "" -> None (pandas turns missing strings into NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return None
    return v


def fmt(v: Any, *, signed: bool = False) -> str:
    v = none(v)
    if v is None:
        return MISSING
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def label(col: str, v: Any) -> str:
    v = none(v)
    if v is None:
        return MISSING
    if col == "train_fraction":
        return f"{100 * float(v):.0f}%"
    return str(v)


def tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def tex_pm(text: str) -> str:
    return tex(text).replace("±", r"$\pm$").replace("→", r"$\rightarrow$").replace("×", r"$\times$")


def markdown_grid(header: Sequence[str], body: Sequence[Sequence[str]], n_left: int) -> list[str]:
    """A markdown table: the first ``n_left`` columns left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] * n_left + ["--:"] * (len(header) - n_left)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def latex_grid(header: Sequence[str], body: Sequence[Sequence[str]], align: str = "r") -> list[str]:
    """A booktabs tabular of a panel (first column left, the others ``align``), opened by a small skip."""
    return (["", r"\smallskip", rf"\begin{{tabular}}{{l{align * (len(header) - 1)}}}", r"\toprule",
             " & ".join(tex_pm(h) for h in header) + r" \\", r"\midrule"]
            + [" & ".join(tex_pm(c) for c in row) + r" \\" for row in body] + [r"\bottomrule", r"\end{tabular}"])


def panel_markdown(heading: str, header: Sequence[str], body: Sequence[Sequence[str]], note: str) -> list[str]:
    """A panel in markdown: its heading, the grid (first column left-aligned) and a note under it."""
    return ["", f"## {heading}", ""] + markdown_grid(header, body, n_left=1) + ["", note]


def fixture_lines(store_root: Optional[Path]) -> list[str]:
    """The warning every table of a fixture store opens with (fake numbers for tests)."""
    info = store_info(store_root) if store_root is not None else {}
    if info.get("fixture"):
        return [f"**FIXTURE DATA**: {info.get('note', 'fake numbers for tests; not results')}."]
    return []
