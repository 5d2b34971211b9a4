"""The package's import layering, as docs/architecture.md states it: no module imports from a layer
above its own, at the top of the file or inside a function, so the documented rooms stay true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "uld"


def _layers() -> dict[str, int]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    out = {}
    for line in block.strip().splitlines():
        m = re.match(r"layer (\d+)\s+(.*)", line.strip())
        assert m, line
        for name in m.group(2).split():
            out[name] = int(m.group(1))
    return out


def _room(module: str) -> str:
    """``uld.training.loop`` -> ``training``; ``uld.cli`` -> ``cli``."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("uld.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "uld":
                found += [(node.lineno, f"uld.{a.name}") for a in node.names]
            elif node.module.startswith("uld."):
                found.append((node.lineno, node.module))
    return found


def test_every_room_has_a_layer():
    layers = _layers()
    rooms = {p.stem if p.parent == SRC else p.relative_to(SRC).parts[0] for p in SRC.rglob("*.py")}
    rooms -= {"__init__", "__main__"}
    assert rooms == set(layers), f"not in docs/architecture.md: {sorted(rooms - set(layers))}; gone: {sorted(set(layers) - rooms)}"


def test_no_import_goes_up_a_layer():
    layers = _layers()
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        here = path.stem if path.parent == SRC else path.relative_to(SRC).parts[0]
        if here in ("__init__", "__main__"):
            continue
        for line, target in _imports(path):
            there = _room(target)
            if there in layers and there != here and layers[there] > layers[here]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({here}, layer {layers[here]}) imports {target} "
                             f"(layer {layers[there]})")
    assert not wrong, "\n".join(wrong)


def test_reporting_is_used_only_from_above():
    """Reports on runs (a grid's study report, a table) are written by the floors above reporting (tables,
    cli): the pipeline beside it writes runs only, so running a grid never reaches the plotting stack."""
    layers = _layers()
    users = []
    for path in sorted(SRC.rglob("*.py")):
        here = path.stem if path.parent == SRC else path.relative_to(SRC).parts[0]
        if here in ("__init__", "__main__", "reporting"):
            continue
        users += [f"{path.relative_to(REPO)}:{line} ({here}, layer {layers[here]}) imports {target}"
                  for line, target in _imports(path) if _room(target) == "reporting" and layers[here] <= layers["reporting"]]
    assert not users, "\n".join(users)


def test_losses_import_torch_only():
    allowed = {"torch", "math", "typing", "dataclasses", "__future__", "collections", "functools", "ot"}
    for path in (SRC / "losses").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if node.__class__ is ast.ImportFrom and node.level:
                        continue
                    root = name.split(".")[0]
                    assert root in allowed or name.startswith("uld.losses"), f"{path.name} imports {name}"
