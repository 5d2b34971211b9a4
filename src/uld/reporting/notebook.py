"""What every analysis notebook opens with: where the store and the figures are, and how a figure is saved.

The notebooks (``analysis/*.py``, jupytext percent files) only read the store; a figure drawn from the
committed fixture store (fake numbers, used by the tests) is stamped as such, so it can never pass for
a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uld.reporting.figures import figures_dir, results_dir, save_figure
from uld.store import store_info

__all__ = ["Notebook", "setup", "SUB_STORES", "panel_columns"]

SUB_STORES = "micro_*"  # a study's grid run on other hardware keeps a store of its own inside the main one


@dataclass
class Notebook:
    store: Path  # the results store read ($ULD_RESULTS_DIR, default results/)
    other_stores: list[Path]  # stores beside it holding a study's grid run on other hardware (<store>/micro_*/)
    figures: Path  # where figures go ($ULD_FIGURES_DIR, default <store>/figures)
    fixture: bool  # the store is the test fixture: fake numbers

    def finish(self, fig: Any, name: str) -> list[Path]:
        """Stamp fixture figures, save PNG + PDF under ``figures``, close the figure; the saved paths."""
        import matplotlib.pyplot as plt

        if self.fixture:
            fig.suptitle("FIXTURE DATA: fake numbers", color="crimson", y=1.02)
        paths = save_figure(fig, name, self.figures)
        for path in paths:
            print("saved", path)
        plt.close(fig)
        _show_png(paths[0])
        return paths


def panel_columns(n_panels: int, most: int = 3) -> int:
    """Columns for a wrapped grid of ``n_panels``: as few rows as ``most`` columns allow, then as few
    columns as fill them, so 1-4 and 6 panels leave no empty slot (3 columns for 2 panels would)."""
    if n_panels <= 0:
        return 1
    rows = -(-n_panels // most)
    return -(-n_panels // rows)


def _show_png(path: Path) -> None:
    """Show the saved PNG in a running notebook (so the committed notebook carries the figure)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # plain Python: the file is the output
        return
    if get_ipython() is not None and path.suffix == ".png":
        display(Image(filename=str(path)))


def setup() -> Notebook:
    """Headless plotting, the house seaborn theme, and the store to read (printed, so a notebook says what it read)."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid")
    store = results_dir()
    others = sorted(d for d in store.glob(SUB_STORES) if (d / "runs").is_dir())
    nb = Notebook(store=store, other_stores=others, figures=figures_dir(store),
                  fixture=bool(store_info(store).get("fixture", False)))
    print(f"store: {nb.store}  figures: {nb.figures}  fixture: {nb.fixture}")
    return nb
