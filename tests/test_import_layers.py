"""The package's import graph has no cycles and its lowest layers import nothing above them.

Imports are read from the source with ``ast`` (module-level and inside functions; ``if TYPE_CHECKING:`` blocks
are type hints only and do not count), so a cycle through a lazy import inside a function is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import baichuan13b

PACKAGE = "baichuan13b"
ROOT = Path(baichuan13b.__file__).resolve().parent

# The model class's Hugging Face-style entry points delegate upward at call time, by design: from_pretrained to
# the loader, save_pretrained to the saver, quantize to the quantization package (which builds models itself),
# chat and build_chat_input to chat.py (which answers through the paged serving engine). These imports are the only ones allowed to
# point from a lower module to a higher one.
DELEGATES = {("baichuan13b.model", "from_pretrained"), ("baichuan13b.model", "save_pretrained"),
             ("baichuan13b.model", "quantize"), ("baichuan13b.model", "chat"),
             ("baichuan13b.model", "build_chat_input")}

# Lowest layers: what each may import from the package (nothing else, not even lazily).
FOUNDATIONS = {
    "baichuan13b.errors": set(),
    "baichuan13b.files": set(),
    "baichuan13b.cache": set(),
    "baichuan13b.config": {"baichuan13b.files", "baichuan13b.hub"},
    "baichuan13b.weights": {"baichuan13b.errors"},
    "baichuan13b.hub": {"baichuan13b.errors", "baichuan13b.weights"},
    "baichuan13b.devices": {"baichuan13b.config", "baichuan13b.errors"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for file in ROOT.rglob("*.py"):
        parts = list(file.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


def _imports(name: str, file: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(imported module, enclosing function or None)`` for every package import of one module."""
    is_package = file.name == "__init__.py"
    found: list[tuple[str, str | None]] = []

    def target(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                base = target(child)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        found.append((sub, function))
                    elif base in modules:
                        found.append((base, function))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names if alias.name in modules)
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            visit(child, inner)

    visit(ast.parse(file.read_text(encoding="utf-8")), None)
    return [(m, f) for m, f in found if m != name]


def _graph(skip_delegates: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, file in modules.items():
        graph[name] = {m for m, f in _imports(name, file, modules)
                       if not (skip_delegates and (name, f) in DELEGATES)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_no_import_cycle_in_the_package() -> None:
    cycle = _cycle(_graph(skip_delegates=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_delegates_are_the_only_upward_imports() -> None:
    # With the three delegates counted, the only cycles run through model.py's entry points.
    graph = _graph(skip_delegates=False)
    cycle = _cycle(graph)
    assert cycle is not None and "baichuan13b.model" in cycle  # the check above really removes edges
    modules = _modules()
    lazy = {(m, f) for m, f in _imports("baichuan13b.model", modules["baichuan13b.model"], modules) if f}
    upward = {(m, f) for m, f in lazy if m in {"baichuan13b.loading", "baichuan13b.saving"}
              or m.startswith("baichuan13b.quantization")}
    assert {f for _, f in upward} <= {f for _, f in DELEGATES}


def test_lowest_layers_import_nothing_above_them() -> None:
    modules = _modules()
    for name, allowed in FOUNDATIONS.items():
        imported = {m for m, _ in _imports(name, modules[name], modules)}
        assert imported <= allowed, f"{name} imports {sorted(imported - allowed)}"


def test_module_level_imports_have_no_cycle_at_all() -> None:
    modules = _modules()
    graph = {name: {m for m, f in _imports(name, file, modules) if f is None} for name, file in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import-time cycle: " + " -> ".join(cycle)


def test_checkpoint_keeps_its_public_names() -> None:
    from baichuan13b import checkpoint

    for name in checkpoint.__all__:
        assert hasattr(checkpoint, name), name
    # The split modules are what the facade re-exports (one object, not a copy).
    from baichuan13b import devices, files, hub, loading, saving, weights

    assert checkpoint.load_model is loading.load_model and checkpoint.save_model is saving.save_model
    assert checkpoint.resolve_model_path is hub.resolve_model_path
    assert checkpoint.atomic_write_text is files.atomic_write_text
    assert checkpoint.plan_devices is devices.plan_devices and checkpoint.iter_tensors is weights.iter_tensors
