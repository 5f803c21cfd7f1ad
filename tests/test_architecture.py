"""The layout the code promises in docs/ARCHITECTURE.md, checked on every module's imports:
folders follow the data flow, nothing imports upward, no cycles, no private names across modules,
the kernels stand alone, and gradio stays in the studio's UI wiring."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lower layers first: a module may import its own folder and the folders before it
LAYERS = ["atomic", "config", "kernels", "data", "model", "generate", "train", "estimate", "quality", "bench", "doctor", "cli",
          "studio"]
GRADIO_ALLOWED = {"studio.app", "studio.theme", "studio.login_gate"}  # plus studio.tabs.*


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "studio"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "studio":
        return "studio"
    if len(parts) == 1 or parts[1] in ("__main__", "cli"):
        return "cli"
    return parts[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import of a pipeline or studio module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [a.name for a in node.names]
            if node.module in MODULES and all(f"{node.module}.{n}" in MODULES for n in names):
                found += [(f"{node.module}.{n}", []) for n in names]  # `from pipeline.data import sources`
            else:
                found.append((node.module, names))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return [(m, n) for m, n in found if m.split(".")[0] in ("pipeline", "studio", "gradio")]


def test_no_module_imports_a_later_layer():
    upward = []
    for module, path in MODULES.items():
        for target, _ in _imports(path):
            if target.split(".")[0] == "gradio":
                continue
            mine, theirs = _layer(module), _layer(target)
            if LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_cycles():
    graph = {m: {t for t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    done, path, cycles = set(), [], []

    def visit(node):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_no_private_names_across_modules():
    private = [f"{module}: {target}.{name}" for module, path in MODULES.items() for target, names in _imports(path)
               for name in names if name.startswith("_") and not name.startswith("__") and target != module]
    assert not private, private


def test_the_kernels_stand_alone():
    outside = [f"{m} -> {t}" for m, p in MODULES.items() if m.startswith("pipeline.kernels")
               for t, _ in _imports(p) if not t.startswith(("pipeline.kernels", "gradio"))]
    assert not outside, outside


def test_gradio_only_in_the_studio_ui():
    users = {m for m, p in MODULES.items() if any(t.split(".")[0] == "gradio" for t, _ in _imports(p))}
    assert users and all(m in GRADIO_ALLOWED or m.startswith("studio.tabs.") for m in users), sorted(users)
