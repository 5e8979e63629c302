"""The package's shape (docs/design.md, "Packages and the data's route"), read from the source.

Every ``import`` and ``from … import`` of a braintseg module, at module level or inside a
function, is an edge.  Checked: no import cycle, no import of another module's ``_private``
name, no package importing one of a higher layer, no module over 400 lines, no ``*_slices`` twin
module, and every source module implementing the interface of :mod:`braintseg.sources.base`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "braintseg"

#: layer of each top-level module or package; an import may only go to the same or a lower layer
LAYERS: dict[str, int] = {
    **dict.fromkeys(["config", "errors", "atomic", "log", "stop", "workers", "malloc"], 0),
    "data": 1,
    **dict.fromkeys(["sources", "store", "model"], 2),
    **dict.fromkeys(["preparation", "training", "inference", "scoring", "reporting"], 3),
    "demos": 4,
    **dict.fromkeys(["api", "cli", "info", "__main__"], 5),
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str]]:
    """``(imported module, imported name or "")`` of every braintseg import in module ``name``."""
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "braintseg":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub, "") if sub in MODULES else (node.module, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{name}: relative import (use absolute braintseg.* imports)")
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "braintseg"]
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_top_level_module_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert tops - {"__init__"} <= set(LAYERS), sorted(tops - set(LAYERS))


def test_imports_go_down_the_layers_never_up() -> None:
    wrong = []
    for name in MODULES:
        if name == "braintseg":
            continue  # the package module wires the signal handlers and the lazy API
        for target, _ in _imports(name):
            src, dst = _layer(name), _layer(target)
            if src is not None and dst is not None and dst > src:
                wrong.append(f"{name} (layer {src}) imports {target} (layer {dst})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_a_private_name_of_another() -> None:
    wrong = [f"{name} imports {target}.{attr}" for name in MODULES
             for target, attr in _imports(name)
             if attr.startswith("_") and not attr.startswith("__") and target != name]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = {name: {t for t, _ in _imports(name) if t in MODULES and t != name}
             for name in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_modules_are_small_and_no_stage_has_a_slices_twin() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}
    assert [n for n in MODULES if n.endswith("_slices")] == []


@pytest.mark.parametrize("name", importlib.import_module("braintseg.sources.registry").FORMATS)
def test_every_source_implements_the_interface(name: str) -> None:
    from braintseg.sources.base import LAYOUTS, Source
    from braintseg.sources.registry import source

    module = source(name)
    assert module.NAME == name and module.LAYOUT in LAYOUTS and module.DESCRIPTION
    for attr in [a for a in vars(Source) if not a.startswith("_")] + list(
            Source.__annotations__):
        assert hasattr(module, attr), f"sources/{name}.py lacks {attr}"
