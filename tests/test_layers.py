"""The package's layers: modules import downward only, and no two modules import each other in a circle.

An equivalent of drawing the import graph, read from the code (every `import faceseg...`, at the top of a
module or inside a function): a file's imports are its edges.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "faceseg"
# From the ground up; a module may import its own layer's modules and those below.
LAYERS = [
    ("faceseg", "faceseg.errors", "faceseg.logs"),
    ("faceseg.storage", "faceseg.labels", "faceseg.runtime", "faceseg.config"),
    ("faceseg.backend",),
    ("faceseg.data", "faceseg.metrics", "faceseg.model"),
    ("faceseg.train", "faceseg.predict"),
    ("faceseg.tune", "faceseg.serve", "faceseg.export", "faceseg.demo"),
    ("faceseg.api",),
    ("faceseg.cli", "faceseg.__main__"),
]
# `faceseg.FaceParser` is imported on first use, so that `import faceseg` stays free of TensorFlow.
UPWARD_ALLOWED = {("faceseg", "faceseg.predict.parser")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("faceseg"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                found |= {t if t in modules else node.module for t in targets}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("faceseg")}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def layer_of(module: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if module == prefix or module.startswith(prefix + ".")),
               key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_every_module_has_a_layer():
    for module in imports():
        layer_of(module)


def test_modules_import_downward_only():
    upward = {(source, target) for source, targets in imports().items() for target in targets
              if layer_of(target) > layer_of(source)}
    assert upward == UPWARD_ALLOWED


def test_no_import_circles():
    graph, state, circles = imports(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []
