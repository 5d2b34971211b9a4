"""Where figures go and how they are written (PNG for reading, PDF for papers, atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from uld.io import replace

__all__ = ["RESULTS_ENV", "FIGURES_ENV", "results_dir", "figures_dir", "save_figure"]

RESULTS_ENV = "ULD_RESULTS_DIR"
FIGURES_ENV = "ULD_FIGURES_DIR"


def results_dir() -> Path:
    """The store the notebooks read: ``$ULD_RESULTS_DIR`` or ``results``."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def figures_dir(store: str | os.PathLike | None = None) -> Path:
    """Where figures go: ``$ULD_FIGURES_DIR``, else ``<store>/figures``."""
    if os.environ.get(FIGURES_ENV):
        return Path(os.environ[FIGURES_ENV])
    return Path(store if store is not None else results_dir()) / "figures"


def save_figure(fig: Any, name: str, out_dir: str | os.PathLike | None = None,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<name>.<format>`` for each format (rendered aside, renamed into place)."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        target = out / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{ext}", dir=out)
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
            replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths
