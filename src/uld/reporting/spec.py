"""What a table is: its declaration (:class:`TableSpec`), the grid it needs and where each run lives.

A table is declared by the ``paper_tables/table_<name>.py`` script that builds it (its ``TABLE``): the
experiment YAMLs of its grid, the metrics it shows and how it lays them out. :func:`plan_table` expands
the grid (:func:`uld.config.expand_grid`) into :class:`GridPoint` s, each with the run folder its run id
names, so every number of a table leads to the run that produced it. A spec's ``collect`` turns a plan
into a :class:`uld.reporting.render.RenderedTable`: :class:`uld.reporting.compare.ComparisonTable` (the
authors' numbers beside ours) and :class:`uld.reporting.seeds.SeedTable` (seed statistics and paired
intervals) are the two kinds.
"""

from __future__ import annotations

import os
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from uld.config import ExperimentConfig, expand_grid, load_config
from uld.errors import ConfigError
from uld.io import repo_root
from uld.results import describe_config
from uld.store import RunFolder, find_run

__all__ = ["PRESETS", "EXPERIMENTS_DIR", "PAPER_TABLES_DIR", "TableSpec", "GridPoint", "TablePlan", "plan_table",
           "load_spec", "table_names"]

PRESETS = ("paper", "small")
EXPERIMENTS_DIR = repo_root() / "experiments"
PAPER_TABLES_DIR = repo_root() / "paper_tables"


@dataclass(frozen=True)
class TableSpec:
    """The shape every table shares; the two kinds add their layout.

    ``grid``: globs under ``experiments/`` that declare the table's runs, ``{preset}`` standing for the
    preset (``main/{preset}_*.yaml``); a table with one grid for every preset names it without the
    placeholder. ``stem``: the file name of the outputs (``table_<name>[_<preset>]`` unless fixed).
    """

    name: str
    title: str
    grid: tuple[str, ...]
    metrics: tuple[str, ...]
    caption: str = ""

    @property
    def preset_independent(self) -> bool:
        return not any("{preset}" in g for g in self.grid)

    def files(self, preset: str = "paper", experiments_dir: str | os.PathLike | None = None) -> list[Path]:
        """The YAMLs declaring the table's grid for ``preset`` (sorted within each glob)."""
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS}, got {preset!r}")
        root = Path(experiments_dir or EXPERIMENTS_DIR)
        files: list[Path] = []
        for pattern in self.grid:
            found = sorted(root.glob(pattern.format(preset=preset)))
            if not found:
                raise FileNotFoundError(f"no {pattern.format(preset=preset)} under {root}: table {self.name!r} has no {preset} grid")
            files += [f for f in found if f not in files]
        return files

    def stem(self, preset: str) -> str:
        return f"table_{self.name}" + ("" if preset == "paper" or self.preset_independent else f"_{preset}")

    def collect(self, plan: "TablePlan", **kwargs: Any):  # pragma: no cover - each kind implements it
        raise NotImplementedError


@dataclass
class GridPoint:
    """One run a table needs: its config, the YAML declaring it, its folder and what it measures."""

    cfg: ExperimentConfig
    source: Path
    run: RunFolder
    info: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.run.is_complete


@dataclass
class TablePlan:
    spec: TableSpec
    preset: str
    store_root: Path
    points: list[GridPoint]

    def missing(self) -> list[GridPoint]:
        return [p for p in self.points if not p.complete]

    def summary(self) -> str:
        done = sum(p.complete for p in self.points)
        return (f"table {self.spec.name} ({self.preset}): {len(self.points)} grid points, {done} with results, "
                f"{len(self.points) - done} missing (store {self.store_root})")


def plan_table(spec: TableSpec | str, *, preset: str = "paper", store_root: str | os.PathLike = "results",
               experiments_dir: str | os.PathLike | None = None, overrides: Optional[list[str]] = None) -> TablePlan:
    """Expand the table's YAMLs into grid points and locate each point's run folder in the store.

    Points declared by several YAMLs with the same config share one run id and are listed once.
    ``overrides`` (dotted ``key=value``) apply to every YAML, as on the command line.
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    store_root = Path(store_root)
    points: list[GridPoint] = []
    seen: set[str] = set()
    for path in spec.files(preset, experiments_dir):
        for point in expand_grid(load_config(path, overrides)):
            point.output_dir = str(store_root)
            run = find_run(point, store_root)
            if run.id in seen:
                continue
            seen.add(run.id)
            points.append(GridPoint(cfg=point, source=path, run=run, info=describe_config(point)))
    return TablePlan(spec=spec, preset=preset, store_root=store_root, points=points)


def table_names(folder: str | os.PathLike | None = None) -> list[str]:
    """The tables the ``paper_tables/`` scripts declare."""
    return sorted(p.stem.removeprefix("table_") for p in Path(folder or PAPER_TABLES_DIR).glob("table_*.py"))


def load_spec(name: str, folder: str | os.PathLike | None = None) -> TableSpec:
    """The ``TABLE`` a ``paper_tables/table_<name>.py`` script declares (the script is read, not run)."""
    key = name.removeprefix("table_")
    path = Path(folder or PAPER_TABLES_DIR) / f"table_{key}.py"
    if not path.is_file():
        raise ConfigError(f"unknown table {name!r}; known tables: {', '.join(table_names(folder))}")
    spec: Optional[TableSpec] = runpy.run_path(str(path), run_name="uld_table_spec").get("TABLE")
    if not isinstance(spec, TableSpec):
        raise ConfigError(f"{path} declares no TABLE (a uld.reporting.TableSpec)")
    return spec
