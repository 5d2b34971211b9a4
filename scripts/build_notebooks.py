"""Build the analysis notebooks: each ``analysis/<name>.py`` (jupytext percent format, the one source)
becomes ``analysis/<name>.ipynb``, executed against the results store so the committed notebook shows
its tables and figures.

    .venv/bin/python scripts/build_notebooks.py                 # execute every notebook, write .ipynb with outputs
    .venv/bin/python scripts/build_notebooks.py micro headroom  # only these
    .venv/bin/python scripts/build_notebooks.py --check         # exit 1 if a committed .ipynb does not match its source

Notebooks only read the store (``$ULD_RESULTS_DIR``, default ``results``) and save figures to
``$ULD_FIGURES_DIR`` (default ``<store>/figures``). The data preparation lives in ``uld.reporting``
(tested there); a notebook is the plotting and the reading of the plot. Edit the ``.py`` file, never
the ``.ipynb``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"


def sources() -> dict[str, Path]:
    return {p.stem: p for p in sorted(ANALYSIS.glob("*.py")) if not p.name.startswith("_")}


def from_source(path: Path) -> nbformat.NotebookNode:
    """The notebook of a percent file, without outputs, with stable cell ids."""
    nb = jupytext.read(path)
    nb.metadata.pop("jupytext", None)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{path.stem}-{i}"
        cell.metadata = {}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 900) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    # "python3" runs the kernel on this interpreter (jupyter_client maps argv "python" to sys.executable)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def check(names: list[str]) -> list[str]:
    """Problems with the committed notebooks: missing, out of step with the source, or never executed."""
    problems = []
    for name in names:
        ipynb = ANALYSIS / f"{name}.ipynb"
        if not ipynb.exists():
            problems.append(f"{ipynb}: missing")
            continue
        committed = nbformat.read(ipynb, as_version=4)
        if _cells(committed) != _cells(from_source(ANALYSIS / f"{name}.py")):
            problems.append(f"{ipynb}: cells differ from {name}.py")
        code = [c for c in committed.cells if c.cell_type == "code"]
        if not code or any(c.execution_count is None for c in code):
            problems.append(f"{ipynb}: not executed (commit it with its outputs)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all of analysis/*.py)")
    parser.add_argument("--check", action="store_true", help="verify the committed notebooks instead of building")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    known = sources()
    names = args.names or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"no analysis/<name>.py for {', '.join(unknown)} (have: {', '.join(known)})")
    if args.check:
        problems = check(names)
        print("\n".join(problems) if problems else f"{len(names)} notebooks match their sources")
        return 1 if problems else 0
    for name in names:
        nb = from_source(known[name])
        if not args.no_execute:
            print(f"executing {name} against {os.environ.get('ULD_RESULTS_DIR', 'results')} ...", flush=True)
            execute(nb)
        nbformat.validate(nb)
        target = ANALYSIS / f"{name}.ipynb"
        tmp = target.with_suffix(".ipynb.tmp")
        tmp.write_text(nbformat.writes(nb) + "\n")
        os.replace(tmp, target)
        print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
