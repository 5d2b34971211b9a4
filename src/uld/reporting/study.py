"""The report ``uld run`` writes for a grid: one markdown table row per run and a bar plot of its scores."""

from __future__ import annotations

from pathlib import Path

from uld.config import ExperimentConfig
from uld.io import atomic_write_text
from uld.store import RunFolder

__all__ = ["write_study_report"]


def write_study_report(cfg: ExperimentConfig, runs: list[RunFolder]) -> list[Path]:
    """Markdown table + bar plot of the study's runs (what varies across the grid vs the scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from uld.reporting.figures import save_figure

    varying = list(cfg.grid)
    rows = []
    for run in runs:
        if not run.is_complete:
            continue
        point = run.read_json("scores.json")
        pcfg = run.config()
        row = {"run": run.id}
        for key in varying:
            node = pcfg
            for part in key.split("."):
                node = getattr(node, part)
            row[key.split(".")[-1]] = node
        row.update({k: round(v, 2) for k, v in point.get("metrics", {}).items() if isinstance(v, (int, float))})
        rows.append(row)
    if not rows:
        return []
    df = pd.DataFrame(rows)
    root = Path(cfg.output_dir)
    table = root / "tables" / f"{cfg.name}.md"
    header = f"# {cfg.description or cfg.name}\n\nOne row per run (folders under {root / 'runs'}).\n\n"
    atomic_write_text(table, header + df.to_markdown(index=False) + "\n")

    label_cols = [k.split(".")[-1] for k in varying] or ["run"]
    df["setting"] = df[label_cols].astype(str).agg(" / ".join, axis=1)
    metric_cols = [c for c in ("f1", "em", "rougeL", "bertscore_f1") if c in df.columns]
    long = df.melt(id_vars=["setting"], value_vars=metric_cols, var_name="metric", value_name="score")
    sns.set_theme(style="whitegrid")
    ax = sns.barplot(data=long, x="metric", y="score", hue="setting")
    ax.set_title(cfg.name)
    try:
        png = save_figure(ax.figure, cfg.name, root / "figures", formats=("png",))[0]
    finally:
        plt.close(ax.figure)
    return [table, png]
